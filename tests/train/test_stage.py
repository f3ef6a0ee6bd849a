"""One stage, as its plan step says: the adapter it saves, the tag rows it trains, the
outcome it reports, and a resume from its last whole checkpoint."""

from __future__ import annotations

import dataclasses

import pytest

from sftkey_lora.pipeline import split_holdout
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.recipe import load_recipe
from sftkey_lora.rundir.layout import RunLayout
from sftkey_lora.train.loading import run_tokenizer
from sftkey_lora.train.plan import plan_run
from sftkey_lora.train.stage import StageInputs, train_stage
from tests.support import QUICKSTART, SMALL

ONE_STAGE = SMALL + ["strategy=sft_tag", "data.synthetic.n_train=24", "stages.stage1.training.max_steps=2"]


def prepared(tmp_path, *overrides: str):
    """The first stage step of a small sft_tag run, and what it trains on."""
    from sftkey_lora.data import load_examples

    recipe = load_recipe(QUICKSTART, [*ONE_STAGE, *overrides])
    plan = plan_run(recipe, RunLayout(tmp_path))
    tokenizer, tag_ids = run_tokenizer(plan.tokenizer)
    examples, report = load_examples(recipe.data)
    rows = encode_examples(examples, tokenizer, recipe.format, plan.tagged, report)
    train, holdout = split_holdout(rows, recipe.data.holdout, plan.holdout_seed)
    return plan, StageInputs(tokenizer, train, holdout, tag_ids)


@pytest.mark.parametrize("tag_rows", [True, False])
def test_the_step_says_whether_tag_rows_train(tmp_path, tag_rows: bool) -> None:
    from safetensors.torch import load_file

    plan, inputs = prepared(tmp_path)
    assert plan.stages[0].tag_rows  # the quickstart adds the tags as tokens
    step = dataclasses.replace(plan.stages[0], tag_rows=tag_rows)
    outcome = train_stage(step, inputs, plan.layout)
    saved = load_file(step.output / "adapter_model.safetensors")
    assert any("trainable_tokens" in name for name in saved) is tag_rows
    if tag_rows:
        assert_tag_rows_alone(step.output)
    assert (step.output / "tokenizer.json").is_file()
    assert (outcome.labels, outcome.steps, outcome.resumed_from) == ("full", 2, None)
    assert outcome.logits == "labelled positions" and outcome.tokens > 0
    assert [entry["step"] for entry in outcome.log_history if "heldout_key_loss" in entry] == [0, 2]


def assert_tag_rows_alone(adapter_dir) -> None:
    """The adapter holds the tag rows it trains, never the whole resized embedding or head."""
    from safetensors.torch import load_file

    names = list(load_file(adapter_dir / "adapter_model.safetensors"))
    assert any("trainable_tokens" in name for name in names)
    whole = [name for name in names if ("embed_tokens" in name or "lm_head" in name)
             and "trainable_tokens" not in name]
    assert not whole


