"""A fast rule-based sentence splitter.

Next-sentence prediction and sentence permutation need sentence boundaries, and ``prepare`` must
find them for every document at tokenizer speed, so this is one compiled regex plus a few string
checks per candidate boundary (no per-character Python loop). nltk's punkt would be better on
abbreviations but its model is not available offline, so we do not use it.

Rules, in order:

* a line break inside a document always ends a sentence (paragraphs, one-sentence-per-line text);
* ``.``, ``!``, ``?`` or ``…`` (possibly repeated, possibly followed by closing quotes or brackets)
  followed by whitespace ends a sentence, unless the next character is lower case;
* after ``.`` we do not split when the word before the period is a known abbreviation (``Mr.``,
  ``Dr.``, ``Jan.``, ``etc.``; words that also end sentences, like "no" or "sat", are left out), a single letter (initials: ``J. R. R. Tolkien``) or contains a
  period itself (``U.S.``, ``e.g.``).

Lower-cased, pre-tokenised text (Rotten Tomatoes snippets, PTB) therefore splits only at line
breaks, which is the right answer for PTB (one sentence per line).
"""

from __future__ import annotations

import operator
import re
from typing import Sequence

import numpy as np

__all__ = ["split_sentences", "sentence_starts", "sentence_starts_batch", "ABBREVIATIONS"]

#: lower-cased words that are usually followed by a period without ending a sentence
ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr prof sr jr st mt ft vs etc inc ltd co corp plc bros dept approx
    jan feb apr jun jul aug sep sept oct nov dec tue tues thu thur thurs fri
    gen col lt sgt capt cmdr adm rev gov sen rep pres supt insp fig figs cf
    ave blvd rd hon messrs mme mlle vol vols pp eds
    """.split()
)


def _abbreviation_guards() -> str:
    # one fixed-width negative lookbehind per abbreviation length (re needs fixed widths)
    by_len: dict[int, list[str]] = {}
    for a in sorted(ABBREVIATIONS):
        by_len.setdefault(len(a), []).append(a)
    guards = [rf"(?<!\b(?i:{'|'.join(words)})\.)" for _, words in sorted(by_len.items())]
    guards.append(r"(?<!\b[^\W\d_]\.)")  # initials: "J. R. R. Tolkien"
    guards.append(r"(?<!\.[^\W\d_]\.)")  # words with periods: "U.S.", "e.g.", "Ph.D."
    return "".join(guards)


# One compiled pattern does all the work (Python only collects match positions). It starts with a
# single character class so the regex engine can skip quickly to candidates:
# * a line break (plus following whitespace) always ends a sentence;
# * terminal punctuation (+ closing quotes/brackets) + whitespace ends one when the next character
#   is not lower case and the word before the period is not an abbreviation.
_LOWER = "a-z\u00df-\u00ff"
_BOUNDARY = re.compile(
    r"[.!?\u2026\n]"  # a candidate character
    r"(?:(?<=\n)\s*"  # a line break: always a boundary
    r"|(?<=[.!?\u2026])" + _abbreviation_guards()  # punctuation not after an abbreviation,
    + r"[.!?\u2026]*['\"\u2019\u201d)\]]*"  # more punctuation, closing quotes/brackets,
    r"(\s+)(?=[^\s" + _LOWER + r"]))"  # whitespace, then a character that is not lower case
)


def _boundaries(text: str):
    """Yield ``(end_of_sentence, start_of_next)`` character positions."""
    n = len(text)
    for m in _BOUNDARY.finditer(text):
        nxt = m.end()
        if nxt >= n:
            break
        yield (m.start(1) if m.start(1) >= 0 else m.start()), nxt


_END = operator.methodcaller("end")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where the 2nd, 3rd, ... sentence of ``text`` start (cheap path).

    Args:
        text: one document.

    Returns:
        Increasing offsets, each the first non-space character of a sentence; the first
        sentence (starting at the first non-space character) is not included.
    """
    n = len(text)
    return [e for e in map(_END, _BOUNDARY.finditer(text)) if e < n]


# Joins documents for one regex pass. NUL is neither whitespace nor a candidate character, so no
# match can consume it: every match stays inside one document. A match may *look* at it (the
# "next character is not lower case" lookahead), which only happens at a document's last
# character, i.e. for a match ending at the document's end, which sentence_starts drops too. The
# lookbehinds see NUL where a lone document has its start, and both are non-word, non-letter,
# non-period, so they decide alike.
_JOIN = "\x00"


def sentence_starts_batch(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sentence_starts` of many documents in one regex pass (no per-document Python call).

    Args:
        texts: documents.

    Returns:
        ``(doc, offset)``: two int64 arrays of the same length, ordered by document and then by
        offset: ``offset[i]`` is where a sentence of ``texts[doc[i]]`` starts (not the first).
        Exactly the concatenation of ``sentence_starts(t)`` over the texts.
    """
    if not texts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.fromiter(map(len, texts), np.int64, len(texts))  # (n_docs,)
    starts = np.zeros(len(texts), np.int64)  # (n_docs,) offset of each document in the joined text
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    ends = np.fromiter(map(_END, _BOUNDARY.finditer(_JOIN.join(texts))), np.int64)  # (k,)
    doc = np.searchsorted(starts, ends, side="right") - 1
    offset = ends - starts[doc]
    keep = offset < lens[doc]  # a boundary at a document's very end starts no sentence
    return doc[keep], offset[keep]


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Split ``text`` into sentences.

    Args:
        text: one document (may contain line breaks).

    Returns:
        ``(start, end)`` character spans, in order, without surrounding whitespace; empty for a
        blank text. ``text[start:end]`` is the sentence.
    """
    stripped = text.lstrip()
    if not stripped:
        return []
    start = len(text) - len(stripped)
    spans = []
    for end, nxt in _boundaries(text):
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
        start = nxt
    end = len(text.rstrip())
    if end > start:
        spans.append((start, end))
    return spans
