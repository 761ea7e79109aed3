"""Tokenize once into memory-mapped shards (``transferlab prepare``).

Pipeline: the parent process streams documents (:mod:`.corpus`) and groups them into batches of
about ``batch_chars`` characters; ``workers`` processes each run ``encode_batch`` on a batch (one
single-threaded Rust call), find its sentence starts (one regex pass over the batch, mapped to
tokens with ``Encoding.char_to_token`` at the boundaries only) and pick each document's split from
a keyed hash of its bytes, returning flat numpy arrays; the parent appends them to the split files
in corpus order. At most ``2 * workers + 2`` batches are in flight, so memory stays bounded
whatever the corpus size. Everything beyond ``encode_batch`` costs about 15% more CPU than the
tokenizer call alone (see ``benchmarks/prepare_throughput.py``). A document longer than
``LONG_DOC_PIECES * PIECE_CHARS`` characters goes to a worker alone and is tokenized there in
pieces cut where no token changes (``_encode_long``), so one huge line needs bounded memory too.

Output folder (written as a hidden temp folder, renamed into place when complete, so an
interrupted run never leaves a folder that looks complete)::

    meta.json                  format version, tokenizer fingerprint, dtype, counts per split,
                               sources (path, size, mtime), options
    tokenizer/                 the tokenizer (Tokenizer.save)
    {split}.tokens.bin         flat uint16 (vocab <= 65,536) or uint32 ids, documents concatenated
                               without special tokens
    {split}.docs.npy           int64 token offsets of document starts, length n_docs + 1
    {split}.sents.npy          int64 token offsets of sentence starts, length n_sents + 1 (every
                               document start is also a sentence start)
    {split}.langs.npy          int16 language of each document, an index into meta.json's
                               ``languages`` (only when some document declared a language:
                               ``--language``, a ``lang`` field, a built-in corpus); meta.json's
                               ``splits.{split}.languages`` has documents and tokens per language.
                               Folders without it (older ones) load as one undetermined language.

Splits are ``train`` and ``validation`` (a ``val_fraction`` of documents chosen by a keyed hash of
their text, so the split is deterministic, independent of order and worker count, and identical
documents land in the same split; at least one validation document when there are two or more),
plus ``test`` for corpora with official splits (``builtin:ptb``). Running again with the same
inputs (paths, sizes, mtimes), tokenizer and options is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import DataError
from ..utils import atomic_dir, atomic_write_text
from .corpus import iter_documents, resolve_inputs
from .documents import Document, Source
from .multilingual import UNDETERMINED, input_languages
from .sentences import sentence_starts_batch

__all__ = ["prepare_corpus", "FORMAT_VERSION", "SPLITS", "token_dtype"]

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
_SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits in 16 bits, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _stop_pool(pool: Any, timeout: float = 10.0) -> None:
    """Stop a pool after an error or an interrupt, without hanging.

    ``Pool.terminate`` joins the pool's handler threads, and one of them can block for good on a
    queue lock that a worker held when it was signalled. The workers' results are no longer
    needed, so they are killed first; the terminate then runs in a daemon thread given
    ``timeout`` seconds (its threads are daemons: an unfinished one does not keep the process alive).
    """
    for p in list(getattr(pool, "_pool", ())):
        if p.exitcode is None:
            p.kill()
    t = threading.Thread(target=pool.terminate, name="prepare-pool-stop", daemon=True)
    t.start()
    t.join(timeout)


# ---------------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, dtype: str, seed: int, val_fraction: float, piece_chars: int = 0) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tokenizers import Tokenizer as Backend

    # one Rust thread per worker process: the processes are the parallelism
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C reaches the whole process group: only the parent acts on it (and stops the workers);
    # SIGTERM (Pool.terminate) must end a worker whatever handler the forking process had set.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # tokenize in a new thread: it allocates from a fresh glibc arena, not the forked parent's
    # fragmented main one (~12% less CPU; BENCHMARKS.md, "`prepare` throughput vs the raw tokenizer")
    pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    backend = pool.submit(Backend.from_str, tokenizer_json).result()  # the vocabulary in that arena too
    _WORKER.update(pool=pool, backend=backend, dtype=np.dtype(dtype), seed=seed, val_fraction=val_fraction,
                   piece_chars=piece_chars or PIECE_CHARS)


def _worker_encode(batch: tuple[list[str], list[str | None]]) -> tuple:
    w = _WORKER
    return w["pool"].submit(
        _encode_docs, w["backend"], batch[0], batch[1], w["dtype"], w["seed"], w["val_fraction"], w["piece_chars"]
    ).result()


def _encode_docs(
    backend: Any, texts: list[str], hints: list[str | None], dtype: np.dtype, seed: int, val_fraction: float,
    piece_chars: int = 0,
) -> tuple:
    """Tokenize a batch of documents.

    A batch that is one document longer than ``LONG_DOC_PIECES * piece_chars`` characters (the
    parent sends those alone, see ``_batches``) goes to :func:`_encode_long` instead, which
    tokenizes it in pieces so memory stays bounded.

    Everything after the one ``encode_batch`` call is the overhead of ``prepare`` over the bare
    tokenizer, so it is vectorised over the batch; the per-document Python work left is what the
    ``tokenizers`` API forces (each ``Encoding``'s ids come as a list; ``char_to_token`` at each
    sentence boundary) and one UTF-8 encode + hash per document.

    Returns:
        ``(ids, doc_lens, sent_rel, sents_per_doc, split_codes, doc_bytes, n_bytes, n_dropped)``:
        the flat ids of the kept documents, their lengths, sentence starts relative to each
        document (0 first), the number of sentences per document, a split code per document
        (0 train, 1 validation, 2 test), the UTF-8 size of each kept document, the UTF-8 size of
        the whole batch and the number of documents dropped because they had no tokens.
    """
    piece_chars = piece_chars or PIECE_CHARS
    if len(texts) == 1 and len(texts[0]) > LONG_DOC_PIECES * piece_chars:
        return _encode_long(backend, texts[0], hints[0], dtype, seed, val_fraction, piece_chars)
    encs = backend.encode_batch(texts, add_special_tokens=False)
    n_docs = len(texts)
    lens = np.fromiter(map(len, encs), np.int64, n_docs)  # (n_docs,) tokens per document
    # (n_tokens,); np.array reads a list directly, which beats np.fromiter over chained lists
    ids = np.concatenate([np.array(e.ids, dtype) for e in encs]) if n_docs else np.zeros(0, dtype)

    # Sentence starts: one regex pass for the batch, then char -> token only at the boundaries.
    doc, char = sentence_starts_batch(texts)  # (k,), (k,)
    c2t = [e.char_to_token for e in encs]
    found = [c2t[d](c) for d, c in zip(doc.tolist(), char.tolist())]
    tok = np.array([-1 if t is None else t for t in found], np.int64)  # (k,) -1: the character has no token
    # Keep a boundary when its token lies after the last kept start of its document (0 at first):
    # two boundaries inside one token, or one on a character the normaliser dropped, add nothing.
    # Keys doc * width + token increase across documents, so a running maximum over the batch
    # gives, per document, the last token kept so far (the first boundary compares with 0).
    width = int(lens.max(initial=0)) + 1
    key = doc * width + np.maximum(tok, 0)  # (k,)
    before = np.maximum.accumulate(np.concatenate(([-1], key[:-1]))) if len(key) else key
    keep = key > np.maximum(before, doc * width)  # tok > 0 and tok > previous kept start
    kept_doc, kept_tok = doc[keep], tok[keep]

    nonempty = lens > 0
    rank = np.cumsum(nonempty) - 1  # (n_docs,) position among the kept documents
    n_sents = (np.bincount(kept_doc, minlength=n_docs) + 1)[nonempty]  # (n_kept,) the 0 start too
    sent_rel = np.zeros(int(n_sents.sum()), np.int64)  # per document: 0, then its kept starts
    # the j-th kept boundary follows j boundaries and rank + 1 zeros of the documents up to its own
    sent_rel[np.arange(len(kept_tok)) + rank[kept_doc] + 1] = kept_tok

    raws = [t.encode("utf-8") for t in texts]
    doc_bytes = np.fromiter(map(len, raws), np.int64, n_docs)  # (n_docs,)
    codes = _split_codes(raws, hints, seed, val_fraction)  # (n_docs,)
    return (
        ids, lens[nonempty], sent_rel, n_sents, codes[nonempty], doc_bytes[nonempty],
        int(doc_bytes.sum()), n_docs - int(nonempty.sum()),
    )


def _split_codes(raws: list[bytes], hints: list[str | None], seed: int, val_fraction: float) -> np.ndarray:
    """Split code per document: the corpus's own split when it has one, else validation when a
    keyed 64-bit hash of the document's bytes falls below ``val_fraction`` of the hash range."""
    key = seed.to_bytes(8, "little", signed=True)
    digests = b"".join([hashlib.blake2b(raw, digest_size=8, key=key).digest() for raw in raws])
    h = np.frombuffer(digests, "<u8")  # (n_docs,)
    codes = (h < np.uint64(int(val_fraction * 2**64))).astype(np.uint8)
    if any(hint is not None for hint in hints):
        for i, hint in enumerate(hints):
            if hint is not None:
                codes[i] = _SPLIT_CODE[hint]
    return codes


