"""`sftkey-lora run` end to end on the built-in tiny model: stages, merge, artifacts, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sftkey_lora.errors import UserError
from sftkey_lora.pipeline import run_recipe
from sftkey_lora.recipe import load_recipe
from sftkey_lora.runtime.hardware import resolve_precision
from sftkey_lora.train.loading import load_model, run_tokenizer
from sftkey_lora.train.merge import kl_and_losses
from sftkey_lora.train.plan import plan_tokenizer
from tests.support import (
    QUICKSTART,
    QUICKSTART_FULL,
    ROOT,
    SMALL,
    SMALL_EVAL,
    holdout_batches,
)

slow = pytest.mark.slow


@slow
def test_run_records_every_step(small_run) -> None:
    recipe, record = small_run
    steps = record.data["steps"]
    assert list(steps) == ["stage1", "merge", "stage2", "eval"]
    assert all(step["status"] == "complete" for step in steps.values())
    assert set(steps["merge"]["kl"]) == {"original", "nf4"}
    assert steps["merge"]["base"] == min(steps["merge"]["kl"], key=steps["merge"]["kl"].get)
    # The merge's held-out losses of the chosen base are where stage 2 started (same examples).
    start = steps["merge"]["heldout"][steps["merge"]["base"]]
    assert start["key"] == pytest.approx(steps["stage2"]["heldout_key_loss"]["before"], abs=1e-4)
    assert start["thinking"] == pytest.approx(steps["stage2"]["heldout_thinking_loss"]["before"], abs=1e-4)
    assert steps["stage1"]["steps"] == 6 and steps["stage2"]["steps"] == 4
    assert steps["stage2"]["labels"] == "key"
    for name in ("stage1", "stage2"):
        key = steps[name]["heldout_key_loss"]
        assert key["after"] < key["before"], f"{name} did not lower the held-out key loss"
        assert steps[name]["tokens_per_second"] > 0 and steps[name]["peak_memory_mb"] > 0
        assert steps[name]["logits"] == "labelled positions"  # the loss projected them itself
    assert record.data["data"]["holdout"] == 8 and record.data["data"]["train"] == 48
    assert record.data["recipe"] == recipe.model_dump(mode="json")
    assert record.data["versions"]["peft"]


@slow
def test_run_directory_layout(small_run) -> None:
    run_dir = small_run[1].run_dir
    for path in ("run.json", "stage1/adapter_config.json", "stage1/adapter_model.safetensors",
                 "stage1-merged/config.json", "stage1-merged/model.safetensors",
                 "stage1-merged/tokenizer.json", "stage2/adapter_model.safetensors",
                 "plots/stage1_loss.png", "plots/stage2_loss.png"):
        assert (run_dir / path).is_file(), path
    assert not list(run_dir.glob("checkpoint-*")), "checkpoints outlive their stage"
    assert not list(run_dir.glob(".*.tmp*")), "temporary files left behind"


@slow
def test_stage2_loads_over_the_merged_model_and_generates(small_run) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = small_run[1].run_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run_dir / "stage1-merged"),
                                      run_dir / "stage2")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "stage1-merged")
    prompt = tokenizer("User: Ann has 3 coins.\nAssistant:\n", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    weights = load_file(run_dir / "stage2" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)


@slow
def test_merged_model_matches_the_stage1_model_within_the_recorded_kl(small_run) -> None:
    from peft import PeftModel

    recipe, record = small_run
    run_dir = record.run_dir
    tokenizer, _ = run_tokenizer(plan_tokenizer(recipe))
    probe = holdout_batches(recipe, segments=True)
    precision = resolve_precision(recipe.training.precision)  # as the merge loaded them
    stage1 = load_model(recipe.model, precision, vocab_size=len(tokenizer))
    stage1 = PeftModel.from_pretrained(stage1, str(run_dir / "stage1")).eval()
    merged_cfg = recipe.model.model_copy(update={"name_or_path": str(run_dir / "stage1-merged")})
    merged = load_model(merged_cfg, precision, vocab_size=len(tokenizer)).eval()
    merge = record.data["steps"]["merge"]
    kl = kl_and_losses(stage1, merged, probe)[0]
    assert kl == pytest.approx(merge["kl"][merge["base"]], rel=1e-3)
    assert kl < 0.05
    base = load_model(recipe.model, precision, vocab_size=len(tokenizer)).eval()
    assert kl_and_losses(stage1, base, probe)[0] > 10 * kl  # the adapter did change the model


@slow
def test_rerun_skips_completed_stages(small_run) -> None:
    recipe, record = small_run
    before = (record.run_dir / "run.json").read_text()
    logged = (record.run_dir / "run.log").read_text()
    run_recipe(recipe, record.run_dir)
    assert "every stage is complete" in (record.run_dir / "run.log").read_text().removeprefix(logged)
    assert (record.run_dir / "run.json").read_text() == before


@slow
def test_run_ends_with_evaluation(small_run) -> None:
    record = small_run[1]
    run_dir = record.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    task = metrics["sftkey_synthetic"]
    assert task["n"] == 4 and {"acc", "fmt", "fmt_tags", "score"} <= set(task)
    assert task["score"] == pytest.approx(0.7 * task["acc"] + 0.3 * task["fmt"])
    samples = (run_dir / "samples" / "sftkey_synthetic.jsonl").read_text().splitlines()
    assert len(samples) == 4
    first = json.loads(samples[0])
    assert first["doc"]["prompt"].endswith("Assistant:\n") and "output" in first and "extracted" in first
    assert record.data["steps"]["eval"]["status"] == "complete"
    assert record.data["steps"]["eval"]["metrics"] == metrics
    report = (run_dir / "report.md").read_text()
    assert "| quickstart |" in report and "stage2" in report and "plots/stage1_loss.png" in report
    assert (run_dir / "plots" / "eval_metrics.png").stat().st_size > 1000


@slow
def test_stock_lm_eval_cli_reads_a_run(small_run, tmp_path) -> None:
    run_dir = small_run[1].run_dir
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={run_dir}/stage1-merged,peft={run_dir}/stage2,dtype=float32",
         "--tasks", "sftkey_synthetic", "--include_path", str(ROOT / "eval_tasks"), "--device", "cpu",
         "--limit", "2", "--gen_kwargs", "max_gen_toks=48", "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    task = results["results"]["sftkey_synthetic"]
    assert {"acc,none", "fmt,none", "score,none"} <= set(task)
    # The run's recipe (no system prompt in SMALL) rendered the prompts, as in training.
    assert results["configs"]["sftkey_synthetic"]["metadata"]["pretrained"].endswith("stage1-merged")


@slow
def test_eval_command_reevaluates_a_run(small_run, cli, tmp_path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(small_run[1].run_dir, copy)
    code, _, err = cli("eval", str(copy), "--tasks", "sftkey_nope")
    assert code == 2 and "unknown task sftkey_nope" in err
    code, _, err = cli("eval", str(copy), "--set", "training.learning_rate=1")
    assert code == 2 and "differs in training.learning_rate" in err
    code, _, err = cli("eval", str(copy), "--limit", "2", "--set", "eval.alpha=0.5")
    assert code == 0, err
    metrics = json.loads((copy / "metrics.json").read_text())["sftkey_synthetic"]
    assert metrics["n"] == 2 and metrics["alpha"] == 0.5
    assert json.loads((copy / "run.json").read_text())["recipe"]["eval"]["alpha"] == 0.5


@slow
def test_a_full_disk_while_evaluating_keeps_the_earlier_evaluation(small_run, cli, tmp_path,
                                                                   monkeypatch) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(small_run[1].run_dir, copy)
    before = {path: path.read_bytes() for path in [copy / "metrics.json", *(copy / "samples").iterdir()]}

    def full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sftkey_lora.evaluation.harness.write_manifest", full)
    code, _, err = cli("eval", str(copy), "--limit", "2")
    assert code == 2 and f"eval: the disk holding {copy} is full" in err and "Traceback" not in err
    assert {path: path.read_bytes() for path in before} == before
    assert not list(copy.glob(".*.tmp"))


def test_eval_refuses_an_unfinished_run_and_a_missing_model(cli, tmp_path) -> None:
    from sftkey_lora.rundir.layout import RunLayout
    from sftkey_lora.rundir.record import RunRecord

    RunRecord.open(RunLayout(tmp_path / "run"), load_recipe(QUICKSTART), fresh=False)
    code, _, err = cli("eval", str(tmp_path / "run"))
    assert code == 2 and "stage1, stage2 not trained yet" in err
    code, _, err = cli("eval", str(tmp_path / "no-model"), "--output", str(tmp_path / "out"))
    assert code == 2 and "no-model does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "evaluation.json").exists()  # a model that never loaded claims nothing


@slow
def test_changed_eval_settings_reevaluate_without_training(small_run, tmp_path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(small_run[1].run_dir, copy)
    logged = (copy / "run.log").read_text()
    recipe = load_recipe(QUICKSTART, SMALL + SMALL_EVAL + ["eval.limit=3"])
    record = run_recipe(recipe, copy)
    assert "every stage is complete" in (copy / "run.log").read_text().removeprefix(logged)
    assert record.data["steps"]["eval"]["metrics"]["sftkey_synthetic"]["n"] == 3
    steps = record.data["steps"]
    assert (steps["stage1"]["steps"], steps["stage2"]["steps"]) == (6, 4)  # not trained again


@slow
def test_another_recipe_in_the_same_directory_is_refused(small_run) -> None:
    recipe, record = small_run
    other = recipe.model_copy(update={"strategy": "sft_tag"})
    with pytest.raises(UserError, match="differs in strategy"):
        run_recipe(other, record.run_dir)


def test_a_non_run_directory_is_refused(cli, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli("run", str(QUICKSTART), "--output", str(tmp_path))
    assert code == 2 and "not empty" in err and (tmp_path / "notes.txt").exists()


@slow
def test_added_tag_tokens_are_trained_and_merged(small_run) -> None:
    """The quickstart adds the tags as tokens: their embedding rows train in stage 1 and the
    merged model carries them."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkey_lora.tags import PAPER_TAGS

    recipe, record = small_run
    assert recipe.format.tags == "added_tokens"
    run_dir = record.run_dir
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "stage1-merged")
    ids = tokenizer.convert_tokens_to_ids(list(PAPER_TAGS.all))
    assert tokenizer("<Thinking>x</Thinking>", add_special_tokens=False)["input_ids"][0] == ids[0]
    saved = load_file(run_dir / "stage1" / "adapter_model.safetensors")
    rows = [tensor for name, tensor in saved.items() if "trainable_tokens" in name]
    assert rows and rows[0].shape[0] == len(PAPER_TAGS.all)
    assert not [name for name, t in saved.items() if t.shape[0] == len(tokenizer)], "whole embedding saved"
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "stage1-merged")
    assert torch.allclose(merged.get_input_embeddings().weight[ids], rows[0].to(torch.float32))


