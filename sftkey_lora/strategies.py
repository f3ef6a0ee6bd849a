"""What each training strategy means: tagged or not, and which labels each stage uses."""

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


STRATEGIES: dict[str, StrategySpec] = {
    "sft": StrategySpec(tagged=False, stages=(StageSpec("stage1", "full"),)),
    "sft_tag": StrategySpec(tagged=True, stages=(StageSpec("stage1", "full"),)),
    "key_tag": StrategySpec(tagged=True, stages=(StageSpec("stage1", "key"),)),
    "sftkey_tag": StrategySpec(
        tagged=True, stages=(StageSpec("stage1", "full"), StageSpec("stage2", "key"))
    ),
}
