"""Heads wiring: how each task type becomes model inputs, a head, a loss and predictions.

One :class:`Wiring` subclass per task type:

=====================  ======================  =================================================
task type              head                    inputs -> targets
=====================  ======================  =================================================
classification         classification          ``[CLS] A [SEP]`` -> class (cross-entropy)
pair-classification    classification          ``[CLS] A [SEP] B [SEP]`` + segment ids -> class
regression             classification (1)      text or pair -> standardised number (MSE)
tagging                token_classification    words -> BIO tag on each word's first sub-word
                                               (other sub-words -100); Viterbi BIO decoding
qa                     span                    ``[CLS] question [SEP] context window [SEP]`` ->
                                               start/end token, mapped back to characters via
                                               the tokenizer's offsets; long contexts in
                                               overlapping windows (``doc_stride``)
seq2seq                lm                      encoder-decoder: source -> target (teacher
                                               forcing); decoder-only: ``source + suffix`` ->
                                               completion, loss on the completion tokens only
=====================  ======================  =================================================

Special tokens come from the tokenizer, so one code path serves every family (see
:class:`InputBuilder`). Encoder-decoders run the sequence tasks the BART way: the encoder reads
the input and the decoder reads it again shifted right; heads read the decoder states.
The LM loss projects only the scored positions onto the vocabulary (sparse prediction): for
prompt -> completion that skips the whole prompt.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Family, ModelConfig, Position
from ..errors import ConfigError, DataError
from .config import TaskSpec

IGNORE = -100


# ------------------------------------------------------------------------------ input layout
class InputBuilder:
    """Wraps token ids in the special tokens the tokenizer defines, and truncates.

    * tokenizers with cls + sep (BERT WordPiece, RoBERTa/BART BPE): ``cls A sep`` and
      ``cls A sep B sep``;
    * tokenizers with only eos (GPT-2 BPE, T5 Unigram): ``A eos`` and ``A eos B eos``; the final
      eos gives decoders a fixed last position to pool for classification;
    * neither: the bare ids.

    Segment (token type) ids are produced only when the model has segment embeddings.
    """

    def __init__(self, tok: Any, cfg: ModelConfig):
        cls_id, sep_id, eos_id = tok.cls_token_id, tok.sep_token_id, tok.eos_token_id
        if cls_id is not None and sep_id is not None:
            self.prefix, self.mid, self.suffix = [cls_id], [sep_id], [sep_id]
        elif eos_id is not None:
            self.prefix, self.mid, self.suffix = [], [eos_id], [eos_id]
        elif sep_id is not None:
            self.prefix, self.mid, self.suffix = [], [sep_id], [sep_id]
        else:
            self.prefix, self.mid, self.suffix = [], [], []
        self.use_types = cfg.type_vocab_size > 0
        pad = tok.pad_token_id if tok.pad_token_id is not None else cfg.pad_token_id
        self.pad_id = int(pad) if pad is not None and pad >= 0 else 0
        #: token that ends a generated target (eos, else sep), or None
        end = eos_id if eos_id is not None else sep_id
        self.end_id = None if end is None else int(end)

    @property
    def n_single(self) -> int:
        return len(self.prefix) + len(self.suffix)

    @property
    def n_pair(self) -> int:
        return len(self.prefix) + len(self.mid) + len(self.suffix)

    def single(self, a: list[int], max_length: int, truncation: str = "head") -> tuple[list[int], list[int] | None]:
        """``(ids, type_ids)`` of one segment, truncated to ``max_length`` with its specials.

        ``truncation`` keeps the ``head`` (first tokens), the ``tail`` (last tokens) or
        ``head+tail``: the first quarter of the budget from the start, the rest from the end.
        """
        budget = max(0, max_length - self.n_single)
        if len(a) > budget:
            if truncation == "tail":
                a = a[len(a) - budget:]
            elif truncation == "head+tail":
                head = budget // 4
                a = a[:head] + a[len(a) - (budget - head):]
            else:
                a = a[:budget]
        ids = self.prefix + a + self.suffix
        return ids, ([0] * len(ids) if self.use_types else None)

    def pair(self, a: list[int], b: list[int], max_length: int) -> tuple[list[int], list[int] | None]:
        """``(ids, type_ids)`` of two segments, truncating the longer one first."""
        budget = max(0, max_length - self.n_pair)
        la, lb = len(a), len(b)
        while la + lb > budget:  # longest_first, as in transformers
            if la >= lb:
                la -= 1
            else:
                lb -= 1
        first = self.prefix + a[:la] + self.mid
        second = b[:lb] + self.suffix
        types = [0] * len(first) + [1] * len(second) if self.use_types else None
        return first + second, types


def position_limit(cfg: ModelConfig) -> int | None:
    """Longest sequence the model's position table covers (None: no absolute positions)."""
    if Position(cfg.position) not in (Position.LEARNED, Position.SINUSOIDAL):
        return None
    if cfg.pad_aware_positions:  # RoBERTa numbers positions from pad_token_id + 1
        return cfg.max_positions - cfg.pad_token_id - 1
    return cfg.max_positions


