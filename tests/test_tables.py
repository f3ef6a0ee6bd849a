"""Every list of strategies, stages, sources and tasks is derived from one table, and agrees
with what lies outside Python: the lm-eval YAML files and their hooks."""

from __future__ import annotations

import importlib.util
import re
from typing import get_args

from sftkey_lora.bench.contest import STAGE_LABELS
from sftkey_lora.comparison import COMPARED
from sftkey_lora.data import SOURCES, task_name
from sftkey_lora.evaluation.harness import tasks_dir
from sftkey_lora.evaluation.tasks import TASKS
from sftkey_lora.recipe import Recipe, Source, StageName, Strategy
from sftkey_lora.rundir.layout import EVAL_STEP, MERGE_STEP
from sftkey_lora.rundir.outcomes import OUTCOMES
from sftkey_lora.strategies import BASELINE, METHOD, STAGE_NAMES, STRATEGIES


def test_strategies_and_stages() -> None:
    assert get_args(Strategy) == tuple(STRATEGIES) == COMPARED
    assert COMPARED[0] == BASELINE and Recipe().strategy == METHOD
    assert get_args(StageName) == STAGE_NAMES == ("stage1", "stage2")
    assert STAGE_LABELS == {stage.name: stage.labels for stage in STRATEGIES[METHOD].stages}
    assert set(OUTCOMES) == {*STAGE_NAMES, MERGE_STEP, EVAL_STEP}


def test_sources_and_their_tasks() -> None:
    assert get_args(Source) == tuple(SOURCES)
    assert TASKS == {task_name(source): source for source in SOURCES}
    for source, spec in SOURCES.items():
        data = {"source": source, "path": __file__} if spec.row is not None else {"source": source}
        recipe = Recipe.model_validate({"data": data, "eval": {"path": __file__}})
        assert recipe.eval_tasks() == [task_name(source)]  # `auto` is the source's own task


def test_every_task_has_a_yaml_whose_hook_exists() -> None:
    """lm-eval skips a task whose YAML names a missing hook, without a word."""
    folder = tasks_dir()
    spec = importlib.util.spec_from_file_location("sftkey_task_hooks", folder / "utils.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert {path.stem for path in folder.glob("sftkey_*.yaml")} == set(TASKS)
    for task, source in TASKS.items():
        text = (folder / f"{task}.yaml").read_text()
        assert f"task: {task}\n" in text
        named = re.search(r"custom_dataset: !function utils\.(\w+)", text)[1]
        assert named == source and callable(getattr(hooks, named))
