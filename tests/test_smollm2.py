"""A real pretrained model end to end: SmolLM2-135M-Instruct (sftkey_lora/smollm2.py), one short
run of its recipe shared by every test here, then its export and its untuned evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sftkey_lora.smollm2 import HUB_ID
from tests.support import ROOT

pytestmark = pytest.mark.takes(600)

RECIPE = ROOT / "recipes" / "smollm2-135m-instruct.yaml"
# Enough steps at a high rate for the tags and the end of turn to be learned, no more.
SHORT = ["data.synthetic.n_train=28", "data.holdout=4", "data.synthetic.n_test=4", "training.batch_size=4",
         "training.logging_steps=50", "training.save_steps=50", "stages.stage1.training.max_steps=10",
         "stages.stage1.training.learning_rate=2e-3", "stages.stage2.training.max_steps=1",
         "stages.stage2.training.warmup=0",  # its one step would be warm-up, at rate 0
         "eval.limit=1", "eval.max_gen_toks=64",
         # Batches of 4 need no checkpointing: the same losses, a quarter less time.
         "training.gradient_checkpointing=false"]

# The tags in order, then nothing more (the end of turn, which stops generation, follows).
TAGGED_TURN = r"<Thinking>.+</Thinking>\s*<Answer>.+</Answer>"
MAX_NEW = 200

slow = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_run(smollm2_dir, tmp_path_factory):
    """(recipe, record) of the recipe cut to a few steps per stage, evaluated on 4 problems."""
    from sftkey_lora.pipeline import run_recipe
    from sftkey_lora.recipe import load_recipe

    recipe = load_recipe(RECIPE, [f"model.name_or_path={smollm2_dir}", *SHORT])
    return recipe, run_recipe(recipe, tmp_path_factory.mktemp("smollm2") / "run")


def test_the_converted_model_has_the_files_end_tokens_and_the_hubs_digit_split(smollm2_dir) -> None:
    """bos <|im_start|>, eos and pad <|im_end|> as the GGUF file says (transformers' GGUF
    loader names <|im_start|> as eos), the same ids in both configs, each digit alone, and the
    hub's byte-level BPE."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>")
    config = json.loads((smollm2_dir / "config.json").read_text())
    generation = GenerationConfig.from_pretrained(smollm2_dir)
    assert config["eos_token_id"] == generation.eos_token_id == tokenizer.eos_token_id == 2
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    assert tokenizer.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]
    # A byte-level BPE as the hub's (llama.cpp's converter reads byte fallback as SentencePiece).
    written = json.loads((smollm2_dir / "tokenizer.json").read_text())
    assert not written["model"]["byte_fallback"] and written["decoder"]["type"] == "ByteLevel"
    text = "Kofi has 12 apples ▁ héllo 🦙\n\t x"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert f"base_model: {HUB_ID}" in (smollm2_dir / "README.md").read_text()
    assert "dequantized" in (smollm2_dir / "README.md").read_text()


@pytest.mark.parametrize("tags", ["text", "added_tokens"])
def test_inspect_spans_are_exact_on_its_tokenizer(cli, smollm2_dir, tags: str) -> None:
    code, out, err = cli("inspect", str(RECIPE), "--json", "--n", "5", "--set",
                         f"model.name_or_path={smollm2_dir}", "--set", f"format.tags={tags}")
    assert code == 0, err
    assert "end token" not in err  # the converted tokenizer and the config agree
    for row in json.loads(out):
        key = f"<Answer>{row['answer']}</Answer><|im_end|>"
        assert row["loss_text"]["stage1"] == f"<Thinking>{row['thinking']}</Thinking>{key}"
        # As text, `><` is one token of its vocabulary: the token that straddles the boundary
        # is the first key token. Added tags are tokens of their own: the boundary is exact.
        straddling = {"text": ">", "added_tokens": ""}[tags]
        assert row["loss_text"]["stage2"] == straddling + key


@slow
def test_both_stages_merge_and_evaluation_complete_on_real_weights(smollm2_run) -> None:
    _, record = smollm2_run
    steps = record.data["steps"]
    assert all(steps[name]["status"] == "complete" for name in ("stage1", "merge", "stage2", "eval"))
    merge = steps["merge"]
    assert set(merge["kl"]) == set(merge["heldout"]) == {"original", "nf4"}
    # The recipe merges into 16 bits: the NF4 round trip plus the adapter is the stage-1 model
    # itself, so stage 2 starts where stage 1 ended; the original weights plus the adapter are not.
    assert merge["base"] == "nf4" and merge["kl"]["nf4"] < 1e-6 < merge["kl"]["original"]
    losses = {name: steps[name]["heldout_key_loss"] for name in ("stage1", "stage2")}
    assert losses["stage2"]["before"] == pytest.approx(losses["stage1"]["after"], abs=1e-4)
    for name in ("stage1", "stage2"):
        key = steps[name]["heldout_key_loss"]
        assert key["after"] < key["before"], f"{name} did not lower the held-out key loss"
    metrics = json.loads((record.run_dir / "metrics.json").read_text())["sftkey_synthetic"]
    assert metrics["n"] == 1 and {"acc", "fmt", "score"} <= set(metrics)


