"""What an evaluation writes: metrics.json and samples/ as one unit."""

from __future__ import annotations

import json

import pytest

from sftkey_lora.evaluation import harness
from sftkey_lora.rundir.layout import RunLayout


def test_metrics_never_stand_beside_samples_of_another_evaluation(tmp_path, monkeypatch) -> None:
    layout = RunLayout(tmp_path)
    harness._write(layout, {"t": {"acc": 1.0}}, {"t": [{"doc_id": 0, "acc": 1.0}]})
    assert json.loads(layout.metrics_file.read_text()) == {"t": {"acc": 1.0}}

    def killed(tmp, final) -> None:  # stopped before the new samples are in place
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "replace_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        harness._write(layout, {"t": {"acc": 0.0}}, {"t": [{"doc_id": 0, "acc": 0.0}]})
    # The old samples are whole, and no metrics.json claims them for the new evaluation.
    assert not layout.metrics_file.exists()
    assert json.loads(layout.samples_file("t").read_text()) == {"doc_id": 0, "acc": 1.0}
