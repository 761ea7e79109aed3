"""The types shared by corpus reading (:mod:`.corpus`) and the built-in corpora (:mod:`.builtin`):
one :class:`Document` of a corpus and one resolved input :class:`Source`. They live here, apart
from both readers, so that neither has to import the other to name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["BUILTIN_PREFIX", "Document", "RawTexts", "Source"]

#: what names a built-in corpus or task among file inputs (``builtin:reviews``)
BUILTIN_PREFIX = "builtin:"


class Document(NamedTuple):
    """One document of a corpus.

    ``split`` is a hint from corpora with official splits (PTB): ``"train"``, ``"validation"``,
    ``"test"`` or ``None`` (let ``prepare`` decide). ``lang`` is the document's language code
    (:data:`~transferlab.data.multilingual.LANGUAGES`) when its source declares one, else ``None``.
    """

    text: str
    source: str
    line: int
    split: str | None = None
    lang: str | None = None


@dataclass(frozen=True)
class Source:
    """One readable input after resolving folders: a file (with its format) or a built-in."""

    path: str
    format: str | None  # None for built-ins
    size: int
    mtime: float
    group: str = ""  # the input as given (a folder for files found inside it)

    @property
    def is_builtin(self) -> bool:
        return self.path.startswith(BUILTIN_PREFIX)


class RawTexts(list):
    """Tokenizer training inputs that are texts, never paths: a document without spaces that
    holds a ``/`` (Chinese, Japanese, Thai text) must not be taken for a file name
    (:func:`~transferlab.data.multilingual.sample_by_language` returns one)."""