def test_a_stage_resumes_from_its_last_whole_checkpoint(tmp_path) -> None:
    plan, inputs = prepared(tmp_path, "stages.stage1.training.max_steps=4")
    first = train_stage(plan.stages[0], inputs, plan.layout)
    assert [path.name for path in plan.layout.checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert_tag_rows_alone(plan.layout.checkpoints()[-1])
    longer, _ = prepared(tmp_path, "stages.stage1.training.max_steps=6")
    again = train_stage(longer.stages[0], inputs, longer.layout)
    assert again.resumed_from == "checkpoint-4" and again.steps == 6
    logged = [entry for entry in first.log_history if "loss" in entry]  # steps 2 and 4, probes included
    assert [entry["step"] for entry in logged] == [2, 4]
    assert again.log_history[: len(logged) + 1] == first.log_history[: len(logged) + 1]  # kept as it was
    # Its training loss is the mean over all six steps, not only the two trained after the resume.
    losses = [entry["loss"] for entry in again.log_history if "loss" in entry]  # steps 2, 4 and 6
    assert len(losses) == 3 and again.train_loss == pytest.approx(sum(losses) / 3, abs=1e-5)


def test_a_stage_resumed_from_its_final_checkpoint_trains_nothing_more(tmp_path) -> None:
    """A kill between a stage's last checkpoint and its output: the rerun resumes from that
    checkpoint and must end as the stage did. Mid-epoch (24 rows, 3 steps an epoch), the
    Trainer alone would train a fifth step."""
    from safetensors.torch import load_file

    plan, inputs = prepared(tmp_path, "data.synthetic.n_train=32", "stages.stage1.training.max_steps=4")
    first = train_stage(plan.stages[0], inputs, plan.layout)
    weights = load_file(plan.stages[0].output / "adapter_model.safetensors")
    again = train_stage(plan.stages[0], inputs, plan.layout)
    assert again.resumed_from == "checkpoint-4" and again.steps == 4 and again.tokens == 0
    logged = [[entry for entry in outcome.log_history if "train_loss" not in entry]  # not the summary
              for outcome in (first, again)]
    assert [entry["step"] for entry in logged[1] if "loss" in entry] == [2, 4]
    assert logged[0] == logged[1] and again.train_loss == first.train_loss
    assert again.heldout_key_loss == first.heldout_key_loss
    resaved = load_file(plan.stages[0].output / "adapter_model.safetensors")
    assert resaved.keys() == weights.keys() and all(resaved[name].equal(weights[name]) for name in weights)


@pytest.mark.slow  # bf16 arithmetic on a CPU: two stages of about 5 s each
@pytest.mark.parametrize("setting", [["training.mode=full", "model.quantization=none"],
                                     ["model.quantization=nf4"]], ids=["full", "4-bit with tag rows"])
def test_mixed_precision_projects_hidden_states_handed_back_in_fp32(tmp_path, setting: list[str]) -> None:
    """Under bf16 mixed precision (a GPU's default) accelerate hands the model's outputs back
    in fp32 while a 16-bit head stays 16-bit: the loss and the probe still project them."""
    plan, inputs = prepared(tmp_path, "training.precision=bf16", *setting)
    outcome = train_stage(plan.stages[0], inputs, plan.layout)
    assert outcome.steps == 2 and outcome.logits == "labelled positions"
    assert outcome.heldout_key_loss.after < outcome.heldout_key_loss.before


def test_tensorboard_gets_each_logged_step_with_the_held_out_losses(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plan, inputs = prepared(tmp_path, "stages.stage1.training.max_steps=4",
                            "training.report_to=[tensorboard]")
    step = plan.stages[0]
    assert step.tensorboard == tmp_path / "tensorboard" / "stage1"
    assert "tensorboard" not in step.training_args["report_to"]  # the stage's own callback writes it
    outcome = train_stage(step, inputs, plan.layout)
    events = EventAccumulator(str(step.tensorboard)).Reload()
    logged = [entry for entry in outcome.log_history if "loss" in entry]
    for tag, key in (("train/loss", "loss"), ("train/heldout_key_loss", "heldout_key_loss"),
                     ("train/heldout_thinking_loss", "heldout_thinking_loss")):
        scalars = events.Scalars(tag)
        assert [event.step for event in scalars] == [entry["step"] for entry in logged] == [2, 4]
        assert [event.value for event in scalars] == pytest.approx([entry[key] for entry in logged], rel=1e-6)


@pytest.mark.parametrize(("name", "installed", "says"), [
    ("nosuch", ["tensorboard"], "training.report_to: unknown 'nosuch' (known: azure_ml"),
    ("tensorboard", [], "training.report_to: tensorboard is not installed; "
                        "pip install 'sftkey-lora[tensorboard]'"),
])
def test_a_reporter_that_cannot_report_stops_the_run_before_it_loads(cli, tmp_path, monkeypatch, name,
                                                                     installed, says) -> None:
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: installed)
    code, _, err = cli("run", str(QUICKSTART), "--output", str(tmp_path / "run"),
                       f"--set=training.report_to=[{name}]")
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "run" / "stage1").exists()


def test_a_finished_stage_leaves_no_part_of_its_model_alive(tmp_path) -> None:
    """With an 8-bit bitsandbytes optimizer the Trainer registers the embedding in bitsandbytes'
    process-wide manager; once the stage returns, that embedding must be collectable."""
    import gc
    import weakref

    import torch

    import sftkey_lora.train.stage as stage_module

    plan, inputs = prepared(tmp_path, "training.optimizer=adamw_bnb_8bit")
    made = []
    real = stage_module._stage_model

    def kept_an_eye_on(*args, **kwargs):
        model = real(*args, **kwargs)
        made.extend(weakref.ref(module) for module in model.modules()
                    if isinstance(module, torch.nn.Embedding))
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_module, "_stage_model", kept_an_eye_on)
        train_stage(plan.stages[0], inputs, plan.layout)
    gc.collect()
    assert made and all(ref() is None for ref in made)
