"""The training strategies: the one table every list of strategies, stages and labels comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LabelKind = Literal["full", "key"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    labels: LabelKind  # `full`: the whole response; `key`: tokens after </Thinking> (Eq. 4)


@dataclass(frozen=True)
class StrategySpec:
    tagged: bool
    stages: tuple[StageSpec, ...]


# In the order of the paper's tables: the baseline first, the method last.
STRATEGIES: dict[str, StrategySpec] = {
    "sft": StrategySpec(tagged=False, stages=(StageSpec("stage1", "full"),)),
    "sft_tag": StrategySpec(tagged=True, stages=(StageSpec("stage1", "full"),)),
    "key_tag": StrategySpec(tagged=True, stages=(StageSpec("stage1", "key"),)),
    "sftkey_tag": StrategySpec(
        tagged=True, stages=(StageSpec("stage1", "full"), StageSpec("stage2", "key"))
    ),
}
BASELINE = "sft"  # what every other strategy is compared against
METHOD = "sftkey_tag"  # the paper's two-stage method
# The strategy that is the method's stage 1 alone: the method against it is stage 2's effect.
_METHOD = STRATEGIES[METHOD]
METHOD_STAGE1 = next(name for name, spec in STRATEGIES.items()
                     if (spec.tagged, spec.stages) == (_METHOD.tagged, _METHOD.stages[:1]))
# Every stage name any strategy uses, in order of first use.
STAGE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(
    stage.name for spec in STRATEGIES.values() for stage in spec.stages))
