"""``--init-embeddings PATH``: start any model's token embeddings from word2vec vectors.

The source is a ``word2vec`` model folder of ours (``transferlab pretrain --preset word2vec-256
--objective skipgram``: its ``model/`` holds the vectors and the tokenizer) or a word2vec text
file (gensim's ``KeyedVectors.save_word2vec_format(binary=False)``, fastText's ``.vec``: an
optional ``count width`` header, then ``token v_1 ... v_d`` per line).

Vocabularies are matched by token string: a model token takes the source row of the same token;
a token that marks a word start (byte-level BPE ``Ġcat``, SentencePiece ``▁cat``) falls back to
the bare word (``cat``) when the source has no such token (a file of whole words). Special tokens
keep their own initialisation on both sides. There is no projection between widths: vectors of
another width are refused with both widths named, and an overlap below :data:`MIN_OVERLAP` of the
model's ordinary tokens is refused with the overlap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError

#: the smallest share of the model's ordinary (non-special) tokens that must find a vector
MIN_OVERLAP = 0.05
#: word-start markers of byte-level BPE and SentencePiece pieces
_WORD_START = ("Ġ", "▁")


@dataclass
class EmbeddingInit:
    """What :func:`init_embeddings` did."""

    path: str
    matched: int  #: model tokens given a source vector
    total: int  #: ordinary (non-special) model tokens
    width: int

    @property
    def overlap(self) -> float:
        return self.matched / max(self.total, 1)

    def format(self) -> str:
        return (f"init-embeddings: matched {self.matched:,} of {self.total:,} tokens ({100 * self.overlap:.1f}%) "
                f"from {self.path} (width {self.width})")


def load_vectors(path: str | Path) -> tuple[dict[str, int], torch.Tensor, set[str]]:
    """Token vectors from a word2vec model folder of ours or a word2vec text file.

    Args:
        path: the folder (``config.json`` with ``family: word2vec``, weights, tokenizer) or file.

    Returns:
        ``(token -> row, vectors (N, d) float32, special tokens of the source)``.

    Raises:
        ConfigError: a folder that is not a word2vec model; DataError: an unreadable text file.
    """
    p = Path(path)
    if p.is_dir():
        from ..models.model import from_pretrained, read_config
        from ..tokenizer import Tokenizer

        raw = read_config(p)
        if raw.get("family") != "word2vec":
            raise ConfigError(f"--init-embeddings {p}: a model of family {raw.get('family')!r}, not word2vec "
                              "(give a word2vec model folder or a word2vec text file)")
        model = from_pretrained(p)
        tok = Tokenizer.from_pretrained(p)
        vecs = model.backbone.vectors().detach().float()  # (V, d) what the family's forward returns
        specials = {tok.convert_ids_to_tokens(i) for i in tok.all_special_ids}
        return {t: i for t, i in tok.get_vocab().items() if i < vecs.shape[0]}, vecs, specials
    if not p.is_file():
        raise ConfigError(f"--init-embeddings {p}: no such folder or file")
    return _read_text_vectors(p) + (set(),)


def _read_text_vectors(p: Path) -> tuple[dict[str, int], torch.Tensor]:
    rows: list[list[float]] = []
    index: dict[str, int] = {}
    width = None
    with p.open(encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if n == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                continue  # the "count width" header
            if len(parts) < 2:
                continue
            try:
                values = [float(x) for x in parts[1:]]
            except ValueError:
                raise DataError(f"{p}:{n}: expected 'token v_1 ... v_d' (numbers), got {line[:60]!r}") from None
            width = width or len(values)
            if len(values) != width:
                raise DataError(f"{p}:{n}: {len(values)} numbers, the lines above have {width}")
            if parts[0] not in index:
                index[parts[0]] = len(rows)
                rows.append(values)
    if not rows:
        raise DataError(f"{p}: no vectors (expected word2vec text format: 'token v_1 ... v_d' per line)")
    return index, torch.tensor(rows, dtype=torch.float32)


def init_embeddings(model: nn.Module, tokenizer: Any, path: str | Path, min_overlap: float = MIN_OVERLAP,
                    quiet: bool = False) -> EmbeddingInit:
    """Copy the vectors of ``path`` into ``model``'s token embeddings, matched by token string.

    Args:
        model: any model with ``get_input_embeddings()`` (V, E).
        tokenizer: the model's tokenizer (its tokens name the rows).
        path: a word2vec model folder or a word2vec text file (see the module docstring).
        min_overlap: refuse when fewer than this share of the model's ordinary tokens match.
        quiet: do not print the matched count.

    Returns:
        :class:`EmbeddingInit` with the counts (printed unless ``quiet``).

    Raises:
        ConfigError: another width, or an overlap below ``min_overlap``.
    """
    table = model.get_input_embeddings().weight  # (V, E)
    index, vecs, src_special = load_vectors(path)
    if vecs.shape[1] != table.shape[1]:
        raise ConfigError(f"--init-embeddings {path}: the vectors are {vecs.shape[1]} wide, the model's token "
                          f"embeddings {table.shape[1]} (model.emb_dim); train vectors of width {table.shape[1]} "
                          "(a projection between widths is not supported)")
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    rows, src = [], []
    total = 0
    for tok, i in tokenizer.get_vocab().items():
        if i in special_ids or i >= table.shape[0]:
            continue
        total += 1
        j = index.get(tok) if tok not in src_special else None
        if j is None and tok[:1] in _WORD_START and len(tok) > 1:
            j = index.get(tok[1:]) if tok[1:] not in src_special else None
        if j is not None:
            rows.append(i)
            src.append(j)
    result = EmbeddingInit(str(path), len(rows), total, int(table.shape[1]))
    if not rows or result.overlap < min_overlap:
        raise ConfigError(f"--init-embeddings {path}: only {len(rows):,} of the model's {total:,} tokens "
                          f"({100 * result.overlap:.1f}%) have a vector there (need at least {100 * min_overlap:.0f}%); "
                          "use vectors trained with the model's tokenizer or on words it keeps whole")
    with torch.no_grad():
        table[torch.tensor(rows)] = vecs[torch.tensor(src)].to(table.dtype)
    if not quiet:
        print(result.format(), file=sys.stderr)
    return result
