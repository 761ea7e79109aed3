"""Multitask masked language modelling (UniLM, Dong et al. 2019), as in BART's comparison.

BART §4.1: "As in UniLM, we train a Masked Language Model with additional self-attention masks.
Self attention masks are chosen randomly in with the follow proportions: 1/6 left-to-right, 1/6
right-to-left, 1/3 unmasked, and 1/3 with the first 50% of tokens unmasked and a left-to-right
mask for the remainder."

The masking is BERT's (:class:`~transferlab.objectives.mlm.Masker`: 15% of the maskable tokens,
80/10/10, the same settings as mlm). On top of it, every batch draws one self-attention mode
(UniLM switches the objective per batch), with the weights above:

* ``l2r`` — token ``i`` sees keys ``j <= i`` (itself and its left context, UniLM's
  unidirectional LM: a masked token is predicted from its left);
* ``r2l`` — keys ``j >= i``: the transpose of ``l2r``;
* ``bidirectional`` — every key (plain MLM);
* ``seq2seq`` — the first ``source_frac`` (50%) of each row's tokens are a source segment seen
  by every token and seeing only itself; the rest are a target segment with a left-to-right
  mask (key ``j`` visible iff ``j < s`` or ``j <= i``, ``s`` the row's source length, rounded
  half up).

Randomness: the token masks are drawn per example (the example's own stream, keyed by seed and
its global position, :mod:`.example_rng`); the attention mode is drawn per *step* (keyed by seed
and the step, :meth:`~transferlab.objectives.example_rng.ExampleRNG.per_step`), so every
micro-batch and rank of one optimiser step uses the same mode, as one process with the whole
batch would. (That needs the trainer to pass the step's first stream position; without it a
mode is drawn per micro-batch.)

Batch: mlm's (``input_ids``, ``attention_mask``, ``labels``, ``n_targets``) plus ``attn_mask``
(B, T, T) bool (True = may attend; all True for ``bidirectional``, which the model then skips
like an all-ones padding mask) and ``mtlm_mode`` (0-d long, an index into :data:`MODES`). The
model and cost are mlm's: one encoder pass, the masked positions gathered before the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..specials import SpecialIds
from .base import make_config, ratio
from .example_rng import ExampleRNG
from .losses import sparse_ce
from .mlm import MLM, Masker, MLMConfig, encoder_rows

MODES = ("l2r", "r2l", "bidirectional", "seq2seq")


@dataclass
class MTLMConfig(MLMConfig):
    """Masking settings (mlm's) and the self-attention mode weights (defaults: BART's comparison)."""

    l2r_weight: float = 1.0 / 6.0
    """Share of batches with a left-to-right mask."""
    r2l_weight: float = 1.0 / 6.0
    """Share of batches with a right-to-left mask."""
    bidirectional_weight: float = 1.0 / 3.0
    """Share of batches with no attention mask (plain MLM)."""
    seq2seq_weight: float = 1.0 / 3.0
    """Share of batches with a sequence-to-sequence mask (bidirectional source, left-to-right target)."""
    source_frac: float = 0.5
    """seq2seq: fraction of each row's tokens in the bidirectional source segment."""

    def validate(self) -> "MTLMConfig":
        super().validate()
        w = self.weights
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ConfigError(
                "mtlm: the mode weights (l2r_weight, r2l_weight, bidirectional_weight, seq2seq_weight) must be "
                f">= 0 with a positive sum, got {', '.join(f'{x:g}' for x in w)}")
        if not 0.0 < self.source_frac < 1.0:
            raise ConfigError(f"source_frac must be in (0, 1), got {self.source_frac}")
        return self

    @property
    def weights(self) -> np.ndarray:
        """(4,) weights of :data:`MODES`, in that order (not normalised)."""
        return np.array([self.l2r_weight, self.r2l_weight, self.bidirectional_weight, self.seq2seq_weight], float)


def mode_mask(mode: str, lengths: np.ndarray, T: int, source_frac: float = 0.5) -> np.ndarray:
    """(B, T, T) bool self-attention pattern of ``mode`` (True = query i may attend key j).

    Args:
        mode: one of :data:`MODES`.
        lengths: (B,) non-padding tokens per row (the seq2seq split is a share of these).
        T: padded row length.
        source_frac: seq2seq source share.
    """
    B = len(lengths)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    if mode == "l2r":
        m = np.broadcast_to(j <= i, (B, T, T))
    elif mode == "r2l":
        m = np.broadcast_to(j >= i, (B, T, T))
    elif mode == "bidirectional":
        m = np.ones((B, T, T), dtype=bool)
    elif mode == "seq2seq":
        src = np.floor(source_frac * np.asarray(lengths, np.float64) + 0.5).astype(np.int64)  # (B,)
        m = (j[None] < src[:, None, None]) | (j <= i)[None]
    else:
        raise ConfigError(f"mtlm: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return np.array(m, dtype=bool)  # a writable copy (a broadcast view is read-only)


class MultitaskMLM(MLM):
    """UniLM multitask masked LM (BART's variant); the model needs an encoder with an ``lm`` head."""

    name = "mtlm"
    metric_names = ("mtlm_loss", "mtlm_acc")
    lm_loss_metric = None  # its whole loss is the LM loss
    #: token masks per example, the attention mode per step (see the module docstring)
    per_example_rng = True

    def __init__(self, tokenizer: Any, config: MTLMConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: an :class:`MTLMConfig`; keyword ``settings`` override its fields.
        """
        from .base import as_tokenizer_ids
        from .mlm import wrap_ids

        self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(MTLMConfig, config, settings, self.name)
        self.masker = Masker(self.sp, self.config, self.name)
        self.first, self.last = wrap_ids(self.sp)
        self.pad_id = SpecialIds.resolve(tokenizer=self.sp).pad
        w = self.config.weights
        self.probs = w / w.sum()
        self.cum = np.cumsum(self.probs)

    def draw_mode(self, rng: np.random.Generator | ExampleRNG) -> int:
        """One mode (an index into :data:`MODES`) with the configured weights: one uniform draw.

        Args:
            rng: the trainer's per-example streams (the draw comes from their per-step generator,
                the same for every micro-batch and rank of the step) or a plain generator.

        Returns:
            The mode's index.
        """
        u = float(rng.per_step().random()) if isinstance(rng, ExampleRNG) else rng.random()
        return int(min(np.searchsorted(self.cum, u, side="right"), len(MODES) - 1))

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> mlm's batch + ``attn_mask`` (B, T, T) of one mode drawn for the batch, ``mtlm_mode``."""
        mode = self.draw_mode(rng)
        ids, am = encoder_rows(examples, self.first, self.last, self.pad_id)
        inputs, labels = self.masker(ids, am, rng)
        mask = mode_mask(MODES[mode], am.sum(1), ids.shape[1], self.config.source_frac)
        return {
            "input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.from_numpy(am),
            "attn_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
            "mtlm_mode": torch.tensor(mode),
            "n_targets": torch.tensor(int((labels != -100).sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        model = self._model_of(module)
        out = model.backbone(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"), attn_mask=batch.get("attn_mask"),
        )
        loss_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"])
        return loss_sum, {"mtlm_loss": ratio(loss_sum, n), "mtlm_acc": ratio(correct, n)}

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step: mlm's (``step_tokens / seq_len`` sequences, only the
        ``n_targets`` masked positions reaching the vocabulary projection)."""
        from ..cost import estimate_flops

        n_seq = step_tokens / seq_len
        if n_seq <= 0:
            return 0.0
        return n_seq * estimate_flops(cfg, seq_len, "train", None, n_targets / n_seq)