def decoder_start_id(cfg: ModelConfig, tok: Any) -> int:
    """First decoder input of an encoder-decoder: the config's, else eos (BART), bos, pad (T5)."""
    for v in (cfg.decoder_start_token_id, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, cfg.pad_token_id):
        if v is not None and v >= 0:
            return int(v)
    return 0


# ------------------------------------------------------------------------------ batching
def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                           group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding), still random from epoch to epoch.

    Shuffle, cut into chunks of ``group * batch_size``, sort each chunk by length, cut into
    batches, shuffle the batch order (as ``transformers``' ``group_by_length``).
    """
    order = rng.permutation(len(lengths))
    chunk = group * batch_size
    batches: list[list[int]] = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk].tolist(), key=lambda i: -lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic evaluation batches, longest first (minimal padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_to(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """(B, T) long tensor of ragged rows, padded with ``value`` (on the left when ``left``)."""
    T = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, T - len(r) :] = torch.as_tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


# ------------------------------------------------------------------------------ BIO decoding
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


# ------------------------------------------------------------------------------ wiring
class Wiring:
    """Base class: shared batching and the forward call; subclasses define a task type."""

    head = ""
    head_kind = ""

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        self.spec, self.tok, self.cfg = spec, tok, cfg
        self.builder = InputBuilder(tok, cfg)
        limit = position_limit(cfg)
        self.max_length = min(spec.max_length, limit) if limit else spec.max_length
        self.family = Family(cfg.family)

    # -- model
    def head_settings(self) -> dict[str, Any]:
        return {}

    def setup_model(self, model: Any, fresh: bool) -> None:
        """Keep only this task's head; add it (freshly initialised) when ``fresh`` or missing."""
        for name in list(model.heads):
            if name != self.head:
                model.remove_head(name)
        if fresh or self.head not in model.heads:
            model.add_head(self.head, **self.head_settings())

    def check_model(self, cfg: ModelConfig) -> None:
        """Raise :class:`ConfigError` when the family cannot do this task."""

    # -- data
    def encode(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    def collate(self, feats: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = pad_to([f["input_ids"] for f in feats], self.builder.pad_id)
        batch = {"input_ids": ids, "attention_mask": pad_to([[1] * len(f["input_ids"]) for f in feats], 0)}
        if self.builder.use_types and feats[0].get("token_type_ids") is not None:
            batch["token_type_ids"] = pad_to([f["token_type_ids"] for f in feats], 0)
        return batch

    def n_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Non-padding tokens the model reads (encoder-decoders read the input twice here)."""
        n = int(batch["attention_mask"].sum())
        return 2 * n if self.family == Family.ENCODER_DECODER else n

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the backbone and this task's head."""
        kw: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "head": self.head}
        if "token_type_ids" in batch:
            kw["token_type_ids"] = batch["token_type_ids"]
        if self.family == Family.ENCODER_DECODER:
            from ..models.families import shift_tokens_right

            kw["decoder_input_ids"] = shift_tokens_right(batch["input_ids"], self.builder.pad_id, decoder_start_id(self.cfg, self.tok))
            kw["decoder_attention_mask"] = batch["attention_mask"]
        return model(**kw).logits

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean training loss of the batch: :meth:`loss_sum` over :meth:`loss_count`."""
        return self.loss_sum(model, batch) / max(self.loss_count(batch), 1)

    def loss_sum(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """0-d sum of the per-unit losses (examples, scored tokens), so a large batch split into
        micro-batches (accumulation, ranks) is normalised once, by the whole batch's count."""
        raise NotImplementedError

    def loss_count(self, batch: dict[str, torch.Tensor]) -> int:
        """Units :meth:`loss_sum` adds up, known without a forward: examples by default."""
        return int(batch["input_ids"].shape[0])

    # -- prediction
    def predict(self, model: Any, examples: Sequence[dict[str, Any]], feats: list[dict[str, Any]],
                batch_size: int, ctx: Callable[[], Any], progress: Any = None) -> list[Any]:
        """One prediction per example (label name, number, tag list, answer or text)."""
        raise NotImplementedError

    def reference(self, ex: dict[str, Any]) -> Any:
        raise NotImplementedError

    def describe(self, pred: Any, ex: dict[str, Any]) -> dict[str, Any]:
        """A JSON-able record of one prediction (of example ``ex``) for ``predict`` output."""
        return {"prediction": pred}

    def _run_batches(self, model: Any, feats: list[dict[str, Any]], batch_size: int, ctx: Callable[[], Any],
                     progress: Any = None):
        """Yield ``(indices, logits)`` over length-sorted batches in inference mode."""
        device = next(model.parameters()).device
        for idx in sorted_batches([len(f["input_ids"]) for f in feats], batch_size):
            batch = {k: v.to(device) for k, v in self.collate([feats[i] for i in idx]).items()}
            with ctx():
                out = self.logits(model, batch).float()
            if progress is not None:
                progress.update(len(idx))
            yield idx, out


class ClassificationWiring(Wiring):
    """Classification and pair-classification: one label per sequence."""

    head = "classification"

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.index = {lab: i for i, lab in enumerate(spec.labels)}
        self.pair = spec.task_type == "pair-classification" or bool(spec.columns.get("pair"))

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
            p = logits.softmax(-1).cpu().numpy()
            for j, i in enumerate(idx):
                probs[i] = p[j]
        return [(self.spec.labels[int(p.argmax())], p) for p in probs]

    @staticmethod
    def unwrap(preds: list[Any]) -> list[Any]:
        return [p[0] for p in preds]

    def reference(self, ex):
        return ex["label"]

    def describe(self, pred, ex):
        label, p = pred
        return {"prediction": label, "probabilities": {lab: round(float(x), 6) for lab, x in zip(self.spec.labels, p)}}


class RegressionWiring(ClassificationWiring):
    """One number per text or pair: a 1-output classification head and MSE on standardised targets."""

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.pair = bool(spec.columns.get("pair"))

    def head_settings(self) -> dict[str, Any]:
        return dict(super().head_settings(), num_labels=1)

    def target(self, ex, k):
        return (float(ex["label"]) - self.spec.label_mean) / self.spec.label_std

    def collate(self, feats):
        batch = Wiring.collate(self, feats)
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

    @staticmethod
    def unwrap(preds):
        return preds

    def reference(self, ex):
        return float(ex["label"])

    def describe(self, pred, ex):
        return {"prediction": pred}


class TaggingWiring(Wiring):
    """BIO tagging: words joined by spaces, tokenised with offsets; each word's label sits on its
    first sub-word, later sub-words get -100 (ignored), and a word's prediction is read there."""

    head = "token_classification"

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
        logits = self.logits(model, batch).float()  # (B, T, K)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=IGNORE,
                               reduction="sum")

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

    def reference(self, ex):
        return list(ex["tags"])

    def describe(self, pred, ex):
        from ..evaluation.metrics import bio_chunks

        toks = ex["tokens"]
        ents = [{"type": t, "start": s, "end": e, "text": " ".join(toks[s:e])} for t, s, e in bio_chunks(pred)]
        return {"tokens": list(toks), "prediction": pred, "entities": ents}


class QAWiring(Wiring):
    """Extractive QA: ``question`` first, then a window of the ``context``; start/end logits over
    the context tokens; the best span (start <= end, at most ``max_answer_length`` tokens) over
    all windows of an example is mapped back to characters with the tokenizer's offsets."""

    head = "span"

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

    def reference(self, ex):
        return list(ex["answers"])

    def describe(self, pred, ex):
        return {"prediction": pred}


class Seq2SeqWiring(Wiring):
    """Text to text with the LM head. Encoder-decoders: the source goes to the encoder, the target
    is teacher-forced (decoder input = [start] + target[:-1]). Decoder-only: one sequence
    ``source + prompt_suffix + target + eos``; labels are -100 on the prompt so only the
    completion is scored. Evaluation generates (greedy or beam) and returns the text."""

    head = "lm"

    def __init__(self, spec: TaskSpec, tok: Any, cfg: ModelConfig):
        super().__init__(spec, tok, cfg)
        self.max_target = spec.max_target_length
        self.suffix_ids = tok.encode(spec.prompt_suffix) if spec.prompt_suffix and self.family == Family.DECODER else []
        if self.family == Family.DECODER:
            if self.max_length <= self.max_target + len(self.suffix_ids) + 8:
                raise ConfigError(f"max_length={self.max_length} leaves no room for the prompt next to "
                                  f"max_target_length={self.max_target}; raise --max-length or lower --max-target-length")

    def check_model(self, cfg):
        if Family(cfg.family) == Family.ENCODER:
            raise ConfigError("seq2seq needs a decoder or encoder-decoder model; this model is an encoder "
                              "(use a gpt-*, bart-* or t5-* model)")

    def setup_model(self, model, fresh):
        # the LM head is the pre-trained one (tied to the embeddings): never re-initialise it
        for name in list(model.heads):
            if name != "lm":
                model.remove_head(name)
        if "lm" not in model.heads:
            model.add_head("lm")

    def _target_ids(self, texts: list[str]) -> list[list[int]]:
        lead = " " if self.tok.kind == "bpe" else ""  # byte-level BPE: a word after a space
        ids = self.tok.encode_batch([lead + t.strip() for t in texts])
        end = [self.builder.end_id] if self.builder.end_id is not None else []
        return [x[: self.max_target - len(end)] + end for x in ids]

    def _prompt_ids(self, sources: list[str]) -> list[list[int]]:
        src = self.tok.encode_batch(sources)
        if self.family == Family.DECODER:
            keep = self.max_length - self.max_target - len(self.suffix_ids)
            return [s[:keep] + self.suffix_ids for s in src]
        return [self.builder.single(s, self.max_length)[0] for s in src]

    def encode(self, examples, train):
        prompts = self._prompt_ids([e["source"] for e in examples])
        has_t = all("target" in e for e in examples)
        targets = self._target_ids([e["target"] for e in examples]) if has_t else None
        if train and not has_t:
            raise DataError("seq2seq training examples need a target")
        feats = []
        for k, p in enumerate(prompts):
            f: dict[str, Any] = {"input_ids": p, "prompt": p, "example": k}
            if targets is not None:
                if self.family == Family.DECODER:
                    f["input_ids"] = p + targets[k]
                    f["labels"] = [IGNORE] * len(p) + targets[k]
                else:
                    f["labels"] = targets[k]
            feats.append(f)
        return feats

    def collate(self, feats):
        batch = super().collate(feats)
        if "labels" in feats[0]:
            batch["labels"] = pad_to([f["labels"] for f in feats], IGNORE)
        return batch

    def n_tokens(self, batch):
        n = int(batch["attention_mask"].sum())
        if self.family == Family.ENCODER_DECODER and "labels" in batch:
            n += int((batch["labels"] != IGNORE).sum())
        return n

    def loss_count(self, batch):
        labels = batch["labels"]
        tgt = labels if self.family == Family.ENCODER_DECODER else labels[:, 1:]  # as in loss_sum
        return int((tgt != IGNORE).sum())

    def loss_sum(self, model, batch):
        labels = batch["labels"]
        if self.family == Family.ENCODER_DECODER:
            from ..models.families import shift_tokens_right

            dec_in = shift_tokens_right(labels, self.builder.pad_id, decoder_start_id(self.cfg, self.tok))
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_input_ids=dec_in, decoder_attention_mask=(labels != IGNORE).long())
            h, tgt = out.last_hidden_state, labels  # (B, Tt, C), (B, Tt)
        else:
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            h, tgt = out.last_hidden_state[:, :-1], labels[:, 1:]  # state t predicts token t+1
        sel = tgt != IGNORE
        # sparse prediction: only scored positions reach the (large) vocabulary projection
        logits = model.heads["lm"](h[sel])  # (N, V)
        return F.cross_entropy(logits.float(), tgt[sel], reduction="sum")

    def predict(self, model, examples, feats, batch_size, ctx, progress=None):
        device = next(model.parameters()).device
        out: list[Any] = [None] * len(feats)
        kw: dict[str, Any] = {"max_new_tokens": self.max_target, "num_beams": self.spec.num_beams,
                              "pad_token_id": self.builder.pad_id}
        if self.builder.end_id is not None:
            kw["eos_token_id"] = self.builder.end_id
        if self.family == Family.ENCODER_DECODER:
            kw["decoder_start_token_id"] = decoder_start_id(self.cfg, self.tok)
        left = self.family == Family.DECODER  # decoder prompts are left-padded for generation
        for idx in sorted_batches([len(f["prompt"]) for f in feats], batch_size):
            rows = [feats[i]["prompt"] for i in idx]
            ids = pad_to(rows, self.builder.pad_id, left=left).to(device)
            mask = pad_to([[1] * len(r) for r in rows], 0, left=left).to(device)
            with ctx():
                gen = model.generate(ids, attention_mask=mask, **kw)
            new = gen[:, ids.shape[1]:] if left else gen[:, 1:]
            texts = self.tok.batch_decode(new.cpu().tolist(), skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = texts[j].strip()
            if progress is not None:
                progress.update(len(idx))
        return out

    def reference(self, ex):
        return ex["target"]


WIRINGS: dict[str, type[Wiring]] = {
    "classification": ClassificationWiring,
    "pair-classification": ClassificationWiring,
    "regression": RegressionWiring,
    "tagging": TaggingWiring,
    "qa": QAWiring,
    "seq2seq": Seq2SeqWiring,
}


def build_wiring(spec: TaskSpec, tok: Any, cfg: ModelConfig) -> Wiring:
    """The :class:`Wiring` of ``spec.task_type`` for this tokenizer and model config."""
    if spec.task_type not in WIRINGS:
        raise ConfigError(f"unknown task type {spec.task_type!r}; expected one of: {', '.join(WIRINGS)}")
    w = WIRINGS[spec.task_type](spec, tok, cfg)
    w.check_model(cfg)
    return w


def plain_predictions(w: Wiring, preds: list[Any]) -> list[Any]:
    """Predictions in the form :func:`~transferlab.evaluation.metrics.compute_metrics` takes."""
    if isinstance(w, ClassificationWiring):
        return w.unwrap(preds)
    return preds
