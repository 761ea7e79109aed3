"""Masked sequence-to-sequence pre-training (MASS, Song et al. 2019), as in BART's comparison.

BART §4.1: "Masked Seq-to-Seq: Inspired by MASS, we mask a span containing 50% of tokens, and
train a sequence to sequence model to predict the masked tokens."

For a row with ``m`` content tokens (between the wrap tokens ``<s> ... </s>`` or
``[CLS] ... [SEP]``), one contiguous fragment of ``k = round(mask_ratio * m)`` tokens (at least 1,
at most ``m - 1``: MASS's 50%) starts at a uniformly random content position. Then, as in the
MASS paper (§2.2, Figure 1):

* encoder input: the row with the fragment's tokens replaced BERT-style (``mask_token_frac``
  [MASK], ``random_token_frac`` a random non-special token, the rest kept; MASS: 80/10/10);
* decoder: predicts the fragment ``x[u:u+k]``. Its input is the fragment shifted right,
  ``[M] x[u] ... x[u+k-2]``: the token before the fragment is visible in the encoder, so MASS
  masks it in the decoder, where every position outside the fragment is masked. Those masked
  positions carry no information, so (as the MASS implementation does) they are not fed at all:
  the decoder gets only the ``k`` fragment positions, each with its **original position id**
  (``decoder_position_ids``), so it knows where in the sentence it is.

The first decoder input is ``decoder_start_token_id`` (default: the mask token, MASS's [M]);
:func:`~transferlab.training.pretrain.fit_config_to_tokenizer` sets the model's
``decoder_start_token_id`` to it, and ``check_model`` refuses a model whose start token differs.

Batch: ``input_ids``, ``attention_mask`` (B, T); ``decoder_input_ids``, ``decoder_attention_mask``,
``decoder_position_ids``, ``labels`` (B, K) with ``K`` the longest fragment (-100 / 0 past a
row's fragment); ``n_targets`` = fragment tokens. Windows are packed (documents separated by
``</s>``, as mlm), so every row has ``seq_len`` tokens and a ``round(mask_ratio * (seq_len - 2))``
fragment: the decoder runs on about half the tokens of the encoder, which
:meth:`MaskedSeq2Seq.step_flops` bills.

Randomness is drawn per example (:mod:`.example_rng`): each row's fragment start and its
80/10/10 choices come from its own stream (keyed by the seed and its global position), nothing
per batch, so accumulation and ranks see exactly one large batch's fragments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Family
from ..errors import ConfigError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, ratio
from .losses import sparse_ce
from .datasets import PackedWindows
from .mlm import encoder_rows, wrap_ids


@dataclass
class MASSConfig:
    """Masked seq2seq settings (defaults: MASS / BART's comparison)."""

    mask_ratio: float = 0.5
    """Length of the masked fragment as a fraction of the row's content tokens."""
    mask_token_frac: float = 0.8
    """Of the fragment's encoder tokens, the fraction replaced by [MASK]."""
    random_token_frac: float = 0.1
    """Of the fragment's encoder tokens, the fraction replaced by a random non-special token (the rest is kept)."""
    decoder_start_token_id: int | None = None
    """First decoder input; None = the mask token (MASS's [M]). Should equal model.decoder_start_token_id."""

    def validate(self) -> "MASSConfig":
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for f in ("mask_token_frac", "random_token_frac"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{f} must be in [0, 1], got {getattr(self, f)}")
        if self.mask_token_frac + self.random_token_frac > 1.0 + 1e-9:
            raise ConfigError(f"mask_token_frac + random_token_frac must be <= 1, got "
                              f"{self.mask_token_frac} + {self.random_token_frac}")
        return self


def fragment_length(m: np.ndarray, ratio: float) -> np.ndarray:
    """MASS fragment length for ``m`` content tokens: ``round(ratio * m)`` (half up), clipped to
    ``[1, m - 1]`` so something is masked and something stays visible (``m`` itself when m < 2)."""
    m = np.asarray(m, np.int64)
    k = np.floor(ratio * m + 0.5).astype(np.int64)
    return np.where(m >= 2, np.clip(k, 1, np.maximum(m - 1, 1)), m)


class MaskedSeq2Seq(Objective):
    """MASS masked seq2seq; the model needs an encoder-decoder with an ``lm`` head."""

    name = "mass"
    #: fragments drawn per example (objectives.example_rng): the same whatever the batch split
    per_example_rng = True
    metric_names = ("mass_loss", "mass_acc")
    family = Family.ENCODER_DECODER
    heads = {"lm": {}}

    def __init__(self, tokenizer: Any, config: MASSConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`MASSConfig`; keyword ``settings`` override its fields.
        """
        sp = self.sp = as_tokenizer_ids(tokenizer)
        cfg = self.config = make_config(MASSConfig, config, settings, self.name)
        self.mask_id = sp.mask_token_id if sp.mask_token_id is not None else (
            sp.sentinel_token_ids[0] if sp.sentinel_token_ids else None)
        if self.mask_id is None:
            raise ConfigError("objective 'mass' needs a tokenizer with mask_token (or a sentinel); "
                              "train or load one that defines it")
        if cfg.random_token_frac > 0 and len(sp.normal_ids) == 0:
            raise ConfigError("mass: the vocabulary has no non-special token to draw random replacements from")
        self.first, self.last = wrap_ids(sp)
        self.pad_id = SpecialIds.resolve(tokenizer=sp).pad
        # the collator's start is an objective setting (the rule's explicit id); MASS's default is [M]
        self.start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else self.mask_id

    @property
    def n_wrap(self) -> int:
        return (self.first is not None) + (self.last is not None)

    def fragment(self, seq_len: int) -> int:
        """Decoder length for full windows of ``seq_len`` tokens."""
        return int(fragment_length(np.array([seq_len - self.n_wrap]), self.config.mask_ratio)[0])

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an encoder-decoder with an ``lm`` head whose
        ``decoder_start_token_id`` (when set) is the one the collator uses."""
        cfg = self._check_common(cfg, Family.ENCODER_DECODER, self.sp)
        if cfg.decoder_start_token_id >= 0 and cfg.decoder_start_token_id != self.start:
            raise ConfigError(
                f"model.decoder_start_token_id={cfg.decoder_start_token_id} but the mass collator starts "
                f"decoding with {self.start}; set one to match the other")

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Windows of ``seq_len - 2`` content tokens, documents separated by ``</s>``/[SEP]."""
        if seq_len - self.n_wrap < 2:
            raise ConfigError(f"mass needs seq_len >= {self.n_wrap + 2}, got {seq_len}")
        return PackedWindows(shards, seq_len - self.n_wrap, separator=self.last)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> encoder input with one masked fragment, decoder input/positions/labels."""
        cfg, sp = self.config, self.sp
        ids, am = encoder_rows(examples, self.first, self.last, self.pad_id)  # (B, T)
        sp.check_ids(ids)
        B, T = ids.shape
        lead = int(self.first is not None)
        m = am.sum(1) - self.n_wrap  # (B,) content tokens
        k = fragment_length(m, cfg.mask_ratio)  # (B,)
        start = lead + np.floor(rng.random(B) * (m - k + 1)).astype(np.int64)  # (B,) first fragment position
        K = max(int(k.max(initial=0)), 1)
        j = np.arange(K)[None, :]
        in_frag = j < k[:, None]  # (B, K)
        pos = np.where(in_frag, start[:, None] + j, 0)  # (B, K) positions of the fragment tokens
        target = np.take_along_axis(ids, pos, axis=1)
        labels = np.where(in_frag, target, -100)
        dec = np.full((B, K), self.pad_id, dtype=np.int64)
        dec[:, 0] = self.start
        dec[:, 1:] = np.where(in_frag[:, 1:], target[:, :-1], self.pad_id)  # shifted right
        # encoder: BERT's 80/10/10 on the fragment
        r = rng.random((B, K))
        inputs = ids.copy()
        rows = np.broadcast_to(np.arange(B)[:, None], (B, K))
        to_mask = in_frag & (r < cfg.mask_token_frac)
        to_rand = in_frag & (r >= cfg.mask_token_frac) & (r < cfg.mask_token_frac + cfg.random_token_frac)
        inputs[rows[to_mask], pos[to_mask]] = self.mask_id
        n_rand = int(to_rand.sum())
        if n_rand:
            # drawn per position (B, K), not as a flat run of n_rand: each row's draws are its own (ExampleRNG)
            inputs[rows[to_rand], pos[to_rand]] = sp.normal_ids[rng.integers(0, len(sp.normal_ids), (B, K))[to_rand]]
        return {
            "input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.from_numpy(am),
            "decoder_input_ids": torch.from_numpy(dec),
            "decoder_attention_mask": torch.from_numpy(in_frag.astype(np.int64)),
            "decoder_position_ids": torch.from_numpy(pos),
            "labels": torch.from_numpy(labels),
            "n_targets": torch.tensor(int(k.sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        model = self._model_of(module)
        out = model.backbone(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
            decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch.get("decoder_attention_mask"),
            decoder_position_ids=batch.get("decoder_position_ids"),
        )
        loss_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"], dense=True)
        return loss_sum, {"mass_loss": ratio(loss_sum, n), "mass_acc": ratio(correct, n)}

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step: ``step_tokens / (seq_len + K)`` sequences with a
        ``seq_len``-token encoder and a ``K``-token decoder (the fragment), every decoder row
        reaching the vocabulary projection."""
        from ..cost import estimate_flops

        Td = max(self.fragment(seq_len), 1)
        n_seq = step_tokens / (seq_len + Td)
        if n_seq <= 0:
            return 0.0
        return n_seq * estimate_flops(cfg, seq_len, "train", Td)
