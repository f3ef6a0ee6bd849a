"""Evaluation: lm-eval tasks (`eval_tasks/`), their metrics, the optional judge, reports."""
