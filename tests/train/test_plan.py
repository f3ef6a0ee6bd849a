"""The plan decides every step of a run: strategy × mode × quantization × backend × tags ->
the steps, their labels, what each loads, the merge, the tag rows and the final model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.recipe import Recipe, load_recipe, validate_recipe
from sftkey_lora.rundir.layout import RunLayout
from sftkey_lora.train.plan import MergeStep, StageStep, plan_run
from tests.support import QUICKSTART

RUN = Path("/runs/r")
TINY = "builtin:tiny"


def plan_of(**sections: dict) -> object:
    return plan_run(Recipe.model_validate(sections), RunLayout(RUN))


def described(plan) -> list[tuple]:
    """Each step as (name, labels or merge source, what it loads, adapter or full, tag rows)."""
    rows = []
    for step in plan.steps:
        if isinstance(step, MergeStep):
            rows.append((step.name, str(step.adapter), step.model.name_or_path, str(step.output)))
        else:
            rows.append((step.name, step.labels, step.base.name_or_path,
                         "full" if step.full else "lora", step.tag_rows))
    return rows


MERGE = ("merge", f"{RUN}/stage1", TINY, f"{RUN}/stage1-merged")
STAGE2 = ("stage2", "key", f"{RUN}/stage1-merged", "lora", False)  # a fresh adapter on the merge
# (strategy, mode, quantization, backend, tags) -> steps, tags added to the tokenizer, final (base, adapter)
MATRIX = [
    (("sftkey_tag", "lora", "nf4", "transformers", "text"),
     [("stage1", "full", TINY, "lora", False), MERGE, STAGE2],
     False, (f"{RUN}/stage1-merged", f"{RUN}/stage2")),
    (("sftkey_tag", "lora", "nf4", "transformers", "added_tokens"),
     [("stage1", "full", TINY, "lora", True), MERGE, STAGE2],
     True, (f"{RUN}/stage1-merged", f"{RUN}/stage2")),
    (("sftkey_tag", "lora", "none", "transformers", "text"),
     [("stage1", "full", TINY, "lora", False), MERGE, STAGE2],
     False, (f"{RUN}/stage1-merged", f"{RUN}/stage2")),
    (("sftkey_tag", "full", "none", "transformers", "added_tokens"),  # no adapter: no merge, no tag rows
     [("stage1", "full", TINY, "full", False), ("stage2", "key", f"{RUN}/stage1", "full", False)],
     True, (f"{RUN}/stage2", None)),
    (("sftkey_tag", "lora", "nf4", "unsloth", "text"),
     [("stage1", "full", TINY, "lora", False), MERGE, STAGE2],
     False, (f"{RUN}/stage1-merged", f"{RUN}/stage2")),
    (("sft", "lora", "nf4", "transformers", "added_tokens"),  # untagged: no tag tokens, no dead rows
     [("stage1", "full", TINY, "lora", False)], False, (TINY, f"{RUN}/stage1")),
    (("sft_tag", "lora", "nf4", "transformers", "added_tokens"),
     [("stage1", "full", TINY, "lora", True)], True, (TINY, f"{RUN}/stage1")),
    (("key_tag", "lora", "none", "transformers", "text"),
     [("stage1", "key", TINY, "lora", False)], False, (TINY, f"{RUN}/stage1")),
    (("key_tag", "full", "none", "transformers", "text"),
     [("stage1", "key", TINY, "full", False)], False, (f"{RUN}/stage1", None)),
]


@pytest.mark.parametrize(("setting", "steps", "adds_tags", "final"), MATRIX,
                         ids=["-".join(case[0]) for case in MATRIX])
def test_the_plan_of_every_setting(setting, steps, adds_tags, final) -> None:
    strategy, mode, quantization, backend, tags = setting
    plan = plan_of(strategy=strategy, training={"mode": mode},
                   model={"quantization": quantization, "backend": backend}, format={"tags": tags})
    assert described(plan) == steps
    assert plan.tokenizer.add_tags is adds_tags
    assert (plan.final.base.name_or_path, str(plan.final.adapter) if plan.final.adapter else None) == final
    assert plan.final.stage == plan.stages[-1].name
    assert plan.tagged is (strategy != "sft")
    for stage in plan.stages:
        assert stage.base.quantization == quantization and stage.base.backend == backend
        assert stage.output == RunLayout(RUN).stage_dir(stage.name)
        # unsloth sets up its own gradient checkpointing with its adapter
        assert stage.training_args["gradient_checkpointing"] is (backend != "unsloth")


def test_stage_settings_lie_over_the_top_level_ones() -> None:
    plan = plan_of(lora={"r": 16}, training={"learning_rate": 1e-3, "batch_size": 4},
                   stages={"stage2": {"lora": {"r": 8}, "training": {"learning_rate": 1e-4, "seed": 3}}},
                   merge={"base": "original"})
    stage1, merge, stage2 = plan.steps
    assert (stage1.config.lora.r, stage2.config.lora.r) == (16, 8)
    assert (stage1.training_args["learning_rate"], stage2.training_args["learning_rate"]) == (1e-3, 1e-4)
    assert stage2.training_args["per_device_train_batch_size"] == 4  # inherited
    assert isinstance(merge, MergeStep) and merge.choice == "original"
    assert merge.probe_batch_size == 4 and merge.precision == stage2.precision
    assert plan.holdout_seed == 0  # drawn with the first stage's seed, whatever the later ones say


def test_without_requantizing_stage2_and_the_evaluation_load_the_merge_in_16_bits() -> None:
    plan = plan_of(merge={"requantize": False})
    stage1, merge, stage2 = plan.steps
    assert stage1.base.quantization == "nf4" and merge.model.quantization == "nf4"
    assert merge.next_base == stage2.base and stage2.base.quantization == "none"
    assert plan.final.base.quantization == "none"
    assert plan.as_json(Recipe())["merge"]["stage2_quantization"] == "none"
    assert plan_of().steps[2].base.quantization == "nf4"  # the default quantizes again


def test_the_evaluation_follows_the_recipe() -> None:
    assert plan_of().evaluation.tasks == ["sftkey_synthetic"]
    assert plan_of(eval={"tasks": []}).evaluation is None
    step = plan_of(eval={"limit": 5, "alpha": 0.5}).evaluation
    assert (step.limit, step.settings.alpha) == (5, 0.5)


def test_a_mode_set_per_stage_is_refused_naming_the_field(cli) -> None:
    """Stage modes that disagree with the run's would plan a merge of an adapter that never
    exists: both stages full on a LoRA run."""
    flags = ["--set", "model.quantization=none", "--set", "stages.stage1.training.mode=full",
             "--set", "stages.stage2.training.mode=full"]
    code, out, err = cli("run", str(QUICKSTART), "--dry-run", "--json", *flags)
    assert code == 2 and out == ""
    assert "stages.stage1.training.mode" in err and "set training.mode instead" in err
    with pytest.raises(UserError, match="stages.stage2.training.mode"):
        validate_recipe({"model": {"quantization": "none"}, "training": {"mode": "full"},
                         "stages": {"stage2": {"training": {"mode": "lora"}}}})


def test_the_full_mode_dry_run_is_consistent(cli) -> None:
    code, out, err = cli("run", str(QUICKSTART), "--dry-run", "--json", "--output", "/nonexistent/x",
                         "--set", "model.quantization=none", "--set", "training.mode=full")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["steps"] == ["stage1", "stage2", "eval"] and plan["merge"] is None
    assert [stage["base"] for stage in plan["stages"]] == [TINY, "/nonexistent/x/stage1"]
    assert all(stage["lora"] is None for stage in plan["stages"])


def test_dry_run_shows_every_step_and_training_arguments(cli) -> None:
    from transformers import TrainingArguments

    code, out, _ = cli("run", str(QUICKSTART), "--dry-run", "--json", "--output", "/nonexistent/x")
    assert code == 0
    plan = json.loads(out)
    assert plan["steps"] == ["stage1", "merge", "stage2", "eval"]
    assert [(s["name"], s["labels"]) for s in plan["stages"]] == [("stage1", "full"), ("stage2", "key")]
    assert plan["stages"][1]["base"] == "/nonexistent/x/stage1-merged"
    assert plan["merge"] == {"name": "merge", "adapter": "/nonexistent/x/stage1",
                             "output": "/nonexistent/x/stage1-merged", "base": "auto",
                             "stage2_quantization": "nf4"}
    assert plan["stages"][1]["lora"]["r"] == 8  # the quickstart's own stage-2 adapter
    assert plan["tokenizer"]["add_tags"] is True and plan["stages"][0]["tag_rows"] is True
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for stage in plan["stages"]:
        assert set(stage["training_args"]) <= fields
        TrainingArguments(**stage["training_args"])
    assert not Path("/nonexistent/x").exists()
    code, text, _ = cli("run", str(QUICKSTART), "--dry-run", "--output", "/nonexistent/x")
    assert "steps: stage1 -> merge -> stage2 -> eval" in text
    assert ("merge: /nonexistent/x/stage1 into 16-bit weights (auto base) -> /nonexistent/x/stage1-merged, "
            "loaded by stage 2 in nf4"
            in text)


def test_every_shipped_recipe_plans(tmp_path) -> None:
    """Whatever a shipped recipe chooses, its plan is consistent: a merge exactly where a later
    stage continues from adapters, and a later stage always loads what the one before made."""
    for path in sorted((QUICKSTART.parent).rglob("*.yaml")):
        if "accelerate" in path.parts or path.name.startswith("_"):
            continue
        plan = plan_run(load_recipe(path), RunLayout(tmp_path))
        merges = [step for step in plan.steps if isinstance(step, MergeStep)]
        stages = [step for step in plan.steps if isinstance(step, StageStep)]
        assert len(merges) == (0 if stages[0].full else len(stages) - 1), path
        for before, after in zip(stages, stages[1:], strict=False):
            made = before.output if before.full else RunLayout(tmp_path).merged_dir
            assert after.base.name_or_path == str(made), path
