"""Hooks of the sftkey_* tasks (`!function utils.NAME`): thin wrappers over
`sftkey_lora.evaluation.tasks`. lm-eval calls `custom_dataset` with the task metadata;
each task's hook is named after its data source (`sftkey_gsm8k.yaml` -> `utils.gsm8k`)."""

from sftkey_lora.evaluation.tasks import TASKS, build_docs, process_results

__all__ = ["process_results", *TASKS.values()]


def _documents_of(task: str):
    def documents(**metadata):
        return build_docs(task, metadata)

    documents.__name__ = TASKS[task]
    return documents


# One hook per task, from the one table of sources.
globals().update({source: _documents_of(task) for task, source in TASKS.items()})