@pytest.fixture(scope="module")
def turns(smollm2_run) -> tuple[list[list[int]], list[list[int]]]:
    """Sixteen test prompts in the training format (token ids), and the export's greedy
    continuations in transformers, the end-of-turn token left out (an output shorter than
    MAX_NEW ended with it)."""
    from transformers import AutoTokenizer

    from sftkey_lora.data.synthetic import synthetic_split
    from sftkey_lora.evaluation.agreement import transformers_greedy
    from sftkey_lora.prep.render import render_prompt

    recipe, record = smollm2_run
    model_dir = exported(record)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [render_prompt(example.prompt, recipe.format, tokenizer)
             for example in synthetic_split("test", 1, 16, seed=7)]
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    return prompts, transformers_greedy(model_dir, prompts, MAX_NEW)


@slow
def test_after_training_it_writes_the_tags_and_stops_at_its_end_of_turn(smollm2_run, turns) -> None:
    """Greedy generation in the training format, from the export: <|im_start|> never comes,
    `</Answer>` is followed by <|im_end|> (id 2), the model's own end of turn, and nothing else.
    A model trained for 10 steps still answers some prompts untagged or loops in its thinking
    (even the recipe's full run leaves a quarter untagged), so 8 of 16 must write the whole turn."""
    from transformers import AutoTokenizer

    _, record = smollm2_run
    tokenizer = AutoTokenizer.from_pretrained(exported(record))
    texts, finished = [], 0
    for out in turns[1]:
        text = tokenizer.decode(out, skip_special_tokens=False)
        texts.append(text)
        assert tokenizer.bos_token_id not in out, texts
        if "</Answer>" in text:
            assert re.fullmatch(TAGGED_TURN, text, re.DOTALL) and len(out) < MAX_NEW, texts
            finished += 1
    assert tokenizer.eos_token_id == 2 and finished >= 8, texts


@slow
def test_llama_cpp_runs_its_gguf_as_transformers_runs_the_export(smollm2_run, turns) -> None:
    """The f16 GGUF through llama.cpp: the prompts tokenized as transformers tokenizes them, and
    mostly the same greedy tokens, the tags and the end of turn included. Not all: llama.cpp
    multiplies in f16, and on this model a near tie can go the other way (on the recipe's run,
    15 of 16 prompts agreed over 200 tokens, against transformers on the fp32 or on the
    f16-rounded weights alike)."""
    from transformers import AutoTokenizer

    from sftkey_lora.evaluation.agreement import agreement, gguf_greedy
    from sftkey_lora.gguf.lm import LlamaCppLM

    recipe, record = smollm2_run
    model_dir = exported(record)
    lm = LlamaCppLM(model_dir / f"{recipe.name}-f16.gguf")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts, reference = turns
    assert [lm.tokenize(tokenizer.decode(prompt)) for prompt in prompts] == prompts
    found = agreement(gguf_greedy(lm, prompts, MAX_NEW), reference, MAX_NEW)
    lm.close()
    assert found.whole >= 8, found


@slow
def test_the_export_gives_the_logits_of_stage1_merged_with_the_stage2_adapter(smollm2_run) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, record = smollm2_run
    model_dir = exported(record)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("<|im_start|>user\nTom has 3 apples.<|im_end|>\n<|im_start|>assistant\n<Thinking>Tom",
                    return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(record.layout.merged_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(reference, str(record.layout.stage_dir("stage2"))).eval()
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max().item() < 1e-4


@slow
def test_the_untuned_model_is_graded_as_it_is(cli, smollm2_dir, tmp_path) -> None:
    """The reference row: the model as downloaded (in 16 bits), evaluated on the task, its
    outputs kept."""
    out = tmp_path / "untuned"
    code, _, err = cli("eval", str(smollm2_dir), "--recipe", str(RECIPE), "--tasks", "sftkey_synthetic",
                       "--limit", "1", "--output", str(out), "--set", "eval.max_gen_toks=32",
                       "--set", "model.quantization=none")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())["sftkey_synthetic"]
    assert metrics["n"] == 1
    rows = [json.loads(line) for line in (out / "samples" / "sftkey_synthetic.jsonl").open()]
    assert all(row["output"].strip() for row in rows)  # it answers, in its own way


def exported(record) -> Path:
    """The run's export, written once."""
    from sftkey_lora.api import export

    target = record.run_dir.parent / "export"
    return target if (target / "config.json").is_file() else export(record.run_dir, target, gguf=["f16"])
