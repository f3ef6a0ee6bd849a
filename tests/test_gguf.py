"""`export --gguf` and `eval FILE.gguf` on the quickstart run: llama.cpp's own converter writes
the files, llama.cpp runs them, and its greedy tokens are transformers' on the export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import sftkey_lora
from sftkey_lora.errors import UserError
from sftkey_lora.gguf.convert import model_gguf
from sftkey_lora.rundir.layout import EXPORTED_RECIPE

TYPES = ["f16", "q8_0", "q4_k_m"]
BUILTIN = Path(sftkey_lora.__file__).parent / "builtin" / "tiny"


@pytest.fixture(scope="module")
def ggufs(small_run, tmp_path_factory):
    """The quickstart run exported with three GGUF types and the adapter pair."""
    from sftkey_lora.api import export

    _, record = small_run
    out = tmp_path_factory.mktemp("gguf") / "model"
    return export(record.layout.root, out, gguf=TYPES, gguf_adapter=True)


@pytest.fixture(scope="module")
def f16(ggufs):
    from sftkey_lora.gguf.lm import LlamaCppLM

    return LlamaCppLM(ggufs / "quickstart-f16.gguf")


@pytest.fixture(scope="module")
def prompts(ggufs, f16) -> list[list[int]]:
    """Eight evaluation prompts in the training format, as llama.cpp tokenizes them."""
    from sftkey_lora.evaluation.agreement import export_prompts

    return [f16.tokenize(text) for text in export_prompts(ggufs, 8)]


@pytest.fixture(scope="module")
def reference(ggufs, prompts) -> list[list[int]]:
    """transformers' greedy tokens on the safetensors export."""
    from sftkey_lora.evaluation.agreement import transformers_greedy

    return transformers_greedy(ggufs, prompts, 64)


@pytest.mark.slow
def test_the_files_carry_the_name_tags_end_token_and_a_modelfile(ggufs, small_run) -> None:
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    recipe, _ = small_run
    pair = ["quickstart-base-f16.gguf", "quickstart-adapter-f16.gguf"]
    assert sorted(path.name for path in ggufs.glob("*.gguf")) == sorted(
        [*(f"quickstart-{kind}.gguf" for kind in TYPES), *pair])
    fields = GGUFReader(ggufs / "quickstart-f16.gguf").fields
    tokenizer = AutoTokenizer.from_pretrained(ggufs)
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert fields["general.name"].contents() == "quickstart"
    assert fields["general.finetune"].contents() == recipe.strategy  # not the export's temporary folder
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"  # the built-in split, by its rule
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    for tag in recipe.format.tag_strings.all:  # added tags: real tokens of the file's vocabulary
        assert tokens[tokenizer.convert_tokens_to_ids(tag)] == tag
    modelfile = (ggufs / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./quickstart-f16.gguf\n")
    assert 'TEMPLATE """User: {{ .Prompt }}\nAssistant:\n"""' in modelfile  # the run had no system prompt
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in modelfile
    card = (ggufs / "README.md").read_text()
    assert "llama-cli -m quickstart-base-f16.gguf --lora quickstart-adapter-f16.gguf" in card


@pytest.mark.slow
def test_llama_cpp_tokenizes_the_training_texts_as_transformers(ggufs, f16) -> None:
    """The built-in tokenizer converted under llama.cpp's `smollm` rule splits as it does."""
    from transformers import AutoTokenizer

    from sftkey_lora.evaluation.agreement import export_prompts

    tokenizer = AutoTokenizer.from_pretrained(ggufs)
    texts = [f"{prompt}<Thinking>Kofi has 12 apples and eats 3: 12 - 3 = 9.</Thinking><Answer>9</Answer>"
             for prompt in export_prompts(ggufs, 8)] + ["  3.14159 + 2,000,000 = ?\n\n\t x", "héllo wörld 🦙"]
    for text in texts:
        assert f16.tokenize(text) == tokenizer(text, add_special_tokens=False).input_ids, text


@pytest.mark.slow
def test_f16_greedy_tokens_are_transformers_on_the_export(f16, prompts, reference) -> None:
    from sftkey_lora.evaluation.agreement import gguf_greedy

    assert gguf_greedy(f16, prompts, 64) == reference


@pytest.mark.slow
def test_the_base_with_the_adapter_gives_the_merged_files_tokens(ggufs, f16, prompts) -> None:
    from sftkey_lora.evaluation.agreement import gguf_greedy
    from sftkey_lora.gguf.lm import LlamaCppLM

    paired = LlamaCppLM(ggufs / "quickstart-base-f16.gguf", lora=ggufs / "quickstart-adapter-f16.gguf")
    assert gguf_greedy(paired, prompts, 64) == gguf_greedy(f16, prompts, 64)


@pytest.mark.slow
@pytest.mark.parametrize("kind, least", [("q8_0", 7), ("q4_k_m", 6)])
def test_quantized_files_mostly_keep_the_first_tokens(ggufs, prompts, reference, kind: str,
                                                      least: int) -> None:
    """How often the first 32 tokens agree (the README gives the figures of a larger sample:
    63 and 62 of 64 prompts)."""
    from sftkey_lora.evaluation.agreement import agreement, gguf_greedy
    from sftkey_lora.gguf.lm import LlamaCppLM

    found = agreement(gguf_greedy(LlamaCppLM(ggufs / f"quickstart-{kind}.gguf"), prompts, 32), reference, 32)
    assert found.whole >= least, found


@pytest.mark.slow
def test_eval_grades_a_gguf_with_transformers_outputs(ggufs, prompts, reference, cli, tmp_path) -> None:
    """`sftkey-lora eval FILE.gguf` reads the export's recipe beside the file; its outputs are
    the text of transformers' greedy tokens on the same items."""
    from transformers import AutoTokenizer

    out = tmp_path / "eval"
    code, _, err = cli("eval", str(ggufs / "quickstart-f16.gguf"), "--limit", "8", "--output", str(out),
                       "--set", "eval.max_gen_toks=64")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "samples" / "sftkey_synthetic.jsonl").open()]
    tokenizer = AutoTokenizer.from_pretrained(ggufs)
    assert [row["output"] for row in rows] == [tokenizer.decode(tokens, skip_special_tokens=True)
                                               for tokens in reference]
    assert json.loads((out / "metrics.json").read_text())["sftkey_synthetic"]["n"] == 8


