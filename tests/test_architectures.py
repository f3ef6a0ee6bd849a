"""The paper's architectures with their real tokenizers (tests/real_models.py): what inspect
shows on every tokenizer, template and way of writing the tags; the run matrix, each run's
saved model reloaded with plain transformers and peft; the README's supported-models table."""

from __future__ import annotations

import json

import pytest
import torch

from sftkey_lora.recipe import load_recipe
from sftkey_lora.tags import PAPER_TAGS, Tags
from tests.real_models import ARCHITECTURES, FIGURES, HEADER, described, matrix, run
from tests.real_tokenizers import NAMES, tokenizer_dir
from tests.support import QUICKSTART, ROOT, holdout_batches, think_tags

QWEN3_THINK = ROOT / "recipes" / "qwen3-think.yaml"


def inspected(cli, recipe, *overrides: str) -> dict:
    args = ["inspect", str(recipe), "--json", "--n", "1", "--set", "data.source=synthetic",
            "--set", "data.synthetic.n_train=4"]
    for item in overrides:
        args += ["--set", item]
    code, out, err = cli(*args)
    assert code == 0, err
    return json.loads(out)[0]


def assert_key_span_follows_the_thinking(row: dict, tags: Tags, eos: str) -> None:
    """Stage 1's loss text is the whole tagged response; stage 2's is what follows the thinking
    close tag, plus at most the close tag's own tail where one token spans the boundary."""
    key = f"{tags.answer_open}{row['answer']}{tags.answer_close}{eos}"
    assert row["loss_text"]["stage1"] == f"{tags.think_open}{row['thinking']}{tags.think_close}{key}"
    stage2 = row["loss_text"]["stage2"]
    assert stage2.endswith(key)
    boundary = stage2[:-len(key)]
    assert boundary == "" or (tags.think_close.endswith(boundary) and boundary != tags.think_close)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("template", ["base", "chat"])
@pytest.mark.parametrize("tags", ["text", "added_tokens"])
def test_inspect_on_real_tokenizers(cli, real_tokenizers, name: str, template: str, tags: str) -> None:
    row = inspected(cli, QUICKSTART, f"model.name_or_path={tokenizer_dir(name)}",
                    f"format.template={template}", f"format.tags={tags}")
    assert_key_span_follows_the_thinking(row, PAPER_TAGS, real_tokenizers[name].eos_token)
    if tags == "added_tokens":  # each tag is one token, so the key span starts exactly at <Answer>
        assert row["loss_text"]["stage2"].startswith(PAPER_TAGS.answer_open)


@pytest.mark.parametrize("template", ["base", "chat"])
def test_qwen3_recipe_keys_on_what_follows_its_think_close_tag(cli, real_tokenizers, template: str) -> None:
    recipe = load_recipe(QWEN3_THINK)
    assert recipe.format.tag_strings == think_tags() and recipe.format.tags == "text"
    assert "<think> reasoning process here </think>" in recipe.format.system_prompt
    qwen3 = real_tokenizers["qwen3"]
    assert [len(qwen3.tokenize(tag)) for tag in ("<think>", "</think>")] == [1, 1]  # no new rows
    row = inspected(cli, QWEN3_THINK, f"model.name_or_path={tokenizer_dir('qwen3')}",
                    f"format.template={template}")
    assert_key_span_follows_the_thinking(row, think_tags(), qwen3.eos_token)
    assert row["loss_text"]["stage2"].startswith("<answer>")


def test_qwen3_recipe_evaluates_in_its_own_tags() -> None:
    from sftkey_lora.evaluation.tasks import build_docs, grade_document

    recipe = load_recipe(QWEN3_THINK).model_dump(mode="json")
    doc = build_docs("sftkey_synthetic", {"recipe": recipe})["test"][0]
    assert doc["tags"] == list(think_tags().all) and "</think>" in doc["prompt"]  # the system prompt
    answer = doc["reference"]
    right = grade_document(doc, f"<think>so it is {answer}</think><answer>{answer}</answer>")
    assert (right.acc, right.fmt) == (True, True)
    paper = grade_document(doc, f"<Thinking>so</Thinking><Answer>{answer}</Answer>")
    assert not paper.fmt
    wrong = grade_document(doc, f"<think>so it is {answer}</think><answer>{answer}1</answer>")
    assert (wrong.acc, wrong.fmt) == (False, True)


def reloaded(run_dir, variant: str):
    """The model stage 2 trained, loaded as a user would: plain transformers (and peft)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if variant == "full":
        return AutoModelForCausalLM.from_pretrained(run_dir / "stage2", dtype=torch.float32)
    kwargs = {}
    if variant.startswith("4-bit"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(run_dir / "stage1-merged", dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, run_dir / "stage2")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "variant"), matrix())
def test_architecture_matrix(real_models, tmp_path, name: str, variant: str) -> None:
    """Both stages run; the saved stage-2 model, reloaded with plain peft, gives the held-out
    key loss the run recorded; the 4-bit run's evaluation grades in the recipe's tags."""
    from sftkey_lora.evaluation.tasks import grade_document
    from sftkey_lora.train.loss import segment_losses

    recipe, record = run(name, variant, real_models[name], tmp_path / "run")
    steps = record.data["steps"]
    merges = variant != "full"
    assert list(steps) == ["stage1", *(["merge"] if merges else []), "stage2",
                           *(["eval"] if variant == "4-bit" else [])]
    assert all(step["status"] == "complete" for step in steps.values())
    assert [steps[s]["labels"] for s in ("stage1", "stage2")] == ["full", "key"]
    assert {steps[s]["logits"] for s in ("stage1", "stage2")} == {ARCHITECTURES[name].logits}
    if merges:
        kl = steps["merge"]["kl"]
        assert steps["merge"]["base"] == min(kl, key=kl.get) and kl[steps["merge"]["base"]] < 1e-2
    model = reloaded(tmp_path / "run", variant).eval()
    key = steps["stage2"]["heldout_key_loss"]
    key_loss = segment_losses(model, holdout_batches(recipe, segments=True))["key"]
    # Reloaded for inference, bitsandbytes runs 4-bit layers in its packed bf16 CPU kernel where
    # it can (training never does): the same weights, rounded differently (about 3e-5 relative).
    assert key_loss == pytest.approx(key["after"], rel=1e-4)
    assert abs(key_loss - key["after"]) < abs(key["before"] - key["after"]) / 10  # stage 2's own change
    if variant == "4-bit":
        samples = (tmp_path / "run" / "samples" / "sftkey_synthetic.jsonl").read_text().splitlines()
        for sample in map(json.loads, samples):
            assert sample["doc"]["tags"] == list(recipe.format.tag_strings.all)
            graded = grade_document(sample["doc"], sample["output"])
            assert (float(graded.acc), float(graded.fmt)) == (sample["acc"], sample["fmt"])


def test_readme_table_says_what_the_matrix_runs() -> None:
    """README.md's supported-models table: one row per architecture whose descriptive cells
    are the matrix's own (the figure cells come from `python -m tests.real_models DIR --table`)."""
    text = (ROOT / "README.md").read_text()
    header = "| " + " | ".join(HEADER + FIGURES) + " |"
    assert header in text
    rows = text.split(header, 1)[1].strip().splitlines()[1:1 + len(ARCHITECTURES)]
    cells = [tuple(cell.strip() for cell in row.strip("|").split("|")) for row in rows]
    assert [row[:len(HEADER)] for row in cells] == [described(name) for name in ARCHITECTURES]
    assert all(len(row) == len(HEADER) + len(FIGURES) and all(row) for row in cells)
