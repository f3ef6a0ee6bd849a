import re
from pathlib import Path

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.recipe import PAPER_SYSTEM_PROMPT, Recipe, load_recipe
from tests.support import QUICKSTART, ROOT

LAUNCH_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))  # accelerate's, not recipes
ALL_RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set(LAUNCH_CONFIGS))


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.strategy in ("sft", "sft_tag", "key_tag", "sftkey_tag")


def test_an_empty_recipe_is_the_paper_method_on_the_builtin_model(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, ""))
    assert recipe.model_dump(exclude={"name"}) == Recipe().model_dump(exclude={"name"})
    assert (recipe.strategy, recipe.model.name_or_path, recipe.name) == ("sftkey_tag", "builtin:tiny", "r")
    assert recipe.format.system_prompt == PAPER_SYSTEM_PROMPT and recipe.format.tags == "text"


def test_a_stage_section_holds_no_defaults_of_its_own(tmp_path: Path) -> None:
    """An empty `stages.stage2` is the top level's settings: a stage default written apart
    from the top-level one would silently differ from it."""
    recipe = load_recipe(write(tmp_path, "lora: {r: 4}\ntraining: {learning_rate: 0.5}\n"
                                         "stages: {stage2: {}}\n"))
    assert recipe.stage("stage2") == recipe.stage("stage1")
    assert (recipe.stage("stage2").lora.r, recipe.stage("stage2").training.learning_rate) == (4, 0.5)
    over = load_recipe(write(tmp_path, "training: {learning_rate: 0.5}\n"
                                       "stages: {stage2: {training: {epochs: 3}}}\n"))
    assert over.stage("stage2").training.model_dump() == {**over.training.model_dump(), "epochs": 3}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_overrides_are_parsed_as_yaml_values(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "strategy: sft\n"), [
        "data.limit=12", "data.skip_bad_rows=true", "data.segmentation=[boxed, last_line]",
        "format.system_prompt=", "strategy=key_tag",
    ])
    assert recipe.data.limit == 12
    assert recipe.data.skip_bad_rows is True
    assert recipe.data.segmentation == ["boxed", "last_line"]
    assert recipe.format.system_prompt == ""
    assert recipe.strategy == "key_tag"
    assert recipe.name == "r"  # defaults to the file's stem


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("data:\n  sourc: gsm8k\n", [], "`data.sourc`: unknown key"),
    ("", ["lora.rank=8"], "`lora.rank`: unknown key"),
    ("", ["stages.stage2.training.lr=1"], "`stages.stage2.training.lr`: unknown key"),
    ("", ["data.limit=many"], "`data.limit`: Input should be a valid integer"),
    ("", ["data.limit=0"], "`data.limit`: Input should be greater than 0"),
    ("", ["data.source=imagenet"], "`data.source`: Input should be"),
    ("", ["strategy=sftkey"], "`strategy`: Input should be"),
    ("", ["format.max_length=4"], "`format.max_length`"),
    ("", ["data.path=/no/such/file.jsonl"], "`data.path`: file not found: /no/such/file.jsonl"),
    ("", ["data.segmentation=[]"], "`data.segmentation`: give at least one rule"),
    ("model: [1, 2]\n", [], "`model`: Input should be a valid dictionary"),
    ("- just\n- a list\n", [], "a recipe is a mapping"),
    ("data:\n  source: [unclosed\n", [], "line 3 is not valid YAML"),
    ("", ["data"], "expected dotted.key=value"),
    ("", ["eval.alpha=1.5"], "`eval.alpha`: Input should be less than or equal to 1"),
    ("", ["eval.judge.api_key=sk-1"], "`eval.judge.url`: Field required"),  # a key never sits in a recipe
    ("", ["eval.judge={url: u, model: m, api_key: sk-1}"], "`eval.judge.api_key`: unknown key"),
    ("", ["eval.path=/no/test.jsonl"], "`eval.path`: file not found: /no/test.jsonl"),

    ("strategy: sft\n", ["strategy.inner=1"], "strategy is not a section"),
])
def test_bad_recipes_name_the_field(tmp_path: Path, text: str, overrides: list[str],
                                    expected: str) -> None:
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, text), overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_recipe_file_is_named() -> None:
    with pytest.raises(UserError, match="recipe file not found: nope.yaml"):
        load_recipe("nope.yaml")


def test_cli_exits_2_with_one_line_and_no_traceback(cli, tmp_path: Path) -> None:
    code, out, err = cli("inspect", str(QUICKSTART), "--set", "data.limt=3")
    assert code == 2
    assert out == ""
    assert err.strip() == f"sftkey-lora: error: {QUICKSTART}: field `data.limt`: unknown key"
    assert "Traceback" not in err


