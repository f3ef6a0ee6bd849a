"""`sftkey-lora export`: the final model as one plain model directory, with the logits of the
run's final model, loadable by the stock lm_eval CLI; an unfinished run is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftkey_lora.recipe import Recipe
from tests.support import ROOT


@pytest.fixture(scope="module")
def exported(small_run, tmp_path_factory):
    from sftkey_lora.api import export

    _, record = small_run
    return record.layout, export(record.layout.root, tmp_path_factory.mktemp("export") / "model")


@pytest.mark.slow
def test_the_export_gives_the_logits_of_stage1_merged_with_the_stage2_adapter(exported) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout, out = exported
    names = sorted(path.name for path in out.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert {path.stat().st_mode & 0o777 for path in out.iterdir()} == {0o666 & ~umask}  # servable by others
    assert "model.safetensors" in names and not any(name.startswith("adapter") for name in names)
    assert {"README.md", "generation_config.json", "sftkey_recipe.json", "tokenizer.json"} <= set(names)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert {"<Thinking>", "</Thinking>", "<Answer>", "</Answer>"} <= set(tokenizer.get_added_vocab())
    ids = tokenizer("User: Tom has 3 apples.\nAssistant:\n<Thinking>Tom", return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(layout.merged_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(reference, str(layout.stage_dir("stage2"))).eval()
    with torch.no_grad():
        difference = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert difference < 1e-4
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    card = (out / "README.md").read_text()
    assert "strategy `sftkey_tag`" in card and "| sftkey_synthetic |" in card
    assert "base_model: builtin:tiny" in card


@pytest.mark.slow
def test_the_stage2_adapter_serves_over_stage1_merged_as_plain_lora(small_run) -> None:
    """The adapter form for servers that load LoRA adapters (vLLM `--lora-modules`): stage 2
    holds LoRA tensors only (no trainable token rows, no embedding, no modules to save) over
    the 16-bit `stage1-merged/`, which carries the tag rows."""
    from safetensors.torch import load_file

    layout = small_run[1].layout
    names = list(load_file(layout.stage_dir("stage2") / "adapter_model.safetensors"))
    assert names and all(name.endswith((".lora_A.weight", ".lora_B.weight")) for name in names), names
    config = json.loads((layout.stage_dir("stage2") / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] is None and config["modules_to_save"] is None
    assert config["base_model_name_or_path"] == str(layout.merged_dir)


@pytest.mark.slow
def test_the_stock_lm_eval_cli_runs_our_task_on_the_export(exported, tmp_path) -> None:
    _, out = exported
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={out},dtype=float32", "--tasks", "sftkey_synthetic", "--include_path",
                           str(ROOT / "eval_tasks"), "--device", "cpu", "--limit", "2", "--gen_kwargs",
                           "max_gen_toks=48", "--output_path", str(tmp_path / "results"), "--log_samples"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = tmp_path.glob("results/**/results_*.json")
    figures = json.loads(results.read_text())["results"]["sftkey_synthetic"]
    assert {"acc,none", "fmt,none", "score,none"} <= set(figures)
    samples = json.loads(next(tmp_path.glob("results/**/samples_sftkey_synthetic_*.jsonl")).read_text()
                         .splitlines()[0])
    assert samples["arguments"]["gen_args_0"]["arg_0"].startswith("User: ")  # the run's own prompt format


def test_an_unfinished_run_or_no_run_is_not_exported(cli, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"recipe": Recipe().model_dump(mode="json"), "steps": {"stage1": {"status": "complete"}}}
    (run_dir / "run.json").write_text(json.dumps(record))
    code, _, err = cli("export", str(run_dir))
    expected = (f"sftkey-lora: error: {run_dir}: merge, stage2 not complete; finish the run first "
                "(`sftkey-lora run` with its recipe resumes it)")
    assert code == 2 and err.strip() == expected
    assert not (run_dir / "final").exists()
    code, _, err = cli("export", str(tmp_path))
    assert code == 2 and "not a run directory (no run.json)" in err


@pytest.mark.slow
def test_an_export_replaces_an_earlier_export_and_nothing_else(small_run, cli, tmp_path) -> None:
    from safetensors.torch import load_file

    _, record = small_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = cli("export", str(record.layout.root), "--output", str(mine))
    assert code == 2 and f"--output {mine}: the directory is not empty and holds no sftkey_recipe.json" in err
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]
    again = tmp_path / "again"
    killed = tmp_path / ".again.tmp"  # what a killed export left: never carried into the next one
    killed.mkdir()
    (killed / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    for dtype in ([], ["--dtype", "bf16"]):  # an earlier export is replaced whole
        code, out, err = cli("export", str(record.layout.root), "--output", str(again), *dtype)
        assert code == 0, err
        assert out.startswith(f"exported {again} (") and (again / "model.safetensors").is_file()
        # By default the base's own dtype (the built-in model declares float32), else the one asked for.
        saved = {tensor.dtype for tensor in load_file(again / "model.safetensors").values()}
        assert saved == ({torch.bfloat16} if dtype else {torch.float32})
        declared = json.loads((again / "config.json").read_text())["dtype"]
        assert declared == ("bfloat16" if dtype else "float32")
        assert not list(again.glob("model-*")) and not killed.exists()


def test_the_default_export_dtype_is_the_one_the_base_declares(tmp_path) -> None:
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.train.loading import declared_precision, resolve_model_path

    assert declared_precision(ModelConfig(name_or_path="builtin:tiny")) == "fp32"
    config = json.loads((Path(resolve_model_path("builtin:tiny")) / "config.json").read_text())
    for dtype, expected in (("bfloat16", "bf16"), ("float16", "fp16"), (None, "fp32")):
        (tmp_path / "config.json").write_text(json.dumps({**config, "dtype": dtype}))
        assert declared_precision(ModelConfig(name_or_path=str(tmp_path))) == expected


def test_the_model_card_carries_the_hubs_metadata_and_the_figures(tmp_path) -> None:
    from huggingface_hub import ModelCard

    from sftkey_lora.model_export import model_card
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.train.plan import FinalModel

    figures = {"sftkey_synthetic": {"acc": 0.9, "fmt": 1.0, "score": 0.93, "n": 200}}
    record = {"recipe": Recipe().model_dump(mode="json"), "steps": {"eval": {"metrics": figures}},
              "data": {"train": 10, "holdout": 2, "rows_read": 12, "dropped": {}}}
    final = FinalModel("stage2", ModelConfig(), tmp_path, tmp_path, "fp32")
    card = ModelCard(model_card(record, final, tmp_path / "final", "bf16"))
    assert (card.data.base_model, card.data.library_name) == ("builtin:tiny", "transformers")
    assert card.data.tags == ["sftkey-lora", "sftkey_tag"]
    assert "then merged into plain bf16 weights" in card.text
    assert "| sftkey_synthetic | 0.900 | 1.000 | 0.930 | 200 |" in card.text


@pytest.mark.slow
def test_a_full_disk_while_exporting_keeps_the_earlier_export_whole(small_run, cli, tmp_path,
                                                                     monkeypatch) -> None:
    from sftkey_lora.rundir import manifest

    _, record = small_run
    out = tmp_path / "export"
    code, _, err = cli("export", str(record.layout.root), "--output", str(out))
    assert code == 0, err
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sftkey_lora.model_export.write_manifest", full)
    code, _, err = cli("export", str(record.layout.root), "--output", str(out), "--dtype", "bf16")
    assert code == 2 and f"export: the disk holding {out} is full" in err and "Traceback" not in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not list(tmp_path.glob(".*.tmp")) and manifest.damaged(out) == []
