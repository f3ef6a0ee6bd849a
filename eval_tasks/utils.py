"""Hooks of the sftkey_* tasks: thin wrappers over `sftkey_lora.evaluation.tasks`."""

from sftkey_lora.evaluation.tasks import build_docs, process_results

__all__ = ["process_results"]


def synthetic(**metadata):
    return build_docs("sftkey_synthetic", metadata)


def gsm8k(**metadata):
    return build_docs("sftkey_gsm8k", metadata)


def openbookqa(**metadata):
    return build_docs("sftkey_openbookqa", metadata)


def openr1_math(**metadata):
    return build_docs("sftkey_openr1_math", metadata)


def cot_collection(**metadata):
    return build_docs("sftkey_cot_collection", metadata)


def jsonl(**metadata):
    return build_docs("sftkey_jsonl", metadata)
