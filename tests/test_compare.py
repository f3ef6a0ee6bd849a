"""`sftkey-lora compare`: four strategies with one recipe's settings, tabled as the paper does."""

from __future__ import annotations

import json

import pytest

from sftkey_lora.compare import COMPARED, PAIRS, key_loss_history
from sftkey_lora.evaluation.report import results_table
from sftkey_lora.recipe import Recipe
from sftkey_lora.rundir.layout import RunLayout
from sftkey_lora.rundir.record import RunRecord
from tests.support import MERGED, QUICKSTART, stage_outcome

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
def test_compare_runs_every_strategy_and_writes_the_comparison(cli, tmp_path) -> None:
    out = tmp_path / "cmp"
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(out), *[f"--set={s}" for s in TINY])
    assert code == 0, err
    for strategy in COMPARED:
        run = json.loads((out / strategy / "run.json").read_text())
        assert run["recipe"]["strategy"] == strategy
        assert run["steps"]["eval"]["status"] == "complete"
        expected = Recipe.model_validate({**run["recipe"], "strategy": "sft"}).model_dump(mode="json")
        assert run["recipe"] == {**expected, "strategy": strategy}  # identical settings otherwise
    report = (out / "comparison.md").read_text()
    for strategy in COMPARED:
        assert f"| {strategy} |" in report
    assert (out / "comparison.png").stat().st_size > 1000 and (out / "key_loss.png").stat().st_size > 1000
    assert "sftkey_tag" in err and "| sft |" in err  # the table is printed too
    figures = json.loads((out / "comparison.json").read_text())
    assert set(figures["strategies"]) == set(COMPARED) and figures["seeds"] == [0]
    for strategy in COMPARED:  # the same figures as the run's own evaluation
        own = json.loads((out / strategy / "metrics.json").read_text())["sftkey_synthetic"]
        pooled = figures["strategies"][strategy]["sftkey_synthetic"]
        assert {key: pooled[key] for key in ("acc", "acc_se", "score", "score_se", "n")} == pytest.approx(
            {key: own[key] for key in ("acc", "acc_se", "score", "score_se", "n")})
    assert [(pair["a"], pair["b"]) for pair in figures["pairs"]] == PAIRS  # one task
    assert PAIRS[-1] == ("sftkey_tag", "sft_tag")  # stage 2's own effect
    for pair in figures["pairs"]:
        assert set(pair) == {"a", "b", "task", "n", "seeds", "delta_acc", "delta_score", "p_mcnemar",
                             "ci_acc", "ci_score", "verdict"}
        assert 0 <= pair["p_mcnemar"] <= 1 and pair["ci_acc"][0] <= pair["delta_acc"] <= pair["ci_acc"][1]
        assert f"| {pair['a']} − {pair['b']} | synthetic | 2 | 1 |" in report


@pytest.mark.slow
def test_compare_over_seeds_trains_each_seed_once_and_pools_them(cli, tmp_path) -> None:
    out = tmp_path / "cmp"
    tiny = [f"--set={s}" for s in [*TINY, "eval.limit=3"]]
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(out), "--seeds", "3,4", *tiny)
    assert code == 0, err
    for strategy in COMPARED:
        for seed in (3, 4):  # every stage of the seed's run trained from it
            recipe = json.loads((out / f"seed-{seed}" / strategy / "run.json").read_text())["recipe"]
            stages = [stage["training"]["seed"] for stage in recipe["stages"].values()]
            assert recipe["training"]["seed"] == seed and stages == [seed] * len(stages)
    figures = json.loads((out / "comparison.json").read_text())
    assert figures["seeds"] == [3, 4]
    for strategy in COMPARED:
        pooled = figures["strategies"][strategy]["sftkey_synthetic"]
        runs = [json.loads((out / f"seed-{seed}" / strategy / "metrics.json").read_text())["sftkey_synthetic"]
                for seed in (3, 4)]
        assert pooled["acc_seeds"] == pytest.approx([run["acc"] for run in runs])
        assert pooled["acc"] == pytest.approx(sum(run["acc"] for run in runs) / 2) and pooled["seeds"] == 2
    assert {pair["seeds"] for pair in figures["pairs"]} == {2}
    report = (out / "comparison.md").read_text()
    assert "mean over 2 training seeds (3, 4)" in report and "[sd " in report
    # Resumable: a rerun trains nothing and writes the same figures.
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(out), "--seeds", "3,4", *tiny)
    assert code == 0 and "stage1:" not in err
    assert json.loads((out / "comparison.json").read_text()) == figures


def test_compare_needs_tasks_to_evaluate_on(cli, tmp_path) -> None:
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(tmp_path / "cmp"), "--set=eval.tasks=[]")
    assert code == 2 and "eval.tasks: a comparison is made of evaluations" in err
    assert not (tmp_path / "cmp").exists()
