"""Dataset views the objectives read from prepared shards.

Each view takes anything with ``tokens`` (flat ids), ``doc_offsets`` (n_docs + 1) and, where
sentences matter, ``sent_offsets`` (n_sents + 1; every document start is a sentence start) —
a :class:`~transferlab.data.TokenShards` or, in tests, a ``SimpleNamespace`` of numpy arrays.
Items are deterministic functions of the index; all per-epoch randomness (masking, noise, the
A/B split of NSP pairs) is drawn later by the collator from the trainer's generator.

* :class:`PackedWindows` — fixed-length windows of the token stream with a separator token
  inserted after every document (GPT-2's ``<|endoftext|>`` packing, RoBERTa's FULL-SENTENCES).
  O(1) memory beyond one int64 per document.
* :class:`SentenceChunks` — runs of whole sentences of one document up to a token budget, with
  their sentence starts (BART's sentence permutation needs them).
* :class:`SentencePairs` — BERT's ``create_pretraining_data`` chunks for next-sentence
  prediction, each with a pre-drawn random-document continuation.

Views are not sharded: the trainer's :class:`~transferlab.training.distributed.GlobalSampler`
gives each rank its indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError


def _arrays(shards: Any, need_sentences: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        tokens, docs = shards.tokens, shards.doc_offsets
    except AttributeError:
        raise DataError(
            f"expected prepared shards (tokens + doc_offsets, e.g. transferlab.data.TokenShards), "
            f"got {type(shards).__name__}"
        ) from None
    sents = getattr(shards, "sent_offsets", None)
    if need_sentences and sents is None:
        raise DataError("this objective needs sentence boundaries (sent_offsets); re-run `transferlab prepare`")
    if len(docs) < 2 or int(docs[-1]) != len(tokens):
        raise DataError(f"doc_offsets must start at 0 and end at the token count {len(tokens)}, got {len(docs) - 1} documents")
    return tokens, docs, sents


class _View:
    """Length and bounds-checked indexing, and the shards' arrays, read through ``self.shards``
    so that a view pickles (for DataLoader workers) without copying memory-mapped data:
    ``TokenShards`` re-opens its memmaps in the worker."""

    shards: Any

    @property
    def tokens(self) -> np.ndarray:
        return self.shards.tokens

    @property
    def doc_offsets(self) -> np.ndarray:
        return self.shards.doc_offsets

    @property
    def sent_offsets(self) -> np.ndarray:
        return self.shards.sent_offsets

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_vstart", None)  # a cache, rebuilt on first use
        return state

    def _init_items(self, n_items: int) -> None:
        self.n_items = n_items
        self._len = n_items

    def __len__(self) -> int:
        return self._len

    def _global(self, i: int) -> int:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"item {i} out of range for {self._len} items")
        return i


class PackedWindows(_View):
    """Windows of ``length`` tokens every ``stride`` tokens of the stream
    ``doc_0 SEP doc_1 SEP ...`` (no separator when ``separator`` is None).

    Item ``i``: ``np.int64`` array of exactly ``length`` ids. A causal LM uses
    ``stride = length - 1`` so that consecutive windows overlap by one token and every token of
    the stream (but the first) is predicted exactly once.
    """

    def __init__(self, shards: Any, length: int, stride: int | None = None, separator: int | None = None) -> None:
        self.shards = shards
        _arrays(shards)
        if length <= 0:
            raise DataError(f"window length must be positive, got {length}")
        self.length, self.stride = length, stride or length
        if self.stride <= 0:
            raise DataError(f"stride must be positive, got {self.stride}")
        self.separator = separator
        n_docs = len(self.doc_offsets) - 1
        self.n_virtual = len(self.tokens) + (n_docs if separator is not None else 0)
        if self.n_virtual < length:
            raise DataError(
                f"the data has {self.n_virtual} tokens, fewer than one window of {length}; "
                "use more data or a shorter seq_len"
            )
        self._init_items((self.n_virtual - length) // self.stride + 1)
        self._vstart: np.ndarray | None = None

    def __getitem__(self, i: int) -> np.ndarray:
        v0 = self._global(i) * self.stride
        if self.separator is None:
            return np.asarray(self.tokens[v0 : v0 + self.length], dtype=np.int64)
        if getattr(self, "_vstart", None) is None:
            # virtual start of document d: its raw offset plus the d separators before it
            offs = np.asarray(self.doc_offsets[:-1], dtype=np.int64)
            self._vstart = offs + np.arange(len(offs), dtype=np.int64)
        v = np.arange(v0, v0 + self.length, dtype=np.int64)
        d = np.searchsorted(self._vstart, v, "right") - 1  # (L,) document of each position
        raw = v - d  # raw stream position; at a separator it points at the next document's start
        ends = np.asarray(self.doc_offsets[d + 1], dtype=np.int64)
        is_sep = raw >= ends
        lo, hi = int(raw[0]), int(min(raw[-1] + 1, len(self.tokens)))
        chunk = np.asarray(self.tokens[lo:hi], dtype=np.int64)
        out = chunk[np.clip(raw - lo, 0, max(len(chunk) - 1, 0))] if len(chunk) else np.zeros(self.length, np.int64)
        out[is_sep] = self.separator
        return out


class SentenceChunks(_View):
    """Runs of consecutive whole sentences of one document, at most ``max_tokens`` long.

    Sentences are packed greedily; a sentence longer than ``max_tokens`` is cut into pieces.
    Item ``i``: ``{"tokens": int64 (n,), "sentence_starts": int64 (k,)}`` with
    ``sentence_starts[0] == 0``. The index holds two int64 per chunk.
    """

    def __init__(self, shards: Any, max_tokens: int) -> None:
        self.shards = shards
        _, docs, sents = _arrays(shards, need_sentences=True)
        if max_tokens <= 0:
            raise DataError(f"max_tokens must be positive, got {max_tokens}")
        so = np.asarray(sents, dtype=np.int64)
        doc_start = np.isin(so[:-1], np.asarray(docs[:-1], dtype=np.int64))  # (n_sents,)
        starts: list[int] = []
        ends: list[int] = []
        cur, cur_end = -1, -1
        M = max_tokens
        for a, b, new_doc in zip(so[:-1].tolist(), so[1:].tolist(), doc_start.tolist()):
            if b <= a:
                continue
            if cur >= 0 and (new_doc or b - cur > M):
                starts.append(cur)
                ends.append(cur_end)
                cur = -1
            if b - a > M:  # an over-long sentence: full pieces become chunks, the rest stays open
                while b - a > M:
                    starts.append(a)
                    ends.append(a + M)
                    a += M
            if cur < 0:
                cur = a
            cur_end = b
        if cur >= 0:
            starts.append(cur)
            ends.append(cur_end)
        if not starts:
            raise DataError("no sentences to build chunks from (empty data)")
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self._init_items(len(self.starts))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        g = self._global(i)
        a, b = int(self.starts[g]), int(self.ends[g])
        so = self.sent_offsets
        lo, hi = np.searchsorted(so, a, "right"), np.searchsorted(so, b, "left")
        inner = np.asarray(so[lo:hi], dtype=np.int64) - a
        return {
            "tokens": np.asarray(self.tokens[a:b], dtype=np.int64),
            "sentence_starts": np.concatenate([[0], inner]).astype(np.int64),
        }


class SentencePairs(_View):
    """Material for BERT's next-sentence-prediction pairs (``create_pretraining_data`` logic).

    Each document is cut into chunks of consecutive sentences: sentences are added until the
    chunk reaches its target length (``max_tokens``, or with probability ``short_seq_prob`` a
    uniform length in ``[2, max_tokens]``) or the document ends. Item ``i`` holds the chunk's
    sentences and, drawn with a generator seeded by ``(seed, i)``, the sentences of a random
    other document from a random sentence on (up to ``max_tokens`` tokens): the collator uses
    them when it decides (with the trainer's generator) that B is *not* the continuation.

    Item: ``{"sentences": [int64 arrays], "random_sentences": [int64 arrays], "target": int,
    "max_tokens": int}`` (``max_tokens``: what a pair is truncated to).
    """

    def __init__(self, shards: Any, max_tokens: int, short_seq_prob: float = 0.1, seed: int = 0) -> None:
        self.shards = shards
        _, docs, sents = _arrays(shards, need_sentences=True)
        self.n_docs = len(docs) - 1
        if self.n_docs < 2:
            raise DataError(f"next-sentence prediction needs at least 2 documents, got {self.n_docs}")
        if max_tokens < 2:
            raise DataError(f"seq_len too short for sentence pairs (room for {max_tokens} tokens)")
        self.max_tokens, self.seed = max_tokens, seed
        so = np.asarray(sents, dtype=np.int64)
        doc_of_sent = np.searchsorted(np.asarray(docs, dtype=np.int64), so[:-1], "right") - 1
        rng = np.random.default_rng([seed, 0x5E9])
        n_s = len(so) - 1
        # one target length per chunk: drawn up front (deterministic, vectorised), consumed in order
        short = rng.random(n_s) < short_seq_prob
        targets = np.where(short, rng.integers(2, max_tokens + 1, n_s), max_tokens).tolist()
        c_doc: list[int] = []
        c_lo: list[int] = []
        c_hi: list[int] = []
        c_tgt: list[int] = []
        lens = (so[1:] - so[:-1]).tolist()
        docs_l = doc_of_sent.tolist()
        start, cur_len, t = 0, 0, 0
        for s in range(n_s):
            cur_len += lens[s]
            last_of_doc = s == n_s - 1 or docs_l[s + 1] != docs_l[s]
            if last_of_doc or cur_len >= targets[t]:
                if cur_len > 0:
                    c_doc.append(docs_l[s])
                    c_lo.append(start)
                    c_hi.append(s + 1)
                    c_tgt.append(targets[t])
                    t += 1
                start, cur_len = s + 1, 0
        if not c_lo:
            raise DataError("no sentences to build pairs from (empty data)")
        self.chunk_doc = np.asarray(c_doc, dtype=np.int64)
        self.chunk_lo = np.asarray(c_lo, dtype=np.int64)
        self.chunk_hi = np.asarray(c_hi, dtype=np.int64)
        self.chunk_target = np.asarray(c_tgt, dtype=np.int64)
        self._init_items(len(c_lo))

    def _sentences(self, lo: int, hi: int, budget: int | None = None) -> list[np.ndarray]:
        so = self.sent_offsets
        out, n = [], 0
        for s in range(lo, hi):
            a, b = int(so[s]), int(so[s + 1])
            out.append(np.asarray(self.tokens[a:b], dtype=np.int64))
            n += b - a
            if budget is not None and n >= budget:
                break
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = self._global(i)
        rng = np.random.default_rng([self.seed, g])
        d = int(self.chunk_doc[g])
        other = int(rng.integers(self.n_docs - 1))
        other += other >= d  # uniform over the other documents
        so, docs = self.sent_offsets, self.doc_offsets
        s_lo = int(np.searchsorted(so, docs[other], "left"))
        s_hi = int(np.searchsorted(so, docs[other + 1], "left"))
        start = int(rng.integers(s_lo, max(s_hi, s_lo + 1)))
        return {
            "sentences": self._sentences(int(self.chunk_lo[g]), int(self.chunk_hi[g])),
            "random_sentences": self._sentences(start, max(s_hi, start), budget=self.max_tokens),
            "target": int(self.chunk_target[g]),
            "max_tokens": self.max_tokens,
        }


# ---------------------------------------------------------------------------------- languages
def item_documents(view: Any) -> np.ndarray:
    """The document each item of a view starts in, ``(len(view),)`` int64 (its language is that
    document's, for temperature sampling and per-language validation).

    Args:
        view: a :class:`PackedWindows`, :class:`SentenceChunks` or :class:`SentencePairs`, or any
            view with an ``item_documents()`` method.

    Returns:
        Document indices into the view's shards.
    """
    if hasattr(view, "item_documents"):
        return np.asarray(view.item_documents(), dtype=np.int64)
    docs = np.asarray(view.doc_offsets, dtype=np.int64)
    if isinstance(view, PackedWindows):
        v0 = np.arange(view.n_items, dtype=np.int64) * view.stride  # (n_items,) virtual starts
        starts = docs[:-1] + (np.arange(len(docs) - 1) if view.separator is not None else 0)
        return np.searchsorted(starts, v0, "right") - 1
    if isinstance(view, SentenceChunks):
        return np.searchsorted(docs, view.starts, "right") - 1
    if isinstance(view, SentencePairs):
        return np.asarray(view.chunk_doc, dtype=np.int64)
    raise DataError(f"{type(view).__name__}: this objective's examples do not say which document they come from, "
                    "so they cannot be sampled by language (drop train.language_alpha)")


def item_lengths(view: Any) -> np.ndarray:
    """Tokens of each item of a view (before special tokens), ``(len(view),)`` int64."""
    if hasattr(view, "item_lengths"):
        return np.asarray(view.item_lengths(), dtype=np.int64)
    if isinstance(view, PackedWindows):
        return np.full(view.n_items, view.length, np.int64)
    if isinstance(view, SentenceChunks):
        return view.ends - view.starts
    if isinstance(view, SentencePairs):
        so = np.asarray(view.sent_offsets, dtype=np.int64)
        return so[view.chunk_hi] - so[view.chunk_lo]
    return np.ones(len(view), np.int64)

