"""BART denoising: corrupt the input with composable noise, the decoder reconstructs the original.

Noise functions (``noise``: any combination, applied in this order, as fairseq's
``DenoisingDataset`` does):

* ``permute`` — sentence permutation: shuffle the chunk's sentences (``permute_ratio`` of them);
* ``mask`` — token masking: ``mask_prob`` of the tokens become [MASK] (or, with
  ``random_ratio``, a random token), BERT-style but without prediction targets of its own;
* ``delete`` — token deletion: ``delete_prob`` of the tokens are removed;
* ``infill`` — text infilling: spans with Poisson(``poisson_lambda`` = 3) lengths, covering
  ``infill_prob`` (30%) of the tokens in expectation, are each replaced by *one* [MASK]; a
  0-length span inserts a [MASK];
* ``rotate`` — document rotation: with probability ``rotate_prob`` the sequence is rotated to
  start at a uniformly chosen token.

Units are tokens, or whole words with ``whole_word`` (as BART's GPT-2-BPE word starts). Every
noise runs on the whole right-padded batch at once (vectorised numpy). Masked
or special tokens are never picked again by a later noise. Spans are placed without overlap with
at least one untouched unit between them, so each [MASK] in the input stands for exactly one span
and the rates are exact in expectation (fairseq's spans may overlap, which lowers its real rate).

The example is a run of whole sentences (:class:`~transferlab.objectives.datasets.SentenceChunks`)
of at most ``seq_len - 2`` tokens. Batch (the ``transformers`` BART convention):

* ``input_ids`` = ``<s> noised </s>``, ``attention_mask``;
* ``labels`` = ``<s> original </s>`` (-100 at padding);
* ``decoder_input_ids`` = labels shifted right, starting with ``decoder_start_token_id``
  (BART: ``</s>``), padding where labels are -100.

Randomness is drawn per example (:mod:`.example_rng`): every noise's draws for a row come from
its own stream, keyed by the seed and its global position; nothing per batch, so accumulation
and ranks noise each example as one large batch does.

Loss: fp32 cross-entropy summed over the non-pad label positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Family
from ..errors import ConfigError
from ..specials import SpecialIds
from . import masking
from .base import Objective, TokenizerIds, as_tokenizer_ids, make_config, pad_stack, ratio
from .losses import sparse_ce
from .datasets import SentenceChunks
from .example_rng import row_generators

NOISES = ("permute", "mask", "delete", "infill", "rotate")


@dataclass
class DenoiseConfig:
    """BART noise settings (defaults: BART's best, text infilling + sentence permutation)."""

    noise: list[str] = field(default_factory=lambda: ["infill", "permute"])
    """Noise functions to apply, any of: permute, mask, delete, infill, rotate."""
    infill_prob: float = 0.3
    """Text infilling: expected fraction of tokens inside masked spans."""
    poisson_lambda: float = 3.0
    """Text infilling: mean span length (Poisson)."""
    mask_prob: float = 0.15
    """Token masking: fraction of tokens replaced by [MASK]."""
    delete_prob: float = 0.15
    """Token deletion: fraction of tokens deleted."""
    random_ratio: float = 0.0
    """Fraction of masks (token masking and infilling) that are a random token instead (fairseq
    --mask-random; BART-large used 0.1)."""
    permute_ratio: float = 1.0
    """Sentence permutation: fraction of the sentences that are shuffled."""
    rotate_prob: float = 1.0
    """Document rotation: probability that a sequence is rotated."""
    whole_word: bool = False
    """Mask/delete/infill whole words (needs the tokenizer's continuation mask)."""
    decoder_start_token_id: int | None = None
    """First decoder input; None = eos (BART). Should equal model.decoder_start_token_id."""

    def validate(self) -> "DenoiseConfig":
        bad = [n for n in self.noise if n not in NOISES]
        if bad or not self.noise:
            raise ConfigError(
                f"denoise.noise: {'unknown noise ' + ', '.join(map(repr, bad)) if bad else 'empty'}; "
                f"choose from {', '.join(NOISES)}"
            )
        for f in ("infill_prob", "mask_prob", "delete_prob"):
            if not 0.0 < getattr(self, f) < 1.0:
                raise ConfigError(f"{f} must be in (0, 1), got {getattr(self, f)}")
        for f in ("random_ratio", "permute_ratio", "rotate_prob"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{f} must be in [0, 1], got {getattr(self, f)}")
        if self.poisson_lambda <= 0:
            raise ConfigError(f"poisson_lambda must be > 0, got {self.poisson_lambda}")
        return self


class Noiser:
    """The noise functions on a right-padded batch ``(ids (B, W), lens (B,))``, vectorised over the
    batch (one numpy call per noise, not per example)."""

    def __init__(self, sp: TokenizerIds, cfg: DenoiseConfig, mask_id: int | None):
        self.sp, self.cfg, self.mask_id = sp, cfg, mask_id

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _valid(ids: np.ndarray, lens: np.ndarray) -> np.ndarray:
        return np.arange(ids.shape[1])[None, :] < lens[:, None]

    def _units(self, ids: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """unit_of (B, W) (-1 for padding, special and [MASK] tokens) and n_units (B,)."""
        cand = self._valid(ids, lens) & ~self.sp.is_special[ids]
        ws = ~self.sp.continuation[ids] if self.cfg.whole_word else None
        return masking.units(cand, ws)

    def _replacement(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """A (B, K) grid of mask ids, a ``random_ratio`` share of them random normal tokens; the
        caller takes the cells it needs (drawn per row, so each example's are its own)."""
        out = np.full(shape, self.mask_id if self.mask_id is not None else 0, dtype=np.int64)
        rnd = rng.random(shape) < self.cfg.random_ratio
        if self.cfg.random_ratio > 0:
            tok = self.sp.normal_ids[rng.integers(0, len(self.sp.normal_ids), shape)]
            out = np.where(rnd, tok, out)
        return out

    @staticmethod
    def _assemble(rows: np.ndarray, keys: np.ndarray, vals: np.ndarray, B: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
        """Scatter flat (row, sort key, value) elements into a right-padded (B, W') batch, each row
        ordered by key."""
        order = np.lexsort((keys, rows))
        rows, vals = rows[order], vals[order]
        lens = np.bincount(rows, minlength=B).astype(np.int64)
        col = np.arange(len(rows)) - np.repeat(np.cumsum(lens) - lens, lens)
        out = np.full((B, max(int(lens.max(initial=0)), 1)), pad, dtype=np.int64)
        out[rows, col] = vals
        return out, lens

    def _keep(self, ids: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, c = np.nonzero(keep)
        return self._assemble(r, c, ids[r, c], ids.shape[0], 0)

    def _pick(self, ids: np.ndarray, lens: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
        unit_of, n = self._units(ids, lens)
        picked_u, _ = masking.select_units(unit_of, n, rate, rng)
        return masking.to_tokens(picked_u, unit_of, False)

    # -- noise functions -----------------------------------------------------------------------
    def permute(self, ids: np.ndarray, lens: np.ndarray, sent_starts: list[np.ndarray],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Shuffle ``permute_ratio`` of each row's sentences among their own slots (fairseq)."""
        B, W = ids.shape
        S = max(len(st) for st in sent_starts)
        rank = np.zeros((B, S), dtype=np.int64)  # new position of every sentence
        gens = row_generators(rng, B)
        for b, st in enumerate(sent_starts):  # a few draws per row; the gather below is batched
            n = len(st)
            k = int(np.ceil(n * self.cfg.permute_ratio))
            chosen = gens[b].permutation(n)[:k]
            order = np.arange(n)
            order[chosen] = chosen[gens[b].permutation(k)]
            rank[b, order] = np.arange(n)
        marks = np.zeros((B, W + 1), dtype=np.int64)
        for b, st in enumerate(sent_starts):
            marks[b, st[1:]] = 1
        sent = np.cumsum(marks[:, :W], axis=1)  # (B, W) sentence of every token
        key = rank[np.arange(B)[:, None], np.minimum(sent, S - 1)] * W + np.arange(W)[None, :]
        key[~self._valid(ids, lens)] = S * W + W  # padding stays last
        return np.take_along_axis(ids, np.argsort(key, axis=1, kind="stable"), axis=1), lens

    def mask(self, ids: np.ndarray, lens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        picked = self._pick(ids, lens, self.cfg.mask_prob, rng)
        out = ids.copy()
        out[picked] = self._replacement(ids.shape, rng)[picked]
        return out, lens

    def delete(self, ids: np.ndarray, lens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        picked = self._pick(ids, lens, self.cfg.delete_prob, rng)
        return self._keep(ids, self._valid(ids, lens) & ~picked)

    def infill(self, ids: np.ndarray, lens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Replace Poisson-length spans by one [MASK] each (0-length spans insert one)."""
        B, W = ids.shape
        unit_of, n = self._units(ids, lens)
        lam = self.cfg.poisson_lambda
        k = masking.stochastic_round(self.cfg.infill_prob * n / lam, rng)
        starts, lengths = masking.place_spans(n, masking.span_lengths(rng, k, "poisson", lam=lam), rng)
        U = max(int(n.max(initial=0)), 1)
        drop = masking.to_tokens(masking.spans_to_mask(starts, lengths, U), unit_of, False)  # (B, W)
        # first token of every unit, and for s == n "after the row's last unit" (units need not be
        # contiguous: special tokens between them stay where they are)
        first_tok = np.zeros((B, U + 1), dtype=np.int64)
        prev = np.full_like(unit_of, -1)
        prev[:, 1:] = unit_of[:, :-1]
        r, c = np.nonzero((unit_of >= 0) & (unit_of != prev))
        first_tok[r, unit_of[r, c]] = c
        has = n > 0
        last = W - np.argmax((unit_of >= 0)[:, ::-1], axis=1)  # one past the last unit token
        first_tok[np.flatnonzero(has), n[has]] = last[has]
        ok = starts >= 0
        ri = np.broadcast_to(np.arange(B)[:, None], starts.shape)[ok]
        ti = first_tok[ri, starts[ok]]  # each span's [MASK] goes before this token
        rk, ck = np.nonzero(self._valid(ids, lens) & ~drop)
        # sort keys: the [MASK] of a span at token t (2t) precedes the kept token t (2t + 1)
        return self._assemble(np.concatenate([rk, ri]), np.concatenate([2 * ck + 1, 2 * ti]),
                              np.concatenate([ids[rk, ck], self._replacement(starts.shape, rng)[ok]]), B, 0)

    def rotate(self, ids: np.ndarray, lens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rotate each row (with probability ``rotate_prob``) to start at a uniform token."""
        B, W = ids.shape
        do = rng.random(B) < self.cfg.rotate_prob
        off = np.where(do, np.floor(rng.random(B) * lens).astype(np.int64), 0)
        p = np.arange(W)[None, :]
        src = np.where(p < lens[:, None], (p + off[:, None]) % np.maximum(lens[:, None], 1), p)
        return np.take_along_axis(ids, src, axis=1), lens

    def __call__(self, toks: list[np.ndarray], sent_starts: list[np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Noise a list of examples; returns the right-padded noised batch and its lengths."""
        ids, valid = pad_stack(toks, 0)
        lens = valid.sum(1)
        if ids.shape[1] == 0:  # nothing but empty examples
            return ids, lens
        noise = self.cfg.noise
        if "permute" in noise:
            ids, lens = self.permute(ids, lens, sent_starts, rng)
        if "mask" in noise:
            ids, lens = self.mask(ids, lens, rng)
        if "delete" in noise:
            ids, lens = self.delete(ids, lens, rng)
        if "infill" in noise:
            ids, lens = self.infill(ids, lens, rng)
        if "rotate" in noise:
            ids, lens = self.rotate(ids, lens, rng)
        return ids, lens


class Denoise(Objective):
    """BART denoising; the model needs an encoder-decoder with an ``lm`` head."""

    name = "denoise"
    metric_names = ("denoise_loss", "denoise_acc")
    lm_loss_metric = "denoise_loss"
    family = Family.ENCODER_DECODER
    heads = {"lm": {}}
    #: masks/noise drawn per example (objectives.example_rng): the same whatever the batch split
    per_example_rng = True

    def __init__(self, tokenizer: Any, config: DenoiseConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`DenoiseConfig`; keyword ``settings`` override its fields
                (``noise=["infill", "permute"]`` or ``noise="mask,delete"``).
        """
        sp = self.sp = as_tokenizer_ids(tokenizer)
        self.config = cfg = make_config(DenoiseConfig, config, settings, self.name)
        ids = SpecialIds.resolve(tokenizer=sp)
        self.bos, self.eos = ids.bos, ids.eos  # bos else [CLS], eos else [SEP]
        if self.bos is None or self.eos is None:
            raise ConfigError("denoise needs begin/end tokens (bos/eos or [CLS]/[SEP]) in the tokenizer")
        # [MASK]; a unigram (T5-style) vocabulary has none: use its first sentinel instead
        self.mask_id = sp.mask_token_id if sp.mask_token_id is not None else (
            sp.sentinel_token_ids[0] if sp.sentinel_token_ids else None)
        if self.mask_id is None and {"mask", "infill"} & set(cfg.noise):
            raise ConfigError("denoise: mask/infill noise needs a mask token (or a sentinel) in the tokenizer")
        if cfg.whole_word and sp.continuation is None:
            raise ConfigError("denoise: whole_word needs the tokenizer's continuation mask")
        # the collator's start is an objective setting (the rule's explicit id); BART's default is eos
        self.start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else self.eos
        self.pad_id = ids.pad
        self.noiser = Noiser(sp, cfg, self.mask_id)

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an encoder-decoder with an ``lm`` head whose
        ``decoder_start_token_id`` (when set) is the one the collator uses."""
        cfg = self._check_common(cfg, Family.ENCODER_DECODER, self.sp)
        if cfg.decoder_start_token_id >= 0 and cfg.decoder_start_token_id != self.start:
            raise ConfigError(
                f"model.decoder_start_token_id={cfg.decoder_start_token_id} but the denoise collator starts "
                f"decoding with {self.start}; set one to match the other"
            )

    def dataset(self, shards: Any, seq_len: int) -> SentenceChunks:
        """Runs of whole sentences of at most ``seq_len - 2`` tokens (room for <s> and </s>)."""
        if seq_len < 3:
            raise ConfigError(f"denoise needs seq_len >= 3, got {seq_len}")
        return SentenceChunks(shards, seq_len - 2)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Chunks -> ``input_ids``, ``attention_mask`` (B, S), ``labels``, ``decoder_input_ids``
        (B, T) and ``n_targets``. An example is a dict from the dataset or a plain id array
        (one sentence)."""
        toks, starts = [], []
        for ex in examples:
            if isinstance(ex, dict):
                toks.append(np.asarray(ex["tokens"], np.int64).reshape(-1))
                starts.append(np.asarray(ex.get("sentence_starts", [0]), np.int64).reshape(-1))
            else:
                toks.append(np.asarray(ex, np.int64).reshape(-1))
                starts.append(np.zeros(1, np.int64))
            self.sp.check_ids(toks[-1])
        noised, n_lens = self.noiser(toks, starts, rng)  # (B, W) right-padded, (B,)
        src = [np.concatenate([[self.bos], noised[b, : n_lens[b]], [self.eos]]) for b in range(len(toks))]
        ids, am = pad_stack(src, self.pad_id)
        lab, lm = pad_stack([np.concatenate([[self.bos], t, [self.eos]]) for t in toks], self.pad_id)
        labels = np.where(lm > 0, lab, -100)
        dec = np.full_like(lab, self.pad_id)
        dec[:, 0] = self.start
        dec[:, 1:] = np.where(lm[:, :-1] > 0, lab[:, :-1], self.pad_id)  # shift right
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(am),
            "decoder_input_ids": torch.from_numpy(dec),
            "labels": torch.from_numpy(labels),
            "n_targets": torch.tensor(int(lm.sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        return seq2seq_loss(self._model_of(module), batch, "denoise")

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float:
        """Training FLOPs of one step, billing rows of ``seq_len`` tokens on both sides: the
        step's tokens count encoder *and* decoder positions, so they fill ``step_tokens / (2
        seq_len)`` such rows (chunks and noised inputs are at most ``seq_len`` long, so this is an
        upper-bound-shaped estimate, not an exact count)."""
        from ..cost import estimate_flops

        n_seq = step_tokens / (2 * seq_len)
        return n_seq * estimate_flops(cfg, seq_len, "train", seq_len) if n_seq > 0 else 0.0


def seq2seq_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], prefix: str):
    """Summed cross-entropy of an encoder-decoder on its non-pad labels (shared with T5)."""
    out = model.backbone(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
        decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch.get("decoder_attention_mask"),
    )
    loss_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"], dense=True)
    return loss_sum, {f"{prefix}_loss": ratio(loss_sum, n), f"{prefix}_acc": ratio(correct, n)}
