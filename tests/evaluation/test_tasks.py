"""The sftkey_* lm-eval tasks: every YAML loads, every task runs on a 3-row local file, and
prompts are rendered as in training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.evaluation.harness import task_manager, tasks_dir
from sftkey_lora.evaluation.tasks import TASKS, build_docs
from sftkey_lora.prep.render import render_prompt
from sftkey_lora.recipe import FormatConfig, Recipe
from tests.support import FIXTURES

# Each task's 3-row local file, in its source's own schema.
EVAL = FIXTURES / "eval"
LOCAL_FILES = {
    "sftkey_synthetic": None,  # built in
    "sftkey_gsm8k": EVAL / "gsm8k.jsonl",
    "sftkey_openbookqa": EVAL / "openbookqa.json",
    "sftkey_openr1_math": EVAL / "openr1_math.jsonl",
    "sftkey_cot_collection": EVAL / "cot_collection.jsonl",
    "sftkey_jsonl": EVAL / "jsonl.jsonl",
}


@pytest.mark.slow
def test_every_task_and_the_group_is_found_by_lm_eval() -> None:
    assert set(LOCAL_FILES) == set(TASKS)
    manager = task_manager({}, [*TASKS, "sftkey"])
    assert set(TASKS) | {"sftkey"} == set(manager.all_tasks)  # ours alone: lm-eval's own not indexed
    stock = task_manager({}, ["sftkey_gsm8k", "gsm8k"])  # a stock task beside ours: every task
    assert {"gsm8k", "sftkey_gsm8k"} <= set(stock.all_tasks) and len(stock.all_tasks) > 1000
    yaml_tasks = {path.stem for path in tasks_dir().glob("sftkey_*.yaml")}
    assert yaml_tasks == set(TASKS)  # no YAML that lm-eval would skip without a word


@pytest.mark.slow
def test_lm_eval_validate_accepts_every_task() -> None:
    tasks = ",".join([*TASKS, "sftkey"])
    done = subprocess.run([sys.executable, "-m", "lm_eval", "validate", "--tasks", tasks,
                           "--include_path", str(tasks_dir())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All tasks found and valid" in done.stdout


@pytest.fixture(scope="module")
def tiny_lm():
    from lm_eval.models.huggingface import HFLM

    from sftkey_lora.train.loading import load_model, load_tokenizer

    recipe = Recipe()
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model.model_copy(update={"quantization": "none"}), "fp32",
                       vocab_size=len(tokenizer)).eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3)


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_runs_on_a_three_row_file(task: str, tiny_lm) -> None:
    from lm_eval import simple_evaluate

    path = LOCAL_FILES[task]
    manager = task_manager({"data_path": str(path)} if path else {}, [task])
    out = simple_evaluate(model=tiny_lm, tasks=[task], task_manager=manager, limit=3,
                          gen_kwargs={"max_gen_toks": 16}, log_samples=True)
    metrics = out["results"][task]
    for name in ("acc", "fmt", "fmt_tags", "score"):
        assert 0.0 <= metrics[f"{name},none"] <= 1.0
    samples = out["samples"][task]
    assert len(samples) == 3
    config = out["configs"][task]
    assert config["generation_kwargs"]["until"] == [] and config["generation_kwargs"]["do_sample"] is False
    # Greedy and never stopped by a string: the untuned model writes its whole budget.
    assert all(sample["resps"][0][0] for sample in samples)


def test_the_jsonl_task_needs_a_file() -> None:
    with pytest.raises(UserError, match="data_path"):
        build_docs("sftkey_jsonl", {})


def test_the_jsonl_task_reads_both_row_shapes() -> None:
    docs = build_docs("sftkey_jsonl", {"data_path": str(EVAL / "jsonl.jsonl")})["test"]
    assert [(d["reference"], d["kind"]) for d in docs] == [("7", "math"), ("blue", "text"), ("8", "math")]
    file = str(EVAL / "jsonl.jsonl")
    choice = build_docs("sftkey_jsonl", {"data_path": file, "answer_kind": "choice"})
    assert {d["kind"] for d in choice["test"]} == {"choice"}


def test_multiple_choice_documents_carry_their_option_letters() -> None:
    docs = build_docs("sftkey_openbookqa", {"data_path": str(EVAL / "openbookqa.json")})["test"]
    assert all(d["labels"] == ["A", "B", "C", "D"] and d["kind"] == "choice" for d in docs)
    assert "\nA. " in docs[0]["prompt"] and docs[0]["reference"] in "ABCD"


def test_without_a_run_prompts_use_the_paper_base_format() -> None:
    doc = build_docs("sftkey_synthetic", {})["test"][0]
    assert doc["prompt"] == render_prompt(doc["question"], FormatConfig())
    assert doc["prompt"].startswith("A conversation between User and Assistant.")
    assert doc["alpha"] == 0.7


def test_prompts_follow_the_run_recipe_found_beside_the_model(tmp_path) -> None:
    recipe = Recipe(format=FormatConfig(system_prompt="Answer in tags."))
    recipe.data.synthetic.seed = 5
    (tmp_path / "run.json").write_text(json.dumps({"recipe": recipe.model_dump(mode="json"), "steps": {}}))
    metadata = {"pretrained": str(tmp_path / "stage1-merged"), "dtype": "float32", "alpha": 0.5}
    doc = build_docs("sftkey_synthetic", metadata)["test"][0]
    assert doc["prompt"] == f"Answer in tags.\nUser: {doc['question']}\nAssistant:\n"
    default = build_docs("sftkey_synthetic", {})["test"][0]
    assert doc["question"] != default["question"]  # the run's own synthetic test split
    assert doc["alpha"] == 0.5


def test_a_letter_answer_recipe_is_graded_as_a_choice(tmp_path) -> None:
    recipe = Recipe()
    recipe.data.synthetic.answer = "letter"
    doc = build_docs("sftkey_synthetic", {"recipe": recipe.model_dump(mode="json")})["test"][0]
    assert (doc["kind"], doc["labels"]) == ("choice", ["A", "B", "C", "D"])
    assert doc["reference"] in "ABCD" and "\nD. " in doc["question"]
    assert build_docs("sftkey_synthetic", {})["test"][0]["kind"] == "math"


@pytest.mark.parametrize(("strategy", "separator"), [("sft", "\nThe answer is "), ("sft_tag", ""),
                                                     ("sftkey_tag", ""), (None, "")])
def test_documents_name_the_format_the_run_was_trained_on(tmp_path, strategy, separator) -> None:
    """An `sft` run's model is judged on its untagged layout; tagged runs, and models outside a
    run, on the tags."""
    metadata = {}
    if strategy:
        recorded = {"recipe": Recipe(strategy=strategy).model_dump(mode="json"), "steps": {}}
        (tmp_path / "run.json").write_text(json.dumps(recorded))
        metadata = {"pretrained": str(tmp_path / "stage1-merged")}
    assert build_docs("sftkey_synthetic", metadata)["test"][0]["separator"] == separator


def test_chat_template_prompts_come_from_the_model_tokenizer(tmp_path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from sftkey_lora.train.loading import resolve_model_path

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{resolve_model_path('builtin:tiny')}/{name}", tmp_path / name)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    tokenizer.save_pretrained(tmp_path)
    recipe = Recipe(format=FormatConfig(template="chat", system_prompt="Be brief."))
    doc = build_docs("sftkey_synthetic", {"recipe": recipe.model_dump(mode="json"),
                                          "pretrained": str(tmp_path)})["test"][0]
    assert doc["prompt"] == f"<system>Be brief.\n<user>{doc['question']}\n<assistant>"


def test_a_hub_task_offline_says_how_to_give_a_local_file() -> None:
    with pytest.raises(UserError) as caught:
        build_docs("sftkey_gsm8k", {})
    message = str(caught.value)
    assert "sftkey_gsm8k" in message and "openai/gsm8k" in message and "eval.path" in message


@pytest.mark.slow
def test_a_wheel_carries_the_tasks(tmp_path) -> None:
    """Installed from a wheel, the tasks land in <prefix>/share/sftkey-lora/eval_tasks, the
    second place `tasks_dir` looks."""
    import shutil
    import zipfile

    from tests.support import ROOT

    source = tmp_path / "src"  # a copy: building writes build/ beside the sources
    for name in ("sftkey_lora", "eval_tasks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(dist)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    shipped = {name.rsplit("/", 1)[-1] for name in names if "/data/share/sftkey-lora/eval_tasks/" in name}
    expected = {path.name for path in tasks_dir().iterdir() if path.is_file() and path.suffix != ".pyc"}
    assert shipped == expected
