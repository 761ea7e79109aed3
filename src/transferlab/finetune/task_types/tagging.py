"""BIO tagging: one tag per word, labelled on the word's first sub-word, BIO Viterbi decoding.

``{"tokens": [str], "tags": [str]}`` examples (CoNLL-style files or JSONL); the
``token_classification`` head scores every position, later sub-words get -100 (ignored), and
the entity-level precision / recall / F1 score the decoded tags.
"""

from __future__ import annotations

import bisect
import collections
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...config import ModelConfig
from ...data.corpus import names, quote
from ...errors import DataError
from ...objectives.losses import lm_cross_entropy
from ..inputs import IGNORE, pad_to
from .base import TaskType, register_task_type, row_field

if TYPE_CHECKING:  # annotations only: finetune.config validates task types through this package
    from ..config import TaskSpec

#: a BIO tag: O, B-TYPE or I-TYPE
BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")


def tag_order(tags: Sequence[str] | set[str]) -> list[str]:
    """``O`` first, then ``B-``/``I-`` of each type in sorted order."""
    tags = set(tags) | {"O"}
    # every type gets both its B- and I- tag so the BIO decoder can follow any valid path
    types = sorted({t[2:] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def bio_transitions(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(allowed_start (K,), allowed (K, K))`` for BIO: ``I-X`` only after ``B-X`` or ``I-X``."""
    K = len(labels)
    start = np.ones(K, dtype=bool)
    allowed = np.ones((K, K), dtype=bool)
    for j, t in enumerate(labels):
        if t.startswith("I-"):
            start[j] = False
            for i, s in enumerate(labels):
                allowed[i, j] = s[2:] == t[2:] and s[:2] in ("B-", "I-")
    return start, allowed


def bio_viterbi(logp: np.ndarray, start: np.ndarray, allowed: np.ndarray) -> list[int]:
    """Most likely tag path under BIO constraints.

    Args:
        logp: (n, K) per-word log-probabilities.
        start, allowed: from :func:`bio_transitions`.

    Returns:
        n tag indices; never ``I-X`` after ``O``/another type or at the start.
    """
    n, K = logp.shape
    if n == 0:
        return []
    neg = -1e30
    trans = np.where(allowed, 0.0, neg)  # (K, K) from -> to
    score = np.where(start, logp[0], neg)
    back = np.zeros((n, K), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + trans  # (K_from, K_to)
        back[t] = cand.argmax(0)
        score = cand.max(0) + logp[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]



class Tagging(TaskType):
    """Words joined by spaces, tokenised with offsets; each word's label sits on its
    first sub-word, later sub-words get -100 (ignored), and a word's prediction is read there."""

    name = "tagging"
    head = "token_classification"
    primary_metric = "f1"
    default_columns = ("tokens", None, "tags")
    input_fields = ("tokens",)
    label_fields = ("tags",)
    reads_conll = True
    baselines = ("majority",)  # a unigram tagger

    @classmethod
    def matches_fields(cls, fields):
        return {"tokens", "tags"} <= fields

    @classmethod
    def convert(cls, row: dict[str, Any], cols: dict[str, str | None], where: str) -> dict[str, Any]:
        toks = row_field(row, cols["text"], where, "tokens")
        if isinstance(toks, str):
            toks = toks.split()
        if cols["label"] is None:
            if not isinstance(toks, list) or not toks or not all(isinstance(t, str) and t.strip() for t in toks):
                raise DataError(f"{where}: tokens must be a non-empty list of non-empty strings")
            return {"tokens": toks, "_where": where}
        tags = row_field(row, cols["label"], where, "tags")
        if isinstance(tags, str):
            tags = tags.split()
        if not isinstance(toks, list) or not isinstance(tags, list) or not all(isinstance(t, str) for t in toks + tags):
            raise DataError(f"{where}: tokens and tags must be lists of strings (or space-separated strings)")
        if not toks:
            raise DataError(f"{where}: empty token list in column {quote(cols['text'])}")
        if len(toks) != len(tags):
            raise DataError(f"{where}: {len(toks)} tokens but {len(tags)} tags")
        if any(not t.strip() for t in toks):
            raise DataError(f"{where}: an empty token in column {quote(cols['text'])}")
        for t in tags:
            if not BIO_TAG.match(t):
                raise DataError(f"{where}: tag {quote(t)} is not a BIO tag (expected O, B-TYPE or I-TYPE)")
        return {"tokens": toks, "tags": tags, "_where": where}

    @classmethod
    def label_list(cls, examples):
        return tag_order({t for e in examples for t in e["tags"]})

    @classmethod
    def order_labels(cls, labels):
        return tag_order(labels)

    @classmethod
    def check_labels(cls, examples, labels, train_name):
        known = set(labels)
        for k, e in enumerate(examples):
            for t in e["tags"]:
                if t not in known:
                    raise DataError(
                        f"{e.get('_where', f'sentence {k}')}: tag {quote(t)} never appears in the training data "
                        f"({train_name}); known tags: {names(sorted(known))}"
                    )

    @classmethod
    def tokenizer_texts(cls, ex):
        return [" ".join(ex["tokens"])]

    @classmethod
    def feature_texts(cls, ex):
        return " ".join(ex["tokens"]), None

    @classmethod
    def from_text(cls, text, where):
        return {"tokens": text.split()}

    @classmethod
    def line(cls, record):
        return " ".join(f"{w}/{t}" for w, t in zip(record["tokens"], record["prediction"]))

    @classmethod
    def metrics(cls, predictions, references, labels):
        from ...evaluation.metrics import tagging_metrics

        return tagging_metrics(predictions, references)

    @classmethod
    def majority(cls, train):
        """Each word's most frequent training tag (case-folded), ``O`` for unseen words: a unigram
        tagger, in the spirit of the CoNLL-2003 baseline that tags entities seen in training."""
        per_word: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for e in train:
            for w, t in zip(e["tokens"], e["tags"]):
                per_word[w.lower()][t] += 1
        # ties broken by tag name so the result never depends on dict order
        best = {w: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for w, c in per_word.items()}
        return lambda examples: [[best.get(w.lower(), "O") for w in e["tokens"]] for e in examples]

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.index = {t: i for i, t in enumerate(spec.labels)}
        self.trans = bio_transitions(spec.labels)

    def head_settings(self):
        s: dict[str, Any] = {"num_labels": len(self.spec.labels)}
        if self.spec.head_dropout is not None:
            s["dropout"] = self.spec.head_dropout
        return s

    def encode(self, examples, train):
        texts, starts = [], []
        for ex in examples:
            pos, st = 0, []
            for w in ex["tokens"]:
                st.append(pos)
                pos += len(w) + 1
            texts.append(" ".join(ex["tokens"]))
            starts.append(st)
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True,
                       return_attention_mask=False, return_token_type_ids=False)
        budget = max(1, self.max_length - self.builder.n_single)
        feats = []
        for k, ex in enumerate(examples):
            ids, offs, st, text = enc["input_ids"][k], enc["offset_mapping"][k], starts[k], texts[k]
            n_words = len(ex["tokens"])
            first = [-1] * n_words  # position (in the final sequence) of each word's first sub-word
            word_of_tok = []
            for s, e in offs:
                while s < e and text[s].isspace():  # byte-level BPE offsets include the leading space
                    s += 1
                word_of_tok.append(bisect.bisect_right(st, s) - 1 if e > s else -1)
            ids, word_of_tok = ids[:budget], word_of_tok[:budget]
            seq, types = self.builder.single(ids, self.max_length)
            base = len(self.builder.prefix)
            labels = [IGNORE] * len(seq)
            tags = ex.get("tags")
            for t, w in enumerate(word_of_tok):
                if w >= 0 and first[w] < 0:
                    first[w] = base + t
                    if tags is not None:
                        if tags[w] not in self.index:
                            raise DataError(f"{ex.get('_where', f'sentence {k}')}: tag {tags[w]!r} is not one of the "
                                            f"model's tags ({', '.join(self.spec.labels)})")
                        labels[base + t] = self.index[tags[w]]
            f = {"input_ids": seq, "token_type_ids": types, "first": first, "example": k}
            if tags is not None:
                f["labels"] = labels
            elif train:
                raise DataError(f"{ex.get('_where', f'sentence {k}')}: no tags")
            feats.append(f)
        return feats

    def collate(self, feats):
        batch = super().collate(feats)
        if "labels" in feats[0]:
            batch["labels"] = pad_to([f["labels"] for f in feats], IGNORE)
        return batch

    def loss_sum(self, model, batch):
        logits = self.logits(model, batch)  # (B, T, K)
        return lm_cross_entropy(logits, batch["labels"], reduction="sum")  # fp32, -100 (IGNORE) skipped

    def loss_count(self, batch):
        return int((batch["labels"] != IGNORE).sum())  # labelled first sub-words

    def predict(self, model, examples, feats, batch_size, ctx, progress=None):
        out: list[Any] = [None] * len(feats)
        O = self.index.get("O", 0)
        for idx, logits in self._run_batches(model, feats, batch_size, ctx, progress):
            logp = logits.log_softmax(-1).cpu().numpy()  # (B, T, K)
            for j, i in enumerate(idx):
                first = feats[i]["first"]
                known = [w for w, t in enumerate(first) if t >= 0]
                rows = logp[j, [first[w] for w in known]]  # (n_known, K)
                if self.spec.bio_decoding == "viterbi":
                    path = bio_viterbi(rows, *self.trans)
                else:
                    path = rows.argmax(-1).tolist() if len(known) else []
                tags = [self.spec.labels[O]] * len(first)  # words cut off by max_length: O
                for w, t in zip(known, path):
                    tags[w] = self.spec.labels[t]
                out[i] = tags
        return out

    @classmethod
    def reference(cls, ex):
        return list(ex["tags"])

    def describe(self, pred, ex):
        from ...evaluation.metrics import bio_chunks

        toks = ex["tokens"]
        ents = [{"type": t, "start": s, "end": e, "text": " ".join(toks[s:e])} for t, s, e in bio_chunks(pred)]
        return {"tokens": list(toks), "prediction": pred, "entities": ents}



register_task_type(Tagging)
