"""Model inputs for fine-tuning: special-token layout, position limits, padding and batching.

Every task type builds its sequences with :class:`InputBuilder` (special tokens come from the
tokenizer, so one code path serves every family) and batches them with the helpers here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..config import ModelConfig, Position
from ..specials import SpecialIds

#: label id the losses ignore (positions without a target)
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
        self.pad_id = SpecialIds.resolve(cfg, tok).pad  # the one rule: tokenizer's, config's, eos, 0
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
    """First decoder input of an encoder-decoder, by :meth:`~transferlab.specials.SpecialIds.resolve`'s rule.

    Args:
        cfg: the model's config.
        tok: its tokenizer.

    Returns:
        The config's ``decoder_start_token_id``, else pad (T5-style), eos (BART), bos or pad.
    """
    ids = SpecialIds.resolve(cfg, tok)
    return ids.decoder_start if ids.decoder_start is not None else ids.pad  # None only for a decoder-only config


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

