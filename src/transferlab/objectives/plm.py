"""Permuted language modelling (XLNet, Yang et al. 2019), in the variant of BART's comparison.

BART §4.1: "Based on XLNet, we sample 1/6 of the tokens, and generate them in a random order
autoregressively. For consistency with other models, we do not implement the relative
positional embeddings or attention across segments from XLNet." This module implements exactly
that: **XLNet's two-stream attention with partial prediction**, absolute positions (learned,
sinusoidal or rotary, whatever the encoder has) and no Transformer-XL segment recurrence.

Factorisation order, per sequence (as XLNet's ``_local_perm``): ``predict_frac`` (1/6) of the
maskable tokens (never a special token, never padding; the count stochastically rounded) are the
*targets*; they come last in the order, in a uniformly random order among themselves. All other
tokens are *context*: first in the order and mutually visible (XLNet gives them the smallest
rank, so a partial prediction is bidirectional over the context).

Two streams in one stack: the content stream is the ``T`` input tokens as they are (nothing is
replaced by [MASK]); the query stream is ``W = ceil(predict_frac * T)`` slots appended after them,
one per target in factorisation order, each holding the [MASK] embedding (XLNet's learned ``w``)
at the *position* of the token it predicts (its position id). Every weight is shared between the
streams, as in XLNet. One (B, T + W, T + W) self-attention pattern gives both streams' masks:

* content token with rank ``r`` sees content tokens of rank ``<= r`` (context has rank 0, the
  k-th target rank k; so context sees context, a target also sees itself and earlier targets);
* the query slot of the target with rank ``k`` sees content tokens of rank ``< k``: never its
  own token, never a later target, never another query slot;
* no content token sees a query slot.

Information can only flow along these edges, so at every layer a query slot's state depends on
the context and on earlier targets only (the tests perturb later targets and check the
predictions do not move). The loss is the cross-entropy of the query slots (the targets), the
hidden states gathered before the LM head as in MLM.

Batch: ``input_ids`` (B, T + W) = content then query slots ([MASK], padding past a row's target
count), ``attention_mask`` (B, T + W) padding, ``attn_mask`` (B, T + W, T + W) bool pattern
(True = may attend), ``target_index`` (B, W) the content position each query slot predicts (-1 =
padding slot), ``labels`` (B, T + W) the target ids at the query slots, -100 elsewhere, and
``n_targets``. Position ids are built in the loss from ``target_index`` with the model's own
numbering (RoBERTa's pad-aware positions included).

Randomness is drawn per example (:mod:`.example_rng`): each row's target count and factorisation
order come from its own stream (keyed by the seed and its global position), nothing per batch,
so accumulation and ranks see exactly one large batch's orders.

Cost: the stack runs on ``T + W`` tokens (7/6 of the sequence), and only the ``K`` query slots
reach the vocabulary projection; :meth:`PermutedLM.step_flops` bills exactly that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Family, Position
from ..errors import ConfigError
from ..specials import SpecialIds
from . import masking
from .base import Objective, as_tokenizer_ids, make_config, ratio
from .losses import sparse_ce
from .datasets import PackedWindows
from .mlm import encoder_rows, wrap_ids


@dataclass
class PLMConfig:
    """Permuted LM settings (defaults: BART's comparison, XLNet's K = 6)."""

    predict_frac: float = 1.0 / 6.0
    """Fraction of the maskable tokens that are predicted (the last part of the factorisation order)."""

    def validate(self) -> "PLMConfig":
        if not 0.0 < self.predict_frac < 1.0:
            raise ConfigError(f"predict_frac must be in (0, 1), got {self.predict_frac}")
        return self


def query_slots(width: int, frac: float) -> int:
    """Query-stream slots for content rows of ``width`` tokens: ``ceil(frac * width)``, at least
    1; never fewer than the targets any row of that width can have."""
    return max(int(math.ceil(frac * width - 1e-9)), 1)


def factorisation_order(cand: np.ndarray, valid: np.ndarray, frac: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Targets and their order for every row.

    Args:
        cand: (B, T) bool, tokens that may be predicted.
        valid: (B, T) bool, non-padding tokens (at least one of them stays context, so every
            query slot sees some token: an empty attention row would see everything).
        frac: fraction of each row's candidates that are predicted (stochastically rounded).

    Returns:
        rank (B, T) int64: 0 for context tokens, k (1..K) for the k-th target in the
        factorisation order; n_targets (B,) int64.
    """
    B, T = cand.shape
    n = cand.sum(1)
    k = masking.stochastic_round(frac * n, rng)
    k = np.clip(k, 0, np.maximum(valid.sum(1) - 1, 0))  # at least one context token per row
    keys = rng.random((B, T))
    keys[~cand] = 2.0
    order = np.argsort(keys, axis=1, kind="stable")  # a uniform random order of each row's candidates
    pos_in_order = np.empty_like(order)
    np.put_along_axis(pos_in_order, order, np.broadcast_to(np.arange(T), (B, T)), axis=1)
    rank = np.where(pos_in_order < k[:, None], pos_in_order + 1, 0).astype(np.int64)
    return rank, k.astype(np.int64)