@slow
@pytest.mark.parametrize(("strategy", "extra", "labels"), [
    ("sft", [], "full"),
    ("key_tag", ["model.quantization=none"], "key"),  # and a 16-bit base (plain LoRA)
    ("sft_tag", ["training.packing=true"], "full"),  # padding-free batches through the Trainer
])
def test_one_stage_strategies(tmp_path, strategy: str, extra: list[str], labels: str) -> None:
    overrides = SMALL + [f"strategy={strategy}", "stages.stage1.training.max_steps=2", *extra]
    record = run_recipe(load_recipe(QUICKSTART, overrides), tmp_path / "out")
    assert list(record.data["steps"]) == ["stage1"]
    assert record.data["steps"]["stage1"]["labels"] == labels
    assert (tmp_path / "out" / "stage1" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "stage1-merged").exists()
    adapter = json.loads((tmp_path / "out" / "stage1" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"].endswith("builtin/tiny")


@slow
def test_a_run_is_reproducible(tmp_path) -> None:
    """The same recipe and seed give the same adapter, new tag rows included."""
    from safetensors.torch import load_file

    overrides = SMALL + ["strategy=sft_tag", "stages.stage1.training.max_steps=2"]
    adapters = []
    for name in ("a", "b"):
        run_recipe(load_recipe(QUICKSTART, overrides), tmp_path / name)
        adapters.append(load_file(tmp_path / name / "stage1" / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


@slow
def test_full_parameter_mode_trains_every_weight_and_continues_from_stage1(tmp_path) -> None:
    from safetensors.torch import load_file

    from sftkey_lora.train.loading import resolve_model_path

    overrides = SMALL + ["stages.stage1.training.max_steps=3", "stages.stage2.training.max_steps=2",
                         "eval.tasks=[sftkey_synthetic]", "eval.limit=2", "eval.max_gen_toks=32"]
    recipe = load_recipe(QUICKSTART_FULL, overrides)
    record = run_recipe(recipe, tmp_path / "out")
    steps = record.data["steps"]
    assert list(steps) == ["stage1", "stage2", "eval"]  # no merge: there is no adapter to merge
    run_dir = tmp_path / "out"
    assert not (run_dir / "stage1-merged").exists()
    base = load_file(f"{resolve_model_path('builtin:tiny')}/model.safetensors")
    stage1 = load_file(run_dir / "stage1" / "model.safetensors")
    stage2 = load_file(run_dir / "stage2" / "model.safetensors")
    assert not (run_dir / "stage1" / "adapter_config.json").exists()

    def moved(after: torch.Tensor, before: torch.Tensor) -> float:
        rows = min(after.shape[0], before.shape[0])  # the embedding grew by the added tags
        return (after[:rows] - before[:rows]).abs().max().item()

    assert set(stage1) == set(base) and all(moved(stage1[n], base[n]) > 0 for n in base)  # every tensor
    # Stage 2 started from the stage-1 weights: it moved them, less than stage 1 moved the base.
    assert 0 < max(moved(stage2[n], stage1[n]) for n in base) < max(moved(stage1[n], base[n]) for n in base)
    assert record.data["recipe"]["training"]["mode"] == "full"
    assert steps["eval"]["status"] == "complete"


def test_full_parameter_mode_needs_unquantized_weights() -> None:
    with pytest.raises(UserError, match="training.mode: full trains every weight of the unquantized model"):
        load_recipe(QUICKSTART_FULL, ["model.quantization=nf4"])


@slow
def test_full_parameter_mode_learns_in_bf16_with_fp32_master_weights(tmp_path) -> None:
    """The paper's precision and a small rate: the weights stay fp32 and only the compute is bf16,
    so the held-out thinking loss falls at least half as far as in fp32 (bf16 weights would not
    move: an update of 1e-5 is below a bf16 weight's spacing)."""
    overrides = SMALL + ["strategy=sft_tag", "stages.stage1.training.max_steps=30", "training.warmup=0",
                         "training.learning_rate=1e-5", "training.save_steps=100", "training.batch_size=2",
                         "training.logging_steps=30"]  # held-out losses at the start and the end only
    from safetensors.torch import load_file

    drops, saved = {}, set()
    for precision in ("fp32", "bf16"):
        recipe = load_recipe(QUICKSTART_FULL, [*overrides, f"training.precision={precision}"])
        record = run_recipe(recipe, tmp_path / precision)
        thinking = record.data["steps"]["stage1"]["heldout_thinking_loss"]
        drops[precision] = thinking["before"] - thinking["after"]
        saved |= {tensor.dtype for tensor in load_file(tmp_path / precision / "stage1" / "model.safetensors")
                  .values()}
    assert drops["fp32"] > 0 and drops["bf16"] >= drops["fp32"] / 2, drops
    assert saved == {torch.float32}  # what stage 2 continues from, and export casts
