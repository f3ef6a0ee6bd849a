"""`sftkey-lora compare`: four strategies with one recipe's settings, tabled as the paper does."""

from __future__ import annotations

import json

import pytest

from sftkey_lora.comparison import COMPARED, PAIRS, key_loss_history
from sftkey_lora.evaluation.report import results_table
from sftkey_lora.recipe import Recipe, load_recipe
from sftkey_lora.rundir.layout import CompareLayout, RunLayout
from sftkey_lora.rundir.record import RunRecord
from tests.support import MERGED, QUICKSTART, stage_outcome

pytestmark = pytest.mark.takes(150)

TINY = ["data.synthetic.n_train=40", "data.holdout=4", "format.system_prompt=", "training.batch_size=8",
        "training.logging_steps=1", "training.max_steps=2", "eval.limit=2", "eval.max_gen_toks=32"]


def test_table_gives_the_average_and_the_change_against_the_baseline() -> None:
    results = {"sft": {"sftkey_a": {"score": 0.50}, "sftkey_b": {"score": 0.70}},
               "sftkey_tag": {"sftkey_a": {"score": 0.60}, "sftkey_b": {"score": 0.70}}}
    lines = results_table(results, "score", baseline="sft").splitlines()
    assert lines[0] == "| | a | b | average |"
    assert lines[2] == "| sft | 0.500 | 0.700 | 0.600 |"
    assert lines[3] == "| sftkey_tag | 0.600 (+20.0%) | 0.700 (+0.0%) | 0.650 (+8.3%) |"


def test_table_of_several_seeds_gives_their_spread() -> None:
    def task(seeds: list[float], se: float) -> dict:
        return {"score": sum(seeds) / len(seeds), "score_se": se, "score_seeds": seeds}

    results = {"sft": {"sftkey_a": task([0.4, 0.6], 0.03), "sftkey_b": task([0.6, 0.6], 0.04)}}
    row = results_table(results, "score").splitlines()[2]
    # The average's sd is that of each seed's average (0.5, 0.6), its se the tasks' combined.
    assert row == "| sft | 0.500 ± 0.030 [sd 0.141] | 0.600 ± 0.040 [sd 0.000] | 0.550 ± 0.025 [sd 0.071] |"


def test_key_loss_history_puts_the_stages_in_sequence(tmp_path) -> None:
    stage1 = stage_outcome().model_copy(update={"log_history": [
        {"step": 0, "heldout_key_loss": 9.0}, {"step": 5, "loss": 1.0},
        {"step": 10, "heldout_key_loss": 3.0}]})
    stage2 = stage_outcome().model_copy(update={"log_history": [
        {"step": 0, "heldout_key_loss": 3.0}, {"step": 4, "heldout_key_loss": 1.0}]})
    record = RunRecord(RunLayout(tmp_path), {"steps": {}})
    for name, outcome in (("stage1", stage1), ("merge", MERGED), ("stage2", stage2)):
        record.complete(name, outcome)
    assert key_loss_history(record) == [(0, 9.0), (10, 3.0), (10, 3.0), (14, 1.0)]


