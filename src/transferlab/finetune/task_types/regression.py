"""Regression: one number per text or pair, a 1-output classification head, MSE on targets
standardised with the training mean and deviation (predictions are mapped back)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...config import ModelConfig
from ...data.corpus import quote
from ...errors import DataError
from .base import TaskType, register_task_type, row_field, row_text
from .classification import Classification

if TYPE_CHECKING:  # annotations only: finetune.config validates task types through this package
    from ..config import TaskSpec


class Regression(Classification):
    """``{"text": str, ["pair": str,] "label": float}``."""

    name = "regression"
    primary_metric = "pearson"
    has_classes = False
    baselines = ("majority",)  # the training mean

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        ex: dict[str, Any] = {"text": row_text(row, cols["text"], where, "text")}
        if cols["pair"]:
            ex["pair"] = row_text(row, cols["pair"], where, "pair")
        ex["_where"] = where
        if cols["label"] is None:
            return ex
        lab = row_field(row, cols["label"], where, "label")
        try:
            y = float(lab)
            if isinstance(lab, bool) or not math.isfinite(y):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{where}: regression label {quote(lab)} in column {quote(cols['label'])} is not a finite number") from None
        ex["label"] = y
        return ex

    @classmethod
    def fit_spec(cls, spec: TaskSpec, train: Sequence[dict[str, Any]]) -> None:
        y = np.array([float(e["label"]) for e in train], dtype=np.float64)
        spec.label_mean = float(y.mean())
        spec.label_std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0

    @classmethod
    def metrics(cls, predictions, references, labels):
        from ...evaluation.metrics import regression_metrics

        return regression_metrics(predictions, references)

    @classmethod
    def majority(cls, train):
        mean = float(np.mean([e["label"] for e in train]))
        return lambda examples: [mean] * len(examples)

    @classmethod
    def line(cls, record):
        return f"{record['prediction']:.4f}"

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.pair = bool(spec.columns.get("pair"))

    def head_settings(self) -> dict[str, Any]:
        return dict(super().head_settings(), num_labels=1)

    def target(self, ex, k):
        return (float(ex["label"]) - self.spec.label_mean) / self.spec.label_std

    def collate(self, feats):
        batch = TaskType.collate(self, feats)
        if "label" in feats[0]:
            batch["labels"] = torch.tensor([f["label"] for f in feats], dtype=torch.float32)
        return batch

    def loss_sum(self, model, batch):
        return F.mse_loss(self.logits(model, batch).float().squeeze(-1), batch["labels"], reduction="sum")

    def predict(self, model, examples, feats, batch_size, ctx, progress=None):
        out: list[Any] = [None] * len(feats)
        for idx, logits in self._run_batches(model, feats, batch_size, ctx, progress):
            y = (logits.squeeze(-1) * self.spec.label_std + self.spec.label_mean).cpu().tolist()
            for j, i in enumerate(idx):
                out[i] = float(y[j])
        return out

    def plain(self, preds):
        return preds

    @classmethod
    def reference(cls, ex):
        return float(ex["label"])

    def describe(self, pred, ex):
        return {"prediction": pred}


register_task_type(Regression)