def permutation_mask(rank: np.ndarray, width: int) -> np.ndarray:
    """(B, T + width, T + width) bool two-stream pattern (True = may attend) from ``rank``."""
    B, T = rank.shape
    L = T + width
    out = np.zeros((B, L, L), dtype=bool)
    out[:, :T, :T] = rank[:, None, :] <= rank[:, :, None]  # content: keys of rank <= own rank
    k = np.arange(1, width + 1)  # the rank each query slot predicts
    out[:, T:, :T] = rank[:, None, :] < k[None, :, None]  # query: keys strictly earlier in the order
    return out


class PermutedLM(Objective):
    """XLNet permuted LM (two-stream, BART's variant); needs an encoder with an ``lm`` head.

    The encoder's positions must be absolute or rotary (a query slot carries its target's position).
    """

    name = "plm"
    #: factorisation orders drawn per example (objectives.example_rng): the same whatever the batch split
    per_example_rng = True
    metric_names = ("plm_loss", "plm_acc")
    family = Family.ENCODER
    heads = {"lm": {}}

    def __init__(self, tokenizer: Any, config: PLMConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`PLMConfig`; keyword ``settings`` override its fields.
        """
        sp = self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(PLMConfig, config, settings, self.name)
        # the query stream's input: [MASK] (a unigram vocabulary has none: its first sentinel)
        self.mask_id = sp.mask_token_id if sp.mask_token_id is not None else (
            sp.sentinel_token_ids[0] if sp.sentinel_token_ids else None)
        if self.mask_id is None:
            raise ConfigError("objective 'plm' needs a tokenizer with mask_token (the query stream's input); "
                              "train or load one that defines it")
        self.first, self.last = wrap_ids(sp)
        self.pad_id = SpecialIds.resolve(tokenizer=sp).pad

    @property
    def n_wrap(self) -> int:
        return (self.first is not None) + (self.last is not None)

    def slots(self, seq_len: int) -> int:
        """Query slots appended to a sequence of ``seq_len`` tokens."""
        return query_slots(seq_len, self.config.predict_frac)

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an encoder with an ``lm`` head whose positions can
        place a query slot at its target's position (learned, sinusoidal or rotary)."""
        cfg = self._check_common(cfg, Family.ENCODER, self.sp)
        pos = Position(cfg.position)
        if pos in (Position.RELATIVE, Position.NONE):
            raise ConfigError(
                f"objective 'plm' needs absolute or rotary positions (model.position=learned, sinusoidal or "
                f"rotary), got model.position={pos.value}: a query slot must carry its target's position")

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Windows of ``seq_len - 2`` content tokens, documents separated by [SEP] (as mlm)."""
        if seq_len - self.n_wrap < 2:
            raise ConfigError(f"plm needs seq_len >= {self.n_wrap + 2}, got {seq_len}")
        return PackedWindows(shards, seq_len - self.n_wrap, separator=self.last)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> content + query slots, the two-stream pattern, labels (see the module docstring)."""
        ids, am = encoder_rows(examples, self.first, self.last, self.pad_id)  # (B, T)
        self.sp.check_ids(ids)
        B, T = ids.shape
        cand = ~self.sp.is_special[ids] & (am > 0)
        rank, k = factorisation_order(cand, am > 0, self.config.predict_frac, rng)
        W = max(self.slots(T), int(k.max(initial=0)))
        target_index = np.full((B, W), -1, dtype=np.int64)
        r, c = np.nonzero(rank > 0)
        target_index[r, rank[r, c] - 1] = c  # slot k-1 predicts the target of rank k
        valid = target_index >= 0
        slot_ids = np.where(valid, self.mask_id, self.pad_id)
        labels = np.full((B, T + W), -100, dtype=np.int64)
        labels[:, T:] = np.where(valid, np.take_along_axis(ids, np.maximum(target_index, 0), axis=1), -100)
        return {
            "input_ids": torch.from_numpy(np.concatenate([ids, slot_ids], axis=1)),
            "attention_mask": torch.from_numpy(np.concatenate([am, valid.astype(np.int64)], axis=1)),
            "attn_mask": torch.from_numpy(permutation_mask(rank, W)),
            "target_index": torch.from_numpy(target_index),
            "labels": torch.from_numpy(labels),
            "n_targets": torch.tensor(int(k.sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        model = self._model_of(module)
        ids, am, tgt = batch["input_ids"], batch["attention_mask"], batch["target_index"]
        T = ids.shape[1] - tgt.shape[1]
        content_pos = model.backbone.position_ids(ids[:, :T], am[:, :T])  # (B, T) the model's own numbering
        query_pos = torch.gather(content_pos, 1, tgt.clamp(min=0))  # (B, W) each target's position
        out = model.backbone(input_ids=ids, attention_mask=am, attn_mask=batch["attn_mask"],
                             position_ids=torch.cat([content_pos, query_pos], dim=1))
        loss_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"])
        return loss_sum, {"plm_loss": ratio(loss_sum, n), "plm_acc": ratio(correct, n)}

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step: ``step_tokens / (seq_len + W)`` sequences of ``seq_len + W``
        tokens (content + query slots), only the ``n_targets`` query slots reaching the vocabulary."""
        from ..cost import estimate_flops

        L = seq_len + self.slots(seq_len)
        n_seq = step_tokens / L
        if n_seq <= 0:
            return 0.0
        return n_seq * estimate_flops(cfg, L, "train", None, n_targets / n_seq)