@pytest.mark.slow
def test_compare_trains_every_strategy_once_per_seed_and_pools_them(cli, tmp_path) -> None:
    out = tmp_path / "cmp"
    tiny = [f"--set={s}" for s in [*TINY, "eval.limit=3"]]
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(out), "--seeds", "3,4", *tiny)
    assert code == 0, err
    for strategy in COMPARED:
        for seed in (3, 4):  # every stage of the seed's run trained from it, all else the same
            run = json.loads((out / f"seed-{seed}" / strategy / "run.json").read_text())
            recipe = run["recipe"]
            stages = [stage["training"]["seed"] for stage in recipe["stages"].values()]
            assert recipe["training"]["seed"] == seed and stages == [seed] * len(stages)
            assert recipe["strategy"] == strategy and run["steps"]["eval"]["status"] == "complete"
            expected = Recipe.model_validate({**recipe, "strategy": "sft"}).model_dump(mode="json")
            assert recipe == {**expected, "strategy": strategy}  # identical settings otherwise
    figures = json.loads((out / "comparison.json").read_text())
    assert figures["seeds"] == [3, 4] and set(figures["strategies"]) == set(COMPARED)
    for strategy in COMPARED:  # the seeds' own evaluations, pooled
        pooled = figures["strategies"][strategy]["sftkey_synthetic"]
        runs = [json.loads((out / f"seed-{seed}" / strategy / "metrics.json").read_text())["sftkey_synthetic"]
                for seed in (3, 4)]
        assert pooled["acc_seeds"] == pytest.approx([run["acc"] for run in runs])
        assert pooled["score_seeds"] == pytest.approx([run["score"] for run in runs])
        assert pooled["acc"] == pytest.approx(sum(run["acc"] for run in runs) / 2)
        assert (pooled["seeds"], pooled["n"]) == (2, 3)
    assert [(pair["a"], pair["b"]) for pair in figures["pairs"]] == PAIRS  # one task
    assert PAIRS[-1] == ("sftkey_tag", "sft_tag")  # stage 2's own effect
    report = (out / "comparison.md").read_text()
    assert "mean over 2 training seeds (3, 4)" in report and "[sd " in report
    for strategy in COMPARED:
        assert f"| {strategy} |" in report
    assert (out / "comparison.png").stat().st_size > 1000 and (out / "key_loss.png").stat().st_size > 1000
    assert "sftkey_tag" in err and "| sft |" in err  # the report is printed too
    logged = (out / "compare.log").read_text()  # the comparison's messages, and each run's in its run.log
    assert "== key_tag, seed 4" in logged and "| sft |" in logged
    assert "stage1 step" in (out / "seed-4" / "key_tag" / "run.log").read_text()
    for seed in (3, 4):  # sftkey_tag's stage 1 is sft_tag's, trained once
        alone, method = (out / f"seed-{seed}" / name for name in ("sft_tag", "sftkey_tag"))
        adapter = "stage1/adapter_model.safetensors"
        assert (method / adapter).read_bytes() == (alone / adapter).read_bytes()
        steps = json.loads((method / "run.json").read_text())["steps"]
        assert steps["stage1"]["shared_from"] == str(alone / "stage1")
        assert steps["stage1"]["log_history"] == json.loads((alone / "run.json").read_text())[
            "steps"]["stage1"]["log_history"]
        assert "stage1 step" not in (method / "run.log").read_text()  # never trained there
        assert f"{method}: stage1 is {alone / 'stage1'}, trained once" in logged
    for pair in figures["pairs"]:
        assert set(pair) == {"a", "b", "task", "n", "seeds", "delta_acc", "delta_score",
                             "ci_acc", "ci_score", "verdict", "p_value", "p_holm", "test"}
        assert 0 <= pair["p_value"] <= pair["p_holm"] <= 1 and "p_mcnemar" not in pair  # two seeds
        assert pair["ci_acc"][0] <= pair["delta_acc"] <= pair["ci_acc"][1]
        assert f"| {pair['a']} − {pair['b']} | synthetic | 3 | 2 |" in report
    # Resumable: a rerun trains nothing and writes the same figures.
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(out), "--seeds", "3,4", *tiny)
    assert code == 0 and "stage1:" not in err
    assert json.loads((out / "comparison.json").read_text()) == figures


def test_one_seed_keeps_a_run_per_strategy_and_several_get_a_folder_each(tmp_path) -> None:
    layout = CompareLayout(tmp_path)
    assert layout.run("sft").root == tmp_path / "sft"  # a comparison without --seeds
    assert layout.run("sft", 2).root == tmp_path / "seed-2" / "sft"
    recipe = load_recipe(QUICKSTART).with_seed(7)
    assert {recipe.stage(name).training.seed for name in ("stage1", "stage2")} == {7}
    assert recipe.data.synthetic.seed == 0  # the data, and so the test items, stay


def test_compare_needs_tasks_to_evaluate_on(cli, tmp_path) -> None:
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(tmp_path / "cmp"), "--set=eval.tasks=[]")
    assert code == 2 and "eval.tasks: a comparison is made of evaluations" in err
    assert not (tmp_path / "cmp").exists()


def test_the_report_names_the_recipes_own_tags(tmp_path) -> None:
    from sftkey_lora.comparison import comparison_markdown

    recipe = load_recipe(QUICKSTART, ["format.tag_strings.think_open=<think>",
                                      "format.tag_strings.think_close=</think>"])
    report = comparison_markdown(recipe, {}, {}, {}, CompareLayout(tmp_path), [], None)
    assert "Key tokens follow `</think>`" in report and "</Thinking>" not in report