# ---------------------------------------------------------------------------------- long documents
#: A document is tokenized in pieces of about this many characters when it is longer than
#: ``LONG_DOC_PIECES`` pieces. The tokenizer's ``Encoding`` costs ~150-200 bytes per input
#: character (ids, offsets, token strings, masks), and ``char_to_token`` scans it linearly, so one
#: 50 MB line tokenized whole took 7.6 GB (process tree) and was still mapping sentence starts
#: after 8 minutes; in 64K pieces a worker holds a few pieces' Encodings at a time (~50 MB)
#: whatever the document's length (benchmarks/prepare_memory.py).
PIECE_CHARS = 1 << 16
LONG_DOC_PIECES = 4
_GROUP_PIECES = 4  # pieces per encode_batch call: amortises the call, bounds the Encodings alive
_CHECK_CHARS = 200  # characters each side of a cut that the cut check re-tokenizes
_CUT_TRIES = 8  # candidate cuts tried per piece before the piece is extended
#: characters at the end of a piece searched for a cut: pre-tokenizing is half as costly as
#: tokenizing, so searching half a piece cost ~25% more CPU; a cut is nearly always near the end
_SEARCH_CHARS = 2048


def _cut_candidates(backend: Any, text: str, lo: int, hi: int) -> list[int]:
    """Positions in ``(lo, hi)`` where the tokenizer's pre-tokenizer starts a new piece, last
    first (whitespace runs when there is no pre-tokenizer). The model (WordPiece, BPE, Unigram)
    works within pre-tokens, so a cut there can only change what the normaliser or the
    pre-tokenizer sees near it, which :func:`_cut_is_clean` checks."""
    window = text[lo:hi]
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is not None:
        starts = [s for _, (s, _e) in pre.pre_tokenize_str(window)]
    else:
        starts = [m.start() for m in re.finditer(r"(?<=\S)\s", window)]
    return [lo + s for s in reversed(starts) if s > 0]


