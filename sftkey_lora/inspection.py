"""`sftkey-lora inspect`: show exactly which tokens each stage trains on.

The JSON form is a contract: a list with, per example, `prompt`, `thinking`, `answer`
and `loss_text: {stage: decoded text of exactly the tokens with loss}`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from .data import DataReport, load_examples
from .prep.masks import IGNORE, Encoded
from .prep.prepare import encode_examples
from .prep.render import Segment
from .recipe import Recipe
from .strategies import STRATEGIES, StageSpec, StrategySpec
from .train.loading import run_tokenizer
from .train.plan import plan_tokenizer

COLOURS = {  # ANSI SGR codes per segment
    Segment.PROMPT: "2", Segment.THINKING: "34", Segment.ANSWER: "1;32",
    Segment.TAG: "33", Segment.EOS: "35",
}


@dataclass
class Inspection:
    recipe: Recipe
    strategy: StrategySpec
    tokenizer: Any
    encoded: list[Encoded]
    report: DataReport

    def median_thinking_answer_ratio(self) -> float:
        """Median over examples of thinking tokens / answer tokens."""
        ratios = [e.count(Segment.THINKING) / e.count(Segment.ANSWER)
                  for e in self.encoded if e.count(Segment.ANSWER)]
        return statistics.median(ratios) if ratios else float("nan")

    def stage_loss_ids(self, encoded: Encoded) -> list[tuple[StageSpec, list[int]]]:
        """Per stage, exactly the token ids that carry loss."""
        return [(stage, [tok for tok in encoded.labels(stage.labels) if tok != IGNORE])
                for stage in self.strategy.stages]

    def loss_text(self, encoded: Encoded) -> dict[str, str]:
        return {stage.name: self.decode(ids) for stage, ids in self.stage_loss_ids(encoded)}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

def inspect_recipe(recipe: Recipe) -> Inspection:
    strategy = STRATEGIES[recipe.strategy]
    tokenizer, _ = run_tokenizer(plan_tokenizer(recipe))
    examples, report = load_examples(recipe.data, tags=recipe.format.tag_strings)
    encoded = encode_examples(examples, tokenizer, recipe.format, strategy.tagged, report,
                              cache=recipe.data.cache)
    return Inspection(recipe, strategy, tokenizer, encoded, report)


def as_json(inspection: Inspection, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": e.example.id,
            "prompt": e.example.prompt,
            "thinking": e.example.thinking,
            "answer": e.example.answer,
            "tokens": len(e.input_ids),
            "loss_text": inspection.loss_text(e),
        }
        for e in inspection.encoded[:n]
    ]


def as_text(inspection: Inspection, n: int, colour: bool) -> str:
    lines = [_legend(inspection, colour)]
    for index, encoded in enumerate(inspection.encoded[:n]):
        counts = ", ".join(f"{s.name.lower()} {encoded.count(s)}" for s in Segment)
        lines.append(f"\n── example {index + 1}/{min(n, len(inspection.encoded))} · "
                     f"{encoded.example.id} · {len(encoded.input_ids)} tokens ({counts})")
        lines.append(_token_stream(inspection.tokenizer, encoded, inspection.strategy.stages, colour))
        for stage, ids in inspection.stage_loss_ids(encoded):
            text = inspection.decode(ids)
            lines.append(f"  {stage.name} ({stage.labels}, {len(ids)} loss tokens): {text!r}")
    lines.append("")
    lines.append(inspection.report.format())
    lines.append(f"median thinking/answer token ratio: {inspection.median_thinking_answer_ratio():.1f}")
    return "\n".join(lines)


def _legend(inspection: Inspection, colour: bool) -> str:
    names = " ".join(_paint(s.name.lower(), s, colour) for s in Segment)
    mark = "underlined" if colour else "marked ^"
    trains_on = {"full": "every token after the prompt", "key": f"the key tokens ({mark})"}
    stages = "; ".join(f"{s.name} trains on {trains_on[s.labels]}" for s in inspection.strategy.stages)
    return (f"strategy {inspection.recipe.strategy}: {stages}\n"
            f"segments: {names}; tokens are separated by ·")


def _token_stream(tokenizer: Any, encoded: Encoded, stages: tuple[StageSpec, ...], colour: bool) -> str:
    mark_key = any(stage.labels == "key" for stage in stages)
    parts, previous = [], None
    for token, code, key in zip(encoded.input_ids.tolist(), encoded.segments, encoded.in_key, strict=True):
        segment = Segment(code)
        text = tokenizer.decode([token], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False).replace("\n", "⏎\n")
        if not colour and segment != previous:
            parts.append(f"«{segment.name.lower()}»")
        previous = segment
        if key and mark_key:
            text = f"\x1b[4m{text}\x1b[24m" if colour else f"^{text}"
        parts.append(_paint(text, segment, colour))
    return "·".join(parts)


def _paint(text: str, segment: Segment, colour: bool) -> str:
    return f"\x1b[{COLOURS[segment]}m{text}\x1b[0m" if colour else text
