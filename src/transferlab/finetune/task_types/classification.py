"""Classification and pair-classification: one class label per text or sentence pair.

Inputs are ``[CLS] A [SEP]`` (pairs: ``[CLS] A [SEP] B [SEP]`` + segment ids), the
``classification`` head reads the pooled sequence vector, the loss is cross-entropy, predictions
are ``(label, probabilities)`` and the metrics accuracy, macro-F1 and Matthews correlation.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ...config import ModelConfig
from ...data.corpus import quote
from ...errors import DataError
from .base import TaskType, register_task_type, row_field, row_text

if TYPE_CHECKING:  # annotations only: finetune.config validates task types through this package
    from ..config import TaskSpec


def label_str(v: Any) -> str:
    """A class label read from a file as its name (``1.0`` -> ``"1"``, ``True`` -> ``"true"``)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


class Classification(TaskType):
    """One label per sequence: ``{"text": str, "label": str}`` (``"pair"`` too with a pair column)."""

    name = "classification"
    head = "classification"
    primary_metric = "accuracy"
    has_classes = True
    baselines = ("majority", "tfidf-logreg", "tfidf-svm")
    #: whether every example holds a second text (``[CLS] A [SEP] B [SEP]``)
    is_pair: ClassVar[bool] = False

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        ex: dict[str, Any] = {"text": row_text(row, cols["text"], where, "text")}
        if cols["pair"]:
            ex["pair"] = row_text(row, cols["pair"], where, "pair")
        ex["_where"] = where
        if cols["label"] is None:  # prediction input without labels
            return ex
        lab = row_field(row, cols["label"], where, "label")
        if lab is None or (isinstance(lab, str) and not lab.strip()):
            raise DataError(f"{where}: empty label in column {quote(cols['label'])}")
        if isinstance(lab, (dict, list)):
            raise DataError(f"{where}: label in column {quote(cols['label'])} must be a string or number, got {type(lab).__name__}")
        ex["label"] = label_str(lab)
        return ex

    @classmethod
    def metrics(cls, predictions, references, labels):
        from ...evaluation.metrics import classification_metrics

        return classification_metrics(predictions, references, labels)

    @classmethod
    def majority(cls, train):
        counts = collections.Counter(e["label"] for e in train)
        top = min(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0]  # ties by name: never by dict order
        return lambda examples: [top] * len(examples)

    @classmethod
    def line(cls, record):
        return f"{record['prediction']}\t{record['probabilities'][record['prediction']]:.4f}"

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.index = {lab: i for i, lab in enumerate(spec.labels)}
        self.pair = self.is_pair or bool(spec.columns.get("pair"))

    def head_settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {"num_labels": len(self.spec.labels), "pooling": self.spec.pooling}
        if self.spec.head_dropout is not None:
            s["dropout"] = self.spec.head_dropout
        return s

    def _ids(self, examples: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int] | None]]:
        a = self.tok.encode_batch([e["text"] for e in examples])
        if self.pair:
            for k, e in enumerate(examples):
                if "pair" not in e:
                    raise DataError(f"{e.get('_where', f'example {k}')}: a pair task needs a second text ('pair')")
            b = self.tok.encode_batch([e["pair"] for e in examples])
            return [self.builder.pair(x, y, self.max_length) for x, y in zip(a, b)]
        return [self.builder.single(x, self.max_length, self.spec.truncation) for x in a]

    def target(self, ex: dict[str, Any], k: int) -> Any:
        """The training target of example ``k``: its class index."""
        lab = ex["label"]
        if lab not in self.index:
            raise DataError(f"{ex.get('_where', f'example {k}')}: label {lab!r} is not one of the model's labels "
                            f"({', '.join(self.spec.labels)})")
        return self.index[lab]

    def encode(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        feats = []
        for k, (ex, (ids, types)) in enumerate(zip(examples, self._ids(examples))):
            f: dict[str, Any] = {"input_ids": ids, "token_type_ids": types, "example": k}
            if train or "label" in ex:
                f["label"] = self.target(ex, k)
            feats.append(f)
        return feats

    def collate(self, feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().collate(feats)
        if "label" in feats[0]:
            batch["labels"] = torch.tensor([f["label"] for f in feats])
        return batch

    def loss_sum(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch).float(), batch["labels"], reduction="sum")

    def predict(self, model, examples, feats, batch_size, ctx, progress=None):
        probs: list[Any] = [None] * len(feats)
        for idx, logits in self._run_batches(model, feats, batch_size, ctx, progress):
            p = logits.softmax(-1).cpu().numpy()  # (B, K)
            for j, i in enumerate(idx):
                probs[i] = p[j]
        return [(self.spec.labels[int(p.argmax())], p) for p in probs]

    def plain(self, preds):
        return [p[0] for p in preds]

    @classmethod
    def reference(cls, ex):
        return ex["label"]

    def describe(self, pred, ex):
        label, p = pred
        return {"prediction": label, "probabilities": {lab: round(float(x), 6) for lab, x in zip(self.spec.labels, p)}}


class PairClassification(Classification):
    """One label per sentence pair: ``{"text": str, "pair": str, "label": str}``."""

    name = "pair-classification"
    is_pair = True
    default_columns = ("text", "pair", "label")
    input_fields = ("text", "pair")
    second_input = ("pair", "the second text")

    @classmethod
    def feature_texts(cls, ex):
        return ex["text"], ex["pair"]


register_task_type(Classification)
register_task_type(PairClassification)