def _cut_is_clean(backend: Any, text: str, i: int) -> bool:
    """True when tokenizing ``text`` cut at ``i`` gives the same ids around the cut as uncut: the
    ``2 * _CHECK_CHARS`` characters around ``i`` whole equal its two halves apart."""
    a, b = max(0, i - _CHECK_CHARS), min(len(text), i + _CHECK_CHARS)
    whole, left, right = backend.encode_batch([text[a:b], text[a:i], text[i:b]], add_special_tokens=False)
    return whole.ids == left.ids + right.ids


def _pieces(backend: Any, text: str, piece_chars: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` character spans covering ``text``, each about ``piece_chars`` long, cut
    only where :func:`_cut_is_clean` holds (so the pieces' tokens, concatenated, are the
    document's). The cut is searched in the last ``_SEARCH_CHARS`` (at most half) of each piece,
    last candidates first; a text without a clean cut there (no whitespace, say) grows the piece
    by half a piece and looks again, so a document with no clean cut at all is tokenized whole,
    as before."""
    n, start = len(text), 0
    hi = start + piece_chars
    search = min(piece_chars // 2, _SEARCH_CHARS)
    while n - start > piece_chars + piece_chars // 2:
        lo = max(start + 1, hi - search)
        cut = next((i for i in _cut_candidates(backend, text, lo, hi)[:_CUT_TRIES]
                    if _cut_is_clean(backend, text, i)), None)
        if cut is None:
            hi += piece_chars // 2
            if hi >= n:
                break
            continue
        yield start, cut
        start, hi = cut, cut + piece_chars
    yield start, n


def _char_to_token(enc: Any, chars: np.ndarray) -> np.ndarray:
    """``enc.char_to_token(c)`` for each ``c`` (``-1`` where it is None), vectorised.

    ``char_to_token`` returns the first token whose offsets hold the character, scanning the
    tokens, so on a long piece a per-boundary call is quadratic. With token starts and ends both
    non-decreasing (every tokenizer here) the first token ending after ``c`` is the only
    candidate; otherwise each character is asked the slow way."""
    if not len(chars):
        return np.zeros(0, np.int64)
    offs = np.array(enc.offsets, np.int64).reshape(-1, 2)  # (n_tokens, 2)
    if not len(offs):
        return np.full(len(chars), -1, np.int64)
    starts, ends = offs[:, 0], offs[:, 1]
    if (np.diff(starts) < 0).any() or (np.diff(ends) < 0).any():
        found = [enc.char_to_token(c) for c in chars.tolist()]
        return np.array([-1 if t is None else t for t in found], np.int64)
    j = np.searchsorted(ends, chars, side="right")  # (k,) first token with end > c
    jj = np.minimum(j, len(offs) - 1)
    return np.where((j < len(offs)) & (starts[jj] <= chars), j, -1)


def _encode_long(
    backend: Any, text: str, hint: str | None, dtype: np.dtype, seed: int, val_fraction: float, piece_chars: int
) -> tuple:
    """:func:`_encode_docs` of one long document, tokenized in pieces (see :func:`_pieces`).

    Sentence starts come from one regex pass over the whole text (its result is small) and are
    mapped to tokens piece by piece; the rule that keeps a start only when its token lies after
    the last kept one is applied over the whole document, as for a short one."""
    chars = sentence_starts_batch([text])[1]  # (k,) character offsets of sentence starts
    ids_parts: list[np.ndarray] = []
    toks = np.full(len(chars), -1, np.int64)  # (k,) document-level token of each start, -1: none
    n_tokens = 0
    spans = list(_pieces(backend, text, piece_chars))
    for g in range(0, len(spans), _GROUP_PIECES):
        group = spans[g : g + _GROUP_PIECES]
        encs = backend.encode_batch([text[a:b] for a, b in group], add_special_tokens=False)
        for (a, b), enc in zip(group, encs):
            lo, hi = np.searchsorted(chars, [a, b])
            local = _char_to_token(enc, chars[lo:hi] - a)
            toks[lo:hi] = np.where(local >= 0, local + n_tokens, -1)
            ids_parts.append(np.array(enc.ids, dtype))
            n_tokens += len(enc.ids)
        del encs
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype)
    pos = np.maximum(toks, 0)
    before = np.maximum.accumulate(np.concatenate(([0], pos[:-1]))) if len(pos) else pos
    kept = toks[pos > before]  # tok > 0 and after every earlier start
    raw = text.encode("utf-8")
    codes = _split_codes([raw], [hint], seed, val_fraction)
    if n_tokens == 0:
        z = np.zeros(0, np.int64)
        return ids, z, z, z, codes[:0], z, len(raw), 1
    sent_rel = np.concatenate(([0], kept)).astype(np.int64)
    one = np.ones(1, np.int64)
    return ids, one * n_tokens, sent_rel, one * len(sent_rel), codes, one * len(raw), len(raw), 0


# ---------------------------------------------------------------------------------- writing
class _SplitWriter:
    """Appends documents of one split: tokens to ``.tokens.bin``, offsets to raw temp files."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype) -> None:
        self.folder, self.name, self.dtype = folder, name, dtype
        self.tok_f = open(folder / f"{name}.tokens.bin", "wb")
        self.doc_f = open(folder / f".{name}.docs.raw", "wb")
        self.sent_f = open(folder / f".{name}.sents.raw", "wb")
        self.n_tokens = self.n_docs = self.n_sents = self.n_bytes = 0
        self._last: tuple[np.ndarray, np.ndarray, int] | None = None
        self.langs: list[int] = []  # language id per document (2 bytes each: kept in memory)
        self.lang_counts: dict[int, list[int]] = {}  # id -> [documents, tokens]
        self._last_lang = 0

    def _count(self, lang: int, docs: int, tokens: int) -> None:
        c = self.lang_counts.setdefault(lang, [0, 0])
        c[0] += docs
        c[1] += tokens

    def write(
        self, ids: np.ndarray, lens: np.ndarray, sent_rel: np.ndarray, n_sents: np.ndarray, doc_bytes: np.ndarray,
        lang: int = 0,
    ) -> None:
        if not len(lens):
            return
        self.langs.extend([lang] * len(lens))
        self._count(lang, len(lens), int(lens.sum()))
        self._last_lang = lang
        starts = self.n_tokens + np.concatenate(([0], np.cumsum(lens[:-1])))  # (n_docs,)
        self.tok_f.write(memoryview(np.ascontiguousarray(ids)))
        self.doc_f.write(starts.astype("<i8").tobytes())
        self.sent_f.write((sent_rel + np.repeat(starts, n_sents)).astype("<i8").tobytes())
        # remember the last document, in case it must move to validation at the end
        self._last = (
            ids[len(ids) - int(lens[-1]):].copy(), sent_rel[len(sent_rel) - int(n_sents[-1]):].copy(), int(doc_bytes[-1])
        )
        self.n_tokens += int(lens.sum())
        self.n_bytes += int(doc_bytes.sum())
        self.n_docs += len(lens)
        self.n_sents += int(n_sents.sum())

    def pop_last(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Remove the last written document and return ``(ids, sentence starts, bytes)``."""
        assert self._last is not None
        ids, sents, nb = self._last
        self._last = None
        self.langs.pop()
        self._count(self._last_lang, -1, -len(ids))
        self.n_bytes -= nb
        self.n_tokens -= len(ids)
        self.n_docs -= 1
        self.n_sents -= len(sents)
        for f, size in ((self.tok_f, self.n_tokens * self.dtype.itemsize), (self.doc_f, self.n_docs * 8),
                        (self.sent_f, self.n_sents * 8)):
            f.flush()
            f.truncate(size)
            f.seek(size)
        return ids, sents, nb

    def finish(self, codes: list[str] | None = None) -> dict[str, Any]:
        """Complete the split's files; with ``codes`` (language id -> code) also its language
        index. Returns the split's counts for meta.json."""
        self.tok_f.flush()
        os.fsync(self.tok_f.fileno())
        for f in (self.tok_f, self.doc_f, self.sent_f):
            f.close()  # the raw offset files are temporary: copied below, never fsynced
        for kind, n in (("docs", self.n_docs), ("sents", self.n_sents)):
            raw = self.folder / f".{self.name}.{kind}.raw"
            with open(self.folder / f"{self.name}.{kind}.npy", "wb") as out:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<i8", "fortran_order": False, "shape": (n + 1,)}
                )
                with open(raw, "rb") as r:
                    shutil.copyfileobj(r, out, 1 << 20)
                out.write(np.asarray([self.n_tokens], dtype="<i8").tobytes())
                out.flush()
                os.fsync(out.fileno())
            raw.unlink()
        out: dict[str, Any] = {"tokens": self.n_tokens, "documents": self.n_docs, "sentences": self.n_sents,
                               "bytes": self.n_bytes}
        if codes is not None:
            np.save(self.folder / f"{self.name}.langs.npy", np.asarray(self.langs, dtype="<i2"))
            out["languages"] = {codes[i]: {"documents": c[0], "tokens": c[1]}
                                for i, c in sorted(self.lang_counts.items()) if c[0] > 0}
        return out

    def close(self) -> None:
        for f in (self.tok_f, self.doc_f, self.sent_f):
            with contextlib.suppress(Exception):
                f.close()


def _batches(
    docs: Iterable[Document], batch_chars: int, total_bytes: int = 0, max_docs: int = 8192, long_chars: int = 0,
    langs_out: deque | None = None,
) -> Iterator[tuple[list[str], list[str | None]]]:
    """Group documents into batches of about ``batch_chars`` characters.

    A document longer than ``long_chars`` (when > 0) travels in a batch of its own, which the
    worker tokenizes in pieces (``_encode_long``).

    Within the last ``4 * batch_chars`` bytes of ``total_bytes`` (the inputs' sizes: exact for
    text files, an overestimate for CSV/JSONL, where this then never triggers) the batches shrink
    8-fold, so the workers finish together instead of one idling while another tokenizes a full
    last batch (half a batch of wall time, ~1.5% of a 30 MB run).

    With ``langs_out``, ``(languages, texts)`` of each batch is appended to it as the batch is
    yielded: the parent pairs them with the batch's result (workers never see languages).
    """
    texts: list[str] = []
    hints: list[str | None] = []
    langs: list[str | None] = []
    size = seen = 0
    limit = batch_chars
    for d in docs:
        long = 0 < long_chars < len(d.text)
        if long and texts:
            if langs_out is not None:
                langs_out.append((langs, texts))
            yield texts, hints
            texts, hints, langs, size = [], [], [], 0
        texts.append(d.text)
        hints.append(d.split)
        langs.append(d.lang)
        size += len(d.text)
        seen += len(d.text) if d.text.isascii() else len(d.text.encode("utf-8"))  # isascii() is O(1)
        if long or size >= limit or len(texts) >= max_docs:
            if langs_out is not None:
                langs_out.append((langs, texts))
            yield texts, hints
            texts, hints, langs, size = [], [], [], 0
            if total_bytes - seen < 4 * batch_chars:
                limit = max(batch_chars // 8, 1)
    if texts:
        if langs_out is not None:
            langs_out.append((langs, texts))
        yield texts, hints


class _Languages:
    """Language ids in order of first appearance (``und`` for undeclared documents), and the
    per-batch pairing of the parent's languages with the workers' results."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pending: deque = deque()  # (languages, texts) per batch in flight, corpus order

    def batch_ids(self, tok: Any, n_dropped: int) -> np.ndarray:
        """Language id of each kept document of the next batch's result."""
        langs, texts = self.pending.popleft()
        codes = [UNDETERMINED if c is None else c for c in langs]
        ids = np.array([self.ids.setdefault(c, len(self.ids)) for c in codes], np.int64)
        if n_dropped and len(set(codes)) > 1:  # rare: find which documents had no tokens
            encs = tok.backend.encode_batch(texts, add_special_tokens=False)
            ids = ids[np.array([len(e.ids) > 0 for e in encs], bool)]
        return ids if not n_dropped or len(set(codes)) > 1 else ids[: len(ids) - n_dropped]

    def codes(self) -> list[str] | None:
        """id -> code, or None when no document declared a language."""
        return list(self.ids) if set(self.ids) - {UNDETERMINED} else None


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _source_record(s: Source) -> dict[str, Any]:
    return {"path": s.path, "format": s.format, "size": s.size, "mtime": s.mtime}


def _is_up_to_date(out: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The existing meta when ``out`` holds a complete preparation of exactly ``plan``."""
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        return None
    if meta.get("plan") != plan:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, c in meta["splits"].items():
        f = out / f"{split}.tokens.bin"
        if not f.is_file() or f.stat().st_size != c["tokens"] * itemsize:
            return None
        if not (out / f"{split}.docs.npy").is_file() or not (out / f"{split}.sents.npy").is_file():
            return None
    return meta


def _summary(meta: dict[str, Any], out: Path, skipped: bool) -> dict[str, Any]:
    t = meta["totals"]
    return {
        "out_dir": str(out),
        "tokens": t["tokens"],
        "documents": t["documents"],
        "sentences": t["sentences"],
        "bytes": t["bytes"],
        "dropped_documents": t.get("dropped_documents", 0),
        "splits": meta["splits"],
        "dtype": meta["dtype"],
        "seconds": meta["seconds"] if not skipped else 0.0,
        "mb_per_s": meta["mb_per_s"],
        "tokens_per_s": meta["tokens_per_s"],
        "skipped": skipped,
    }


def _tokenize_into(
    writers: dict[str, _SplitWriter], batches: Iterator[tuple[list[str], list[str | None]]], tok: Any,
    workers: int, dtype: np.dtype, seed: int, val_fraction: float, total_size: int, progress: bool,
    piece_chars: int = 0, languages: _Languages | None = None,
) -> int:
    """Tokenize every batch (in ``workers`` processes, or here when 0) and write the results in
    corpus order (with each document's language id when ``languages`` pairs the batches).
    Returns the number of documents dropped for having no tokens."""
    from tqdm.auto import tqdm

    dropped = n_tokens = 0
    bar = tqdm(total=total_size, unit="B", unit_scale=True, desc="prepare", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)

    def consume(res: tuple) -> None:
        nonlocal dropped, n_tokens
        ids, lens, sent_rel, n_sents, codes, doc_bytes, n_bytes, n_drop = res
        dropped += n_drop
        n_tokens += len(ids)
        if languages is None:
            _dispatch(writers, ids, lens, sent_rel, n_sents, codes, doc_bytes)
        else:
            _dispatch(writers, ids, lens, sent_rel, n_sents, codes, doc_bytes, languages.batch_ids(tok, n_drop))
        bar.update(n_bytes)
        bar.set_postfix_str(f"{n_tokens:,} tokens", refresh=False)

    try:
        if workers == 0:
            for texts, hints in batches:
                consume(_encode_docs(tok.backend, texts, hints, dtype, seed, val_fraction, piece_chars))
            return dropped
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        # children must not inherit a used Rust thread pool (tokenizers would warn and disable it);
        # each worker is single-threaded by design: the processes are the parallelism
        with _env("TOKENIZERS_PARALLELISM", "false"):
            pool = ctx.Pool(workers, _init_worker, (tok.backend.to_str(), dtype.str, seed, val_fraction, piece_chars))
        try:
            pending: deque = deque()  # results in submission order = corpus order
            for batch in batches:
                pending.append(pool.apply_async(_worker_encode, (batch,)))
                while len(pending) >= 2 * workers + 2 or (pending and pending[0].ready()):
                    consume(pending.popleft().get())
            while pending:
                consume(pending.popleft().get())
        except BaseException:
            _stop_pool(pool)
            raise
        pool.terminate()
        pool.join()
        return dropped
    finally:
        bar.total = max(bar.n, 1)  # sizes on disk are only an estimate of the text's size
        bar.close()


# ---------------------------------------------------------------------------------- entry point
def prepare_corpus(
    inputs: str | Path | Iterable[str | Path],
    tokenizer: Any,
    out_dir: str | Path,
    val_fraction: float = 0.01,
    seed: int = 0,
    workers: int = 2,
    format: str | None = None,
    text_column: str = "text",
    doc_sep: str = "blank",
    force: bool = False,
    batch_chars: int = 1 << 20,
    progress: bool = True,
    piece_chars: int = PIECE_CHARS,
    languages: Iterable[str] | None = None,
    lang_column: str = "lang",
) -> dict[str, Any]:
    """Tokenize a corpus once into memory-mapped shards (see the module docstring).

    Args:
        inputs: files, folders and ``builtin:`` corpora (one or a list).
        tokenizer: a :class:`~transferlab.tokenizer.Tokenizer` or a path to load one from.
        out_dir: output folder (created; replaced only if it holds an older preparation).
        val_fraction: fraction of documents in the validation split (at least one document
            when the corpus has two or more and ``val_fraction > 0``).
        seed: key of the split hash: another seed gives another validation set.
        workers: tokenizer processes; 0 tokenizes in this process.
        format, text_column, doc_sep: how to read the inputs (see ``read_documents``).
        force: rebuild even when ``out_dir`` is up to date, and replace an ``out_dir`` that is
            not a preparation.
        batch_chars: characters per batch sent to a worker (each batch costs the parent a few
            ms; the last few batches are 8x smaller, see ``_batches``).
        progress: show a tqdm bar (on stderr).
        piece_chars: a document longer than ``LONG_DOC_PIECES * piece_chars`` characters is
            tokenized in pieces of about this many characters, cut where the cut provably
            changes no token (see ``_pieces``), so one huge document needs bounded memory; the
            output is the same as tokenizing it whole.
        languages: the language code of each input (as many as inputs, or one for all); a
            row's ``lang_column`` field and a built-in corpus's own language win over it.
        lang_column: the JSONL field / CSV column that gives a row's language, when present.

    Returns:
        A summary: ``tokens``, ``documents``, ``sentences``, ``bytes`` (UTF-8 text), ``splits``
        (counts per split), ``dtype``, ``seconds``, ``mb_per_s``, ``tokens_per_s``,
        ``dropped_documents`` (no tokens), ``skipped`` (True when nothing had to be done).

    Raises:
        DataError: unreadable or empty inputs (naming the file and line), an ``out_dir`` that
            holds something other than a preparation, bad options.
    """
    from ..tokenizer import Tokenizer
    from .builtin import BUILTIN_VERSION

    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    if piece_chars < 16 or batch_chars < 1:
        raise DataError(f"piece_chars must be >= 16 and batch_chars >= 1, got {piece_chars} and {batch_chars}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_pretrained(tokenizer)
    out = Path(out_dir)
    sources = resolve_inputs(inputs, format)
    by_input = input_languages(inputs, languages)
    dtype = token_dtype(tok.vocab_size)
    plan = {
        "format_version": FORMAT_VERSION,
        "tokenizer_fingerprint": tok.fingerprint,
        "sources": [_source_record(s) for s in sources],
        "options": {
            "val_fraction": val_fraction, "seed": seed, "format": format, "text_column": text_column,
            "doc_sep": doc_sep, "builtin_version": BUILTIN_VERSION,
        },
    }
    if by_input or lang_column != "lang":  # only then: older plans stay up to date
        plan["options"].update(languages=by_input, lang_column=lang_column)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder")
        from ..outputs import foreign_entries

        bad = [] if force else foreign_entries(out, "prepare")  # the one output rule: docs/outputs.md
        if bad:
            raise DataError(f"{out}: is not a prepared dataset (it holds {', '.join(bad[:4])}); refusing to "
                            "overwrite it: pass --force, or choose a new or empty folder")
        if not force:
            meta = _is_up_to_date(out, plan)
            if meta is not None:
                return _summary(meta, out, skipped=True)

    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        tok.save(tmp / "tokenizer")
        writers = {s: _SplitWriter(tmp, s, dtype) for s in SPLITS}
        try:
            total = sum(s.size for s in sources)
            docs = iter_documents(sources, text_column=text_column, doc_sep=doc_sep, languages=by_input,
                                  lang_column=lang_column)
            langs = _Languages()
            batches = _batches(docs, batch_chars, total, long_chars=LONG_DOC_PIECES * piece_chars,
                               langs_out=langs.pending)
            dropped = _tokenize_into(writers, batches, tok, workers, dtype, seed, val_fraction, total, progress,
                                     piece_chars, langs)
            train, val = writers["train"], writers["validation"]
            if val_fraction > 0 and val.n_docs == 0 and train.n_docs >= 2 and train._last is not None:
                lang = train._last_lang
                ids, sents, nb = train.pop_last()
                one = np.ones(1, np.int64)
                val.write(ids, one * len(ids), sents, one * len(sents), one * nb, lang)
            lang_codes = langs.codes()
            counts = {s: w.finish(lang_codes) for s, w in writers.items()}
        finally:
            for w in writers.values():
                w.close()
        if counts["test"]["documents"] == 0:  # a test split exists only for corpora that have one
            for suffix in ("tokens.bin", "docs.npy", "sents.npy", "langs.npy"):
                (tmp / f"test.{suffix}").unlink(missing_ok=True)
            del counts["test"]
        found = {c for v in counts.values() for c, n in v.get("languages", {}).items() if n["tokens"]}
        for inp, code in by_input.items():  # a declared language whose text all went (other lang fields, no tokens)
            if code not in found:
                raise DataError(f"--language {code} ({inp}): no text in this language after reading and tokenizing")
        totals = {k: sum(c[k] for c in counts.values()) for k in ("tokens", "documents", "sentences", "bytes")}
        totals["dropped_documents"] = dropped
        if totals["documents"] == 0:
            raise DataError(f"{', '.join(s.path for s in sources)}: no tokens: every document is empty after tokenization")
        seconds = time.perf_counter() - t0
        meta = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tokenizer": {"fingerprint": tok.fingerprint, "kind": tok.kind, "vocab_size": tok.vocab_size},
            "dtype": dtype.name,
            "splits": counts,
            "totals": totals,
            "sources": plan["sources"],
            "options": plan["options"],
            "seconds": round(seconds, 3),
            "mb_per_s": round(totals["bytes"] / 1e6 / max(seconds, 1e-9), 3),
            "tokens_per_s": round(totals["tokens"] / max(seconds, 1e-9), 1),
            "workers": workers,
            "plan": plan,
        }
        if lang_codes is not None:
            meta["languages"] = lang_codes
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return _summary(meta, out, skipped=False)


def _dispatch(
    writers: dict[str, _SplitWriter], ids: np.ndarray, lens: np.ndarray, sent_rel: np.ndarray,
    n_sents: np.ndarray, codes: np.ndarray, doc_bytes: np.ndarray, lang_ids: np.ndarray | None = None,
) -> None:
    """Route a worker result to the split writers: one write per run of consecutive documents of
    the same split and language (a batch holds a handful of validation documents among hundreds)."""
    if not len(lens):
        return
    if lang_ids is None:
        lang_ids = np.zeros(len(lens), np.int64)
    key = codes.astype(np.int64) + 4 * np.asarray(lang_ids, np.int64)  # (n_docs,) split and language
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    if not len(cuts):  # the common case: the whole batch goes to one split
        writers[SPLITS[codes[0]]].write(ids, lens, sent_rel, n_sents, doc_bytes, int(lang_ids[0]))
        return
    bounds = np.concatenate(([0], cuts, [len(lens)])).tolist()
    tok_at = np.concatenate(([0], np.cumsum(lens))).tolist()  # token offset of each document
    sent_at = np.concatenate(([0], np.cumsum(n_sents))).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        writers[SPLITS[codes[a]]].write(
            ids[tok_at[a]:tok_at[b]], lens[a:b], sent_rel[sent_at[a]:sent_at[b]], n_sents[a:b], doc_bytes[a:b],
            int(lang_ids[a]),
        )
