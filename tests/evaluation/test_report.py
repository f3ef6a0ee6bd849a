"""report.md of an evaluation: the recipe's alpha in its score, every task, every plot; and
reports are written without loading torch or transformers."""

from __future__ import annotations

import subprocess
import sys

from sftkey_lora.evaluation.report import write_run_report
from sftkey_lora.rundir.layout import RunLayout


def test_reports_and_plots_import_neither_torch_nor_transformers() -> None:
    code = ("import sys, sftkey_lora.evaluation.report, sftkey_lora.plots, sftkey_lora.rundir.outcomes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_report_gives_the_score_with_the_recipes_alpha(tmp_path) -> None:
    out = RunLayout(tmp_path)
    metrics = {"sftkey_a": {"acc": 0.5, "fmt": 1.0, "score": 0.75, "n": 4},
               "sftkey_b": {"acc": 1.0, "fmt": 0.0, "score": 0.5, "n": 2}}
    write_run_report(out, "mine", metrics, "Model: x.", alpha=0.5, training="stage1  complete")
    text = out.report_file.read_text()
    assert "## Score = 0.5·acc + 0.5·fmt" in text
    assert "| mine | 0.750 | 0.500 | 0.625 |" in text  # per task, then the average
    with_errors = {"sftkey_a": {**metrics["sftkey_a"], "score_se": 0.3},
                   "sftkey_b": {**metrics["sftkey_b"], "score_se": 0.4}}
    write_run_report(out, "mine", with_errors, "Model: x.", alpha=0.5)
    assert "| mine | 0.750 ± 0.300 | 0.500 ± 0.400 | 0.625 ± 0.250 |" in out.report_file.read_text()
    assert "Per task: sftkey_a n=4, sftkey_b n=2" in text and "stage1  complete" in text
    assert out.eval_plot.stat().st_size > 1000 and "![eval_metrics.png](plots/eval_metrics.png)" in text
