"""Task metrics by task type: :func:`compute_metrics` and :func:`primary_metric` ask the
registered task type (``finetune/task_types``), whose ``metrics`` call the scorers of
:mod:`transferlab.evaluation.metrics` (which knows no task types: it sits below finetune)."""

from __future__ import annotations

from typing import Any, Hashable, Sequence

from ..errors import DataError
from ..evaluation.metrics import LANGUAGE_MODELING
from .task_types import TaskType, get_task_type, task_type_names


def __getattr__(name: str) -> Any:
    if name == "TASK_TYPES":  # the registered task-type names, as registered so far
        return task_type_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _task_type(name: str) -> type[TaskType]:
    return get_task_type(name)


def primary_metric(task_type: str) -> str:
    """The metric a task is ranked by (the task type's ``primary_metric``; perplexity for LM rows).

    Args:
        task_type: a registered task type or ``"language-modeling"``.

    Returns:
        The key of that metric in :func:`compute_metrics`' result.

    Raises:
        ConfigError: an unknown task type.
    """
    if task_type == LANGUAGE_MODELING:
        return "perplexity"
    return _task_type(task_type).primary_metric


def compute_metrics(
    task_type: str,
    predictions: Sequence[Any],
    references: Sequence[Any],
    labels: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Score predictions against references for one task type (its ``metrics``).

    Args:
        task_type: a registered task type, e.g. ``classification`` / ``pair-classification``
            (label ids or names), ``regression`` (numbers), ``tagging`` (one list of BIO tags per
            sentence), ``qa`` (answer strings; a reference may be a list of acceptable answers)
            or ``seq2seq`` (generated and reference texts).
        predictions: one prediction per example.
        references: one reference per example, aligned with ``predictions``.
        labels: classification only: the full label set, so macro-F1 averages over every class
            even when some class is never predicted or absent from this split.

    Returns:
        ``{metric: value}``; classification: accuracy, macro_f1, mcc; regression: pearson,
        spearman, mse; tagging: precision, recall, f1 (entity level), token_accuracy; qa:
        exact_match, f1; seq2seq: rouge1, rouge2, rougeL.

    Raises:
        ConfigError: an unknown task type.
        DataError: predictions and references of different lengths, or no examples.
    """
    tt = _task_type(task_type)
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise DataError(
            f"{task_type} metrics: {len(predictions)} predictions but {len(references)} references"
        )
    if not predictions:
        raise DataError(f"{task_type} metrics: no examples to score")
    return tt.metrics(predictions, references, labels)