def test_include_lays_files_over_each_other(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("strategy: sft\ntraining: {epochs: 2, learning_rate: 0.1}\n")
    (tmp_path / "data.yaml").write_text("training: {batch_size: 4}\ndata: {limit: 7}\n")
    top = write(tmp_path, "include: [base.yaml, data.yaml]\ntraining: {learning_rate: 0.5}\n")
    recipe = load_recipe(top)
    assert recipe.strategy == "sft" and recipe.data.limit == 7
    assert (recipe.training.epochs, recipe.training.batch_size, recipe.training.learning_rate) == (2, 4, 0.5)
    assert recipe.name == "r"


@pytest.mark.parametrize(("files", "expected"), [
    ({"r.yaml": "include: gone.yaml\n"}, "gone.yaml (included from"),
    ({"r.yaml": "include: a.yaml\n", "a.yaml": "include: r.yaml\n"}, "includes itself"),
    ({"r.yaml": "include: {a: 1}\n"}, "field `include`"),
])
def test_bad_includes_are_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=re.escape(expected)):
        load_recipe(tmp_path / "r.yaml")


def test_paper_recipes_are_the_papers_setting() -> None:
    from sftkey_lora.rundir.layout import RunLayout
    from sftkey_lora.train.plan import plan_run

    runnable = [p for p in (ROOT / "recipes" / "paper").glob("*.yaml") if not p.name.startswith("_")]
    recipes = [load_recipe(p) for p in runnable]
    pairs = {(r.model.name_or_path, r.data.source) for r in recipes}
    assert {("Qwen/Qwen2.5-7B", s) for s in ("gsm8k", "openbookqa", "openr1_math", "cot_collection")} <= pairs
    assert len({model for model, source in pairs if source == "gsm8k"}) == 5
    for recipe in recipes:
        plan = plan_run(recipe, RunLayout(Path("/nonexistent"))).as_json(recipe)
        assert [stage["name"] for stage in plan["stages"]] == ["stage1", "stage2"]
        for stage in plan["stages"]:
            args = stage["training_args"]
            assert stage["lora"] is None and stage["precision"] == "bf16"
            assert (args["learning_rate"], args["weight_decay"], args["num_train_epochs"]) == (5e-6, 0.1, 3)
            assert args["per_device_train_batch_size"] == 32 and args["bf16"] is True
            assert args["warmup_steps"] == pytest.approx(0.5 / 3, abs=1e-3)  # half an epoch of three
        assert plan["stages"][1]["base"].endswith("/stage1")  # stage 2 continues from stage 1
    assert len({r.name for r in recipes}) == len(recipes)


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.name)
def test_launch_configs_are_accelerate_configs_for_8_gpus(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes == 8 and config.mixed_precision == "bf16" and not config.use_cpu
    sharded = config.fsdp_config.get("fsdp_sharding_strategy") == "FULL_SHARD" or (
        config.deepspeed_config.get("zero_stage") == 3)
    assert sharded
    command = f"# accelerate launch --config_file recipes/accelerate/{path.name} -m sftkey_lora run"
    assert path.read_text().startswith(command)
    assert len(LAUNCH_CONFIGS) == 2


def test_qlora_recipes_cover_five_models_on_four_datasets() -> None:
    runnable = [p for p in (ROOT / "recipes" / "qlora").glob("*.yaml") if not p.name.startswith("_")]
    models = {load_recipe(p).model.name_or_path for p in runnable}
    sources = {load_recipe(p).data.source for p in runnable}
    assert len(runnable) == 20 and len(models) == 5
    assert sources == {"gsm8k", "openbookqa", "openr1_math", "cot_collection"}
    for path in runnable:
        head = path.read_text().splitlines()[:2]
        assert head[0] == f"# sftkey-lora run recipes/qlora/{path.name}"
        assert "GB" in head[1]


def test_checks_across_sections_name_both_fields() -> None:
    from sftkey_lora.recipe import validate_recipe

    with pytest.raises(UserError, match=r"^recipe: merge.base: nf4 .* model.quantization: nf4$"):
        validate_recipe({"merge": {"base": "nf4"}, "model": {"quantization": "none"}})


def test_eval_tasks_follow_the_data_source() -> None:
    assert Recipe().eval_tasks() == ["sftkey_synthetic"]
    assert Recipe.model_validate({"data": {"source": "gsm8k"}}).eval_tasks() == ["sftkey_gsm8k"]
    assert Recipe.model_validate({"eval": {"tasks": ["sftkey", "sftkey_synthetic"]}}).eval_tasks() == [
        "sftkey", "sftkey_synthetic"]
    assert Recipe.model_validate({"eval": {"tasks": []}}).eval_tasks() == []
    jsonl = {"source": "jsonl", "path": str(QUICKSTART)}  # any file that exists
    assert Recipe.model_validate({"data": jsonl}).eval_tasks() == []  # no test file of the user's
    assert Recipe.model_validate({"data": jsonl, "eval": {"path": str(QUICKSTART)}}).eval_tasks() == [
        "sftkey_jsonl"]