@pytest.mark.slow
def test_bad_gguf_requests_exit_2_naming_the_fault(ggufs, small_run, cli, tmp_path) -> None:
    _, record = small_run
    code, _, err = cli("export", str(record.layout.root), "--output", str(tmp_path / "x"), "--gguf", "q3_x")
    assert code == 2 and "--gguf q3_x: not a type llama.cpp offers" in err and "q4_k_m" in err
    assert not (tmp_path / "x").exists()
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(64))
    code, _, err = cli("eval", str(tmp_path / "garbage.gguf"), "--output", str(tmp_path / "e1"))
    assert code == 2 and "garbage.gguf: llama.cpp cannot load it" in err
    stranger = tmp_path / "stranger"  # the untuned built-in model, beside the export's tokenizer and recipe
    stranger.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", EXPORTED_RECIPE):
        (stranger / name).write_bytes((ggufs / name).read_bytes())
    model_gguf(BUILTIN, stranger / "other.gguf", "f16", "other", "none")
    code, _, err = cli("eval", str(stranger / "other.gguf"), "--output", str(tmp_path / "e2"))
    assert code == 2 and "other.gguf: not a model of the tokenizer that renders its prompts" in err, err
    assert re.search(r"'<Thinking>' \(id \d+\) is past the file's vocabulary", err), err
    assert not (tmp_path / "e2" / "metrics.json").exists()

def test_an_architecture_the_converter_lacks_is_named(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(UserError, match="no conversion for the architecture NoSuchModelForCausalLM"):
        model_gguf(tmp_path, tmp_path / "out.gguf", "f16", "x", "none")


def test_a_converter_that_cannot_be_fetched_is_named(tmp_path, monkeypatch) -> None:
    from sftkey_lora.gguf import llamacpp

    monkeypatch.setenv("SFTKEY_LLAMA_CPP", str(tmp_path / "converters"))
    monkeypatch.setattr(llamacpp, "SDIST_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(UserError, match="could not fetch .*SFTKEY_LLAMA_CPP"):
        llamacpp.converters_dir()
