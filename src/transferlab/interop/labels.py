"""Label names that clients other than transferlab read beside the weights.

``id2label`` / ``label2id`` (from the fine-tuning task) let ``pipeline("text-classification")``
print ``positive`` instead of ``LABEL_1``, and ``token-classification`` with
``aggregation_strategy="simple"`` group ``B-``/``I-`` tags into entities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


__all__ = ["label_config", "labels_of", "LABEL_HEADS"]

# heads whose outputs are named classes (the rest: spans, tokens of the vocabulary, numbers)
LABEL_HEADS = ("classification", "token_classification")

def label_config(labels: Sequence[str] | None) -> dict[str, Any]:
    """``{"id2label": {"0": name, ...}, "label2id": {name: 0, ...}}`` as transformers writes them.

    Args:
        labels: class names or BIO tags, index = logit; empty or None for tasks without names.

    Returns:
        The two maps, or ``{}`` when there are no (distinct) names.
    """
    labels = [str(x) for x in (labels or [])]
    if not labels or len(set(labels)) != len(labels):
        return {}
    return {"id2label": {str(i): lab for i, lab in enumerate(labels)}, "label2id": {lab: i for i, lab in enumerate(labels)}}


def labels_of(directory: str | Path | None) -> list[str] | None:
    """Label names of a model folder: ``id2label`` in its ``config.json``, else ``task.json``'s
    labels (folders fine-tuned before config.json carried them). None when it has neither."""
    if directory is None:
        return None
    d = Path(directory)
    for name, pick in (("config.json", _from_id2label), ("task.json", _from_task)):
        p = d / name
        if not p.is_file():
            continue
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        labels = pick(raw) if isinstance(raw, dict) else None
        if labels:
            return labels
    return None


def _from_id2label(raw: dict[str, Any]) -> list[str] | None:
    m = raw.get("id2label")
    if not isinstance(m, dict) or not m:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in m.items())
    except (TypeError, ValueError):
        return None
    if [i for i, _ in items] != list(range(len(items))):
        return None
    return [v for _, v in items]


def _from_task(raw: dict[str, Any]) -> list[str] | None:
    labels = raw.get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) and labels else None


