"""T5 span corruption (Raffel et al., 2020): drop spans, mark each with a sentinel, predict them.

Exactly T5's ``random_spans_noise_mask`` (vectorised over the batch): for a sequence of ``L``
tokens, ``round(L * noise_density)`` noise tokens (clipped to [1, L-1]) form
``round(n_noise / mean_noise_span_length)`` spans; noise and non-noise lengths are each a random
partition (random segmentation) and they interleave starting with non-noise. Then

* inputs  = non-noise tokens with one sentinel per noise span, then ``</s>``;
* targets = each span's sentinel followed by its tokens, then ``</s>``:

``a b [c d] e f g [h] i`` -> inputs ``a b <X0> e f g <X1> i </s>``, targets
``<X0> c d <X1> h </s>`` (sentinels ``<extra_id_0>, <extra_id_1>, ...``).

Windows are ``raw_length(seq_len)`` tokens of the packed stream (T5's
``compute_input_and_target_lengths``), so every encoder input is exactly ``seq_len`` long (512
-> 568 raw tokens and 114 targets) and nothing is padded. ``decoder_input_ids`` are the targets
shifted right after ``decoder_start_token_id`` (T5: pad).

Randomness is drawn per example (:mod:`.example_rng`): each row's two random segmentations come
from its own stream (keyed by the seed and its global position), nothing per batch, so
accumulation and ranks corrupt every example exactly as one large batch would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Family
from ..errors import ConfigError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, pad_stack
from .datasets import PackedWindows
from .denoise import seq2seq_loss
from .example_rng import ExampleRNG, row_streams


@dataclass
class SpanCorruptionConfig:
    """T5 span-corruption settings (defaults: T5)."""

    noise_density: float = 0.15
    """Fraction of tokens that are noise (dropped from the input, predicted)."""
    mean_noise_span_length: float = 3.0
    """Mean length of a noise span."""
    separate_documents: bool = False
    """Insert eos between packed documents (T5 concatenates them bare)."""
    decoder_start_token_id: int | None = None
    """First decoder input; None = pad (T5). Should equal model.decoder_start_token_id."""

    def validate(self) -> "SpanCorruptionConfig":
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ConfigError(f"mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}")
        return self


def noise_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of ``length``, as T5 computes them."""
    n_noise = min(max(int(round(length * density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    return n_noise, n_spans


def io_lengths(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(input length, target length) for ``length`` raw tokens, eos included."""
    n_noise, n_spans = noise_counts(length, density, mean_span)
    return length - n_noise + n_spans + 1, n_noise + n_spans + 1


def raw_length(inputs_length: int, density: float, mean_span: float) -> int:
    """T5's ``compute_input_and_target_lengths``: the longest raw length whose corrupted input
    (with sentinels and eos) fits in ``inputs_length``."""
    n = inputs_length
    while io_lengths(n + 1, density, mean_span)[0] <= inputs_length:
        n += 1
    return n


def random_segmentation(n_items: int, n_segments: int, batch: int,
                        rng: np.random.Generator | ExampleRNG) -> np.ndarray:
    """(batch, n_segments) random partitions of ``n_items`` into positive lengths (T5)."""
    marks = np.broadcast_to(np.arange(n_items - 1) < n_segments - 1, (batch, n_items - 1))
    marks = rng.permuted(marks, axis=1)  # which gaps between items start a new segment (per row under ExampleRNG)
    seg = np.concatenate([np.zeros((batch, 1), np.int64), np.cumsum(marks, axis=1)], axis=1)  # (B, n)
    flat = (seg + np.arange(batch)[:, None] * n_segments).ravel()
    return np.bincount(flat, minlength=batch * n_segments).reshape(batch, n_segments)


def random_spans_noise_mask(batch: int, length: int, density: float, mean_span: float,
                            rng: np.random.Generator) -> np.ndarray:
    """(batch, length) bool noise masks, T5's algorithm, one row per example."""
    n_noise, n_spans = noise_counts(length, density, mean_span)
    noise_len = random_segmentation(n_noise, n_spans, batch, rng)
    keep_len = random_segmentation(length - n_noise, n_spans, batch, rng)
    inter = np.stack([keep_len, noise_len], axis=2).reshape(batch, 2 * n_spans)  # keep, noise, keep, ...
    starts = np.cumsum(inter, axis=1)[:, :-1]  # (B, 2k-1) where each span after the first starts
    ind = np.zeros((batch, length), np.int64)
    np.put_along_axis(ind, starts, 1, axis=1)
    return np.cumsum(ind, axis=1) % 2 == 1


def _sentinel_fill(ids: np.ndarray, noise: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """Each run of ``noise`` becomes one sentinel (the i-th run: sentinels[i]); other tokens stay.
    All rows have the same number of kept positions, so the result is (B, n_kept)."""
    prev = np.zeros_like(noise)
    prev[:, 1:] = noise[:, :-1]
    first = noise & ~prev  # (B, L) first token of every run
    run = np.cumsum(first, axis=1) - 1
    filled = np.where(first, sentinels[np.maximum(run, 0)], ids)
    keep = ~noise | first
    return filled[keep].reshape(ids.shape[0], -1)


class SpanCorruption(Objective):
    """T5 span corruption; the model needs an encoder-decoder with an ``lm`` head and the
    tokenizer needs sentinel tokens (a unigram tokenizer trained with ``n_sentinels``)."""

    name = "span-corruption"
    #: noise masks drawn per example (objectives.example_rng): the same whatever the batch split
    per_example_rng = True
    metric_names = ("span_loss", "span_acc")
    lm_loss_metric = "span_loss"
    family = Family.ENCODER_DECODER
    heads = {"lm": {}}

    def __init__(self, tokenizer: Any, config: SpanCorruptionConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`SpanCorruptionConfig`; keyword ``settings`` override its fields.
        """
        sp = self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(SpanCorruptionConfig, config, settings, self.name)
        if not sp.sentinel_token_ids:
            raise ConfigError(
                "span-corruption needs sentinel tokens <extra_id_i>: train a unigram tokenizer "
                "(it adds n_sentinels of them)"
            )
        sp.require(self.name, "eos")
        self.sentinels = np.asarray(sp.sentinel_token_ids, dtype=np.int64)
        ids = SpecialIds.resolve(tokenizer=sp)
        self.pad_id = ids.pad
        c = self.config.decoder_start_token_id
        # the collator's start is an objective setting (the rule's explicit id); T5's default is pad
        self.start = c if c is not None else ids.pad

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an encoder-decoder with an ``lm`` head whose
        ``decoder_start_token_id`` (when set) is the one the collator uses."""
        cfg = self._check_common(cfg, Family.ENCODER_DECODER, self.sp)
        if cfg.decoder_start_token_id >= 0 and cfg.decoder_start_token_id != self.start:
            raise ConfigError(
                f"model.decoder_start_token_id={cfg.decoder_start_token_id} but the span-corruption "
                f"collator starts decoding with {self.start}; set one to match the other"
            )

    def raw_length(self, seq_len: int) -> int:
        """Raw tokens per example so that the encoder input is exactly ``seq_len``."""
        return raw_length(seq_len, self.config.noise_density, self.config.mean_noise_span_length)

    def _check_spans(self, length: int) -> None:
        _, k = noise_counts(length, self.config.noise_density, self.config.mean_noise_span_length)
        if k > len(self.sentinels):
            raise ConfigError(
                f"span-corruption: {length} tokens make {k} noise spans but the tokenizer has only "
                f"{len(self.sentinels)} sentinels; use a shorter seq_len or more sentinels"
            )

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Packed windows of ``raw_length(seq_len)`` tokens."""
        if seq_len < 4:
            raise ConfigError(f"span-corruption needs seq_len >= 4, got {seq_len}")
        n = self.raw_length(seq_len)
        self._check_spans(n)
        sep = self.sp.eos_token_id if self.config.separate_documents else None
        return PackedWindows(shards, n, separator=sep)

    def corrupt(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) raw ids -> inputs (B, L - noise + spans + 1) and targets (B, noise + spans + 1)."""
        B, L = ids.shape
        if L < 2:
            raise ConfigError(f"span-corruption needs examples of at least 2 tokens, got {L}")
        self._check_spans(L)
        cfg = self.config
        noise = random_spans_noise_mask(B, L, cfg.noise_density, cfg.mean_noise_span_length, rng)
        eos = np.full((B, 1), self.sp.eos_token_id, dtype=np.int64)
        inputs = np.concatenate([_sentinel_fill(ids, noise, self.sentinels), eos], axis=1)
        targets = np.concatenate([_sentinel_fill(ids, ~noise, self.sentinels), eos], axis=1)
        return inputs, targets

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> ``input_ids``, ``attention_mask`` (B, S), ``labels``, ``decoder_input_ids``
        (B, T) and ``n_targets``. Examples of one length are corrupted in one vectorised call."""
        rows = [np.asarray(e, dtype=np.int64).reshape(-1) for e in examples]
        for r in rows:
            self.sp.check_ids(r)
        if rows and all(len(r) == len(rows[0]) for r in rows):
            inputs, targets = self.corrupt(np.stack(rows), rng)
            am, tm = np.ones_like(inputs), np.ones_like(targets)
        else:
            # ragged rows one at a time, each with its own stream (the draws of an equal-rows batch)
            pairs = [self.corrupt(r[None], g) for r, g in zip(rows, row_streams(rng, len(rows)))]
            inputs, am = pad_stack([p[0][0] for p in pairs], self.pad_id)
            targets, tm = pad_stack([p[1][0] for p in pairs], self.pad_id)
        labels = np.where(tm > 0, targets, -100)
        dec = np.full_like(targets, self.pad_id)
        dec[:, 0] = self.start
        dec[:, 1:] = np.where(tm[:, :-1] > 0, targets[:, :-1], self.pad_id)
        return {
            "input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.from_numpy(am),
            "decoder_input_ids": torch.from_numpy(dec),
            "labels": torch.from_numpy(labels),
            "n_targets": torch.tensor(int(tm.sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        return seq2seq_loss(self._model_of(module), batch, "span")

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step: rows of exactly ``seq_len`` encoder tokens and T5's target
        length of decoder tokens (114 for 512), as many as the step's tokens (both sides) fill."""
        from ..cost import estimate_flops

        _, dec = io_lengths(self.raw_length(seq_len), self.config.noise_density, self.config.mean_noise_span_length)
        n_seq = step_tokens / (seq_len + dec)
        return n_seq * estimate_flops(cfg, seq_len, "train", dec) if n_seq > 0 else 0.0
