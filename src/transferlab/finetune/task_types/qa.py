"""Extractive QA: the question, then a window of the context; start/end logits over the context
tokens; the best span over all windows of an example mapped back to characters (SQuAD-style
exact match and F1).

``{"context": str, "question": str, "answers": [str], "answer_starts": [int]}`` examples; long
contexts are read in overlapping windows (``doc_stride``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data.corpus import quote
from ...errors import ConfigError, DataError
from .base import TaskType, register_task_type, row_field, row_text


class QA(TaskType):
    """Extractive QA: ``question`` first, then a window of the ``context``; start/end logits over
    the context tokens; the best span (start <= end, at most ``max_answer_length`` tokens) over
    all windows of an example is mapped back to characters with the tokenizer's offsets."""

    name = "qa"
    head = "span"
    primary_metric = "f1"
    default_columns = ("context", "question", "answer")
    input_fields = ("context", "question")
    second_input = ("question", "and --text as the context")
    label_fields = ("answers",)

    @classmethod
    def matches_fields(cls, fields):
        return {"context", "question"} <= fields and bool({"answer", "answers"} & fields)

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        context = row_text(row, cols["text"], where, "context")
        question = row_text(row, cols["pair"], where, "question")
        name = cols["label"]
        if name is None:
            return {"context": context, "question": question, "_where": where}
        if name == "answer" and "answer" not in row and "answers" in row:
            name = "answers"
        raw = row_field(row, name, where, "answer")
        starts: list[Any]
        if isinstance(raw, dict):  # SQuAD / HF datasets: {"text": [...], "answer_start": [...]}
            t, s0 = raw.get("text", []), raw.get("answer_start", [])
            texts = t if isinstance(t, list) else [t]
            starts = s0 if isinstance(s0, list) else [s0]
        elif isinstance(raw, list) and raw and isinstance(raw[0], dict):  # [{"text", "answer_start"}]
            if not all(isinstance(a, dict) for a in raw):
                raise DataError(f"{where}: answers in column {quote(name)} must all be objects with 'text' and 'answer_start'")
            texts = [a.get("text") for a in raw]
            starts = [a.get("answer_start") for a in raw]
        else:
            texts = raw if isinstance(raw, list) else [raw]
            s = row.get("answer_start")
            starts = s if isinstance(s, list) else [s] * len(texts)
        if not texts or len(starts) != len(texts):
            raise DataError(f"{where}: expected an answer text and its answer_start")
        answers, offsets = [], []
        for text, start in zip(texts, starts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: empty answer in column {quote(name)}")
            if start is None:
                start = context.find(text)  # no offset given: the first occurrence
                if start < 0:
                    raise DataError(f"{where}: answer {quote(text)} does not occur in the context")
            if not isinstance(start, int) or isinstance(start, bool):
                raise DataError(f"{where}: answer_start must be an integer character offset, got {quote(start)}")
            if context[start : start + len(text)] != text:
                found = context[start : start + len(text)]
                raise DataError(f"{where}: answer {quote(text)} is not at answer_start {start} of the context (found {quote(found)})")
            answers.append(text)
            offsets.append(start)
        ex = {"context": context, "question": question, "answers": answers, "answer_starts": offsets, "_where": where}
        if "id" in row:
            ex["id"] = str(row["id"])
        return ex

    @classmethod
    def tokenizer_texts(cls, ex):
        return [ex["context"], ex["question"]]

    @classmethod
    def feature_texts(cls, ex):
        return ex["context"], None

    @classmethod
    def metrics(cls, predictions, references, labels):
        from ...evaluation.metrics import qa_metrics

        return qa_metrics(predictions, references)

    def encode(self, examples, train):
        spec = self.spec
        q_ids = self.tok.encode_batch([e["question"] for e in examples])
        enc = self.tok([e["context"] for e in examples], add_special_tokens=False, return_offsets_mapping=True,
                       return_attention_mask=False, return_token_type_ids=False)
        feats = []
        for k, ex in enumerate(examples):
            q = q_ids[k][: spec.max_query_length]
            ctx_ids, offs = enc["input_ids"][k], enc["offset_mapping"][k]
            budget = self.max_length - self.builder.n_pair - len(q)
            if budget < 8:
                raise ConfigError(f"max_length={self.max_length} leaves {budget} tokens for the context after the "
                                  f"question; raise --max-length")
            stride = min(spec.doc_stride, budget // 2)
            answer = None
            if ex.get("answers"):
                a0 = ex["answer_starts"][0]
                answer = (a0, a0 + len(ex["answers"][0]))
            start = 0
            while True:
                win = list(range(start, min(start + budget, len(ctx_ids))))
                seq, types = self.builder.pair(q, [ctx_ids[i] for i in win], self.max_length)
                base = len(self.builder.prefix) + len(q) + len(self.builder.mid)
                f: dict[str, Any] = {
                    "input_ids": seq, "token_type_ids": types, "example": k,
                    # character span of each sequence position that is context, else None
                    "offsets": [None] * base + [tuple(offs[i]) for i in win] + [None] * len(self.builder.suffix),
                }
                if answer is not None:
                    f["start"], f["end"] = self._positions(f["offsets"], *answer)
                feats.append(f)
                if start + budget >= len(ctx_ids):
                    break
                start += budget - stride
            if train and answer is None:
                raise DataError(f"{ex.get('_where', f'example {k}')}: no answer to train on")
        return feats

    @staticmethod
    def _positions(offsets: list[Any], a: int, b: int) -> tuple[int, int]:
        """Token span covering characters [a, b) inside this window, else (0, 0) (as in BERT's
        SQuAD code: windows without the whole answer point at the first position)."""
        s = e = None
        for i, o in enumerate(offsets):
            if o is None or o[1] <= o[0]:
                continue
            if s is None and o[1] > a:
                s = i
            if o[0] < b:
                e = i
        if s is None or e is None or e < s or offsets[s][0] > a or offsets[e][1] < b:
            return 0, 0
        return s, e

    def collate(self, feats):
        batch = super().collate(feats)
        if "start" in feats[0]:
            batch["start"] = torch.tensor([f["start"] for f in feats])
            batch["end"] = torch.tensor([f["end"] for f in feats])
        return batch

    def loss_sum(self, model, batch):
        logits = self.logits(model, batch).float()  # (B, T, 2)
        s, e = logits.unbind(-1)
        s = s.masked_fill(batch["attention_mask"] == 0, -1e4)
        e = e.masked_fill(batch["attention_mask"] == 0, -1e4)
        # per window: the mean of the start and end cross-entropies
        return 0.5 * (F.cross_entropy(s, batch["start"], reduction="sum") + F.cross_entropy(e, batch["end"], reduction="sum"))

    def predict(self, model, examples, feats, batch_size, ctx, progress=None, n_best: int = 20):
        best: list[tuple[float, str]] = [(-math.inf, "")] * len(examples)
        L = self.spec.max_answer_length
        for idx, logits in self._run_batches(model, feats, batch_size, ctx, None):
            lg = logits.cpu().numpy()  # (B, T, 2)
            for j, i in enumerate(idx):
                f = feats[i]
                offs = f["offsets"]
                valid = np.array([o is not None and o[1] > o[0] for o in offs] + [False] * (lg.shape[1] - len(offs)))
                s = np.where(valid, lg[j, :, 0], -np.inf)
                e = np.where(valid, lg[j, :, 1], -np.inf)
                top_s = np.argsort(-s)[:n_best]
                top_e = np.argsort(-e)[:n_best]
                k = f["example"]
                ctx_text = examples[k]["context"]
                for a in top_s:
                    if not np.isfinite(s[a]):
                        break
                    for b in top_e:
                        if not np.isfinite(e[b]) or b < a or b - a + 1 > L:
                            continue
                        score = float(s[a] + e[b])
                        if score > best[k][0]:
                            best[k] = (score, ctx_text[offs[a][0] : offs[b][1]].strip())
            if progress is not None:
                progress.update(len(idx))
        return [b[1] for b in best]

    @classmethod
    def reference(cls, ex):
        return list(ex["answers"])

    def describe(self, pred, ex):
        return {"prediction": pred}


register_task_type(QA)
