"""Hooks of the sftkey_* tasks (`!function utils.NAME`): thin wrappers over
`sftkey_lora.evaluation.tasks`. lm-eval calls `custom_dataset` with the task metadata."""

from sftkey_lora.evaluation.tasks import build_docs, process_results

__all__ = ["process_results"]


def _documents_of(task: str):
    def documents(**metadata):
        return build_docs(task, metadata)

    documents.__name__ = task.removeprefix("sftkey_")
    return documents


synthetic = _documents_of("sftkey_synthetic")
gsm8k = _documents_of("sftkey_gsm8k")
openbookqa = _documents_of("sftkey_openbookqa")
openr1_math = _documents_of("sftkey_openr1_math")
cot_collection = _documents_of("sftkey_cot_collection")
jsonl = _documents_of("sftkey_jsonl")
