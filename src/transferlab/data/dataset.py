"""Reading prepared shards: :class:`TokenShards` (one split).

Assumptions (stated, as OLMo does for its memmap dataset):

* a split is one flat array of token ids (``uint16``/``uint32``), documents concatenated without
  separators; ``doc_offsets[i]`` is where document ``i`` starts and ``doc_offsets[-1]`` is the
  number of tokens; ``sent_offsets`` likewise for sentences, and every document start is a
  sentence start;
* when the corpus declared languages, ``{split}.langs.npy`` holds one int16 per document, an
  index into meta.json's ``languages``; without it (folders prepared before languages, or
  without any declared) every document is of the one language ``und``;
* everything is memory-mapped: opening a split and reading a window costs O(1) memory whatever
  the corpus size, and a dataset pickles without its arrays (DataLoader workers re-open them).

The objectives' views over a split (packed windows, sentence chunks, sentence pairs) live in
:mod:`transferlab.objectives.datasets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["TokenShards"]


class TokenShards:
    """One split of a folder written by :func:`~transferlab.data.prepare_corpus`.

    Attributes:
        path: the folder; ``split``: ``train``, ``validation`` or ``test``; ``meta``: meta.json.
        tokens: flat ``np.memmap`` of ids; ``doc_offsets``, ``sent_offsets``: int64 memmaps.
        languages: language codes (index = language id; ``["und"]`` without a language index);
        doc_langs: language id of every document, ``(n_docs,)``.
    """

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path = Path(path)
        self.split = split
        meta_file = self.path / "meta.json"
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such prepared dataset; run `transferlab prepare` first")
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"{self.path}: not a prepared dataset or an incomplete one (no meta.json); "
                "run `transferlab prepare` (again)"
            ) from None
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_file}: unreadable ({e})") from None
        _check_meta(self.meta, meta_file)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise DataError(f"{self.path}: no split {split!r} (available: {', '.join(splits) or 'none'})")
        self.dtype = np.dtype(self.meta["dtype"])
        self.n_tokens = int(splits[split]["tokens"])
        self.n_docs = int(splits[split]["documents"])
        self.n_sents = int(splits[split]["sentences"])
        f = self._file("tokens.bin")
        if not f.is_file() or f.stat().st_size != self.n_tokens * self.dtype.itemsize:
            raise DataError(f"{f}: missing or incomplete (expected {self.n_tokens} tokens); run `transferlab prepare --force`")
        for kind in ("docs.npy", "sents.npy"):
            if not self._file(kind).is_file():
                raise DataError(f"{self._file(kind)}: missing; run `transferlab prepare --force`")
        self._tokens: np.ndarray | None = None
        self._docs: np.ndarray | None = None
        self._sents: np.ndarray | None = None
        self._langs: np.ndarray | None = None
        self._tokenizer: Any = None
        codes = self.meta.get("languages")
        self.has_languages = isinstance(codes, list) and self._file("langs.npy").is_file()
        self.languages: list[str] = [str(c) for c in codes] if self.has_languages else ["und"]

    def _file(self, suffix: str) -> Path:
        return self.path / f"{self.split}.{suffix}"

    # lazily opened memmaps (so that pickling for DataLoader workers is cheap) --------------------
    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            if self.n_tokens == 0:
                self._tokens = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens = np.memmap(self._file("tokens.bin"), dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._tokens

    @property
    def doc_offsets(self) -> np.ndarray:
        if self._docs is None:
            self._docs = np.load(self._file("docs.npy"), mmap_mode="r")
            if len(self._docs) != self.n_docs + 1:
                raise DataError(f"{self._file('docs.npy')}: has {len(self._docs) - 1} documents, meta.json says {self.n_docs}")
        return self._docs

    @property
    def sent_offsets(self) -> np.ndarray:
        if self._sents is None:
            self._sents = np.load(self._file("sents.npy"), mmap_mode="r")
            if len(self._sents) != self.n_sents + 1:
                raise DataError(f"{self._file('sents.npy')}: has {len(self._sents) - 1} sentences, meta.json says {self.n_sents}")
        return self._sents

    @property
    def doc_langs(self) -> np.ndarray:
        """Language id of every document (all 0 = ``und`` without a language index)."""
        if self._langs is None:
            if not self.has_languages:
                self._langs = np.zeros(self.n_docs, np.int16)
            else:
                self._langs = np.load(self._file("langs.npy"), mmap_mode="r")
                if len(self._langs) != self.n_docs or (self.n_docs and int(self._langs.max()) >= len(self.languages)):
                    raise DataError(f"{self._file('langs.npy')}: does not match meta.json ({len(self._langs)} "
                                    f"documents, {len(self.languages)} languages); run `transferlab prepare --force`")
        return self._langs

    def language_tokens(self) -> dict[str, int]:
        """Tokens of each language in this split (``{"und": n_tokens}`` without a language index)."""
        if not self.has_languages:
            return {"und": self.n_tokens}
        per = self.meta["splits"][self.split].get("languages", {})
        return {c: int(per.get(c, {}).get("tokens", 0)) for c in self.languages}

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the shards were made with (loaded on first use)."""
        if self._tokenizer is None:
            from ..tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_pretrained(self.path / "tokenizer")
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_tokens=None, _docs=None, _sents=None, _langs=None)
        return state

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, split={self.split!r}, tokens={self.n_tokens}, docs={self.n_docs})"

    # documents and sentences ------------------------------------------------------------------
    def _check_doc(self, i: int) -> int:
        if i < 0:
            i += self.n_docs
        if not 0 <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for {self.n_docs} documents")
        return i

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (int64 copy)."""
        i = self._check_doc(i)
        a, b = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        return np.asarray(self.tokens[a:b], dtype=np.int64)

    def sentence_offsets_of(self, i: int) -> np.ndarray:
        """Token offsets (into the split) of the sentences of document ``i``, end included."""
        i = self._check_doc(i)
        a, b = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        so = self.sent_offsets
        lo, hi = np.searchsorted(so, a, "left"), np.searchsorted(so, b, "left")
        return np.append(np.asarray(so[lo:hi], dtype=np.int64), b)


def _check_meta(meta: Any, where: Path) -> None:
    """The shape of a prepared dataset's meta.json: a one-line error naming the field, not a TypeError."""
    if not isinstance(meta, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    splits = meta.get("splits", {})
    if not isinstance(splits, dict):
        raise DataError(f"{where}: splits: expected an object of split name -> counts, got {splits!r}")
    if not isinstance(meta.get("dtype"), str):
        raise DataError(f"{where}: dtype: expected a numpy dtype name such as 'uint16', got {meta.get('dtype')!r}")
    for name, c in splits.items():
        if not isinstance(c, dict) or not all(isinstance(c.get(k), int) and not isinstance(c.get(k), bool) and c[k] >= 0
                                              for k in ("tokens", "documents", "sentences")):
            raise DataError(f"{where}: splits.{name}: expected tokens, documents and sentences as counts, got {c!r}")

