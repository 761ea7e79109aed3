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

Units are tokens, or whole words with ``whole_word`` (as BART's GPT-2-BPE word starts). Masked
or special tokens are never picked again by a later noise. Spans are placed without overlap with
at least one untouched unit between them, so each [MASK] in the input stands for exactly one span
and the rates are exact in expectation (fairseq's spans may overlap, which lowers its real rate).

The example is a run of whole sentences (:class:`~transferlab.objectives.datasets.SentenceChunks`)
of at most ``seq_len - 2`` tokens. Batch (the ``transformers`` BART convention):

* ``input_ids`` = ``<s> noised </s>``, ``attention_mask``;
* ``labels`` = ``<s> original </s>`` (-100 at padding);
* ``decoder_input_ids`` = labels shifted right, starting with ``decoder_start_token_id``
  (BART: ``</s>``), padding where labels are -100.

Loss: fp32 cross-entropy summed over the non-pad label positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Family
from ..errors import ConfigError
from . import masking
from .base import ObjectiveBase, SpecialIds, as_special_ids, make_config, pad_stack, ratio, sparse_ce
from .datasets import SentenceChunks

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
    """The noise functions on one 1-D example (numpy, vectorised within the example)."""

    def __init__(self, sp: SpecialIds, cfg: DenoiseConfig, mask_id: int | None):
        self.sp, self.cfg, self.mask_id = sp, cfg, mask_id

    # -- helpers -------------------------------------------------------------------------------
    def _units(self, toks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """unit_of (n,) (-1 for special/[MASK] tokens) and the token offset where each unit starts."""
        cand = ~self.sp.is_special[toks]
        ws = ~self.sp.continuation[toks] if self.cfg.whole_word else None
        unit_of, n = masking.units(cand[None], None if ws is None else ws[None])
        unit_of = unit_of[0]
        starts = np.flatnonzero(np.diff(np.concatenate([[-1], unit_of])) > 0)  # first token of each unit
        return unit_of, starts

    def _replacement(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """k mask ids, a ``random_ratio`` share of them random normal tokens."""
        out = np.full(k, self.mask_id, dtype=np.int64)
        rnd = rng.random(k) < self.cfg.random_ratio
        if rnd.any():
            out[rnd] = self.sp.normal_ids[rng.integers(0, len(self.sp.normal_ids), int(rnd.sum()))]
        return out

    # -- noise functions -----------------------------------------------------------------------
    def permute(self, toks: np.ndarray, sent_starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffle ``permute_ratio`` of the sentences among their own slots (fairseq semantics)."""
        bounds = np.append(sent_starts, len(toks))
        n = len(sent_starts)
        if n < 2:
            return toks
        k = int(np.ceil(n * self.cfg.permute_ratio))
        chosen = rng.permutation(n)[:k]
        order = np.arange(n)
        order[chosen] = chosen[rng.permutation(k)]
        lens = bounds[1:] - bounds[:-1]
        # gather index: the tokens of sentence order[0], then order[1], ...
        idx = np.concatenate([np.arange(bounds[i], bounds[i] + lens[i]) for i in order])
        return toks[idx]

    def mask(self, toks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        unit_of, _ = self._units(toks)
        n = int(unit_of.max(initial=-1)) + 1
        picked_u, _ = masking.select_units(unit_of[None], np.array([n]), self.cfg.mask_prob, rng)
        picked = masking.to_tokens(picked_u, unit_of[None], False)[0]
        out = toks.copy()
        out[picked] = self._replacement(int(picked.sum()), rng)
        return out

    def delete(self, toks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        unit_of, _ = self._units(toks)
        n = int(unit_of.max(initial=-1)) + 1
        picked_u, _ = masking.select_units(unit_of[None], np.array([n]), self.cfg.delete_prob, rng)
        picked = masking.to_tokens(picked_u, unit_of[None], False)[0]
        return toks[~picked]

    def infill(self, toks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace Poisson-length spans by one [MASK] each (0-length spans insert one)."""
        unit_of, ustart = self._units(toks)
        n = len(ustart)
        if n == 0:
            return toks
        lam = self.cfg.poisson_lambda
        k = masking.stochastic_round(np.array([self.cfg.infill_prob * n / lam]), rng)
        lengths = masking.span_lengths(rng, k, "poisson", lam=lam)
        starts, lengths = masking.place_spans(np.array([n]), lengths, rng)
        ok = starts[0] >= 0
        s, ln = starts[0][ok], lengths[0][ok]  # spans in unit space, sorted by start
        if len(s) == 0:
            return toks
        # drop the tokens of covered units (units need not be contiguous: specials stay put)
        covered = masking.spans_to_mask(s[None], ln[None], n)[0]  # (n_units,)
        drop = (unit_of >= 0) & covered[np.maximum(unit_of, 0)]
        # where span j's [MASK] goes: the first token of its first unit (a 0-length span: of the
        # unit it precedes; after the last unit when s == n)
        tok_at = np.append(ustart, np.flatnonzero(unit_of >= 0)[-1] + 1)
        ins = tok_at[s]
        # positions in the kept sequence: tokens kept before each insertion point
        kept_before = np.concatenate([[0], np.cumsum(~drop)])[ins]
        return np.insert(toks[~drop], kept_before, self._replacement(len(s), rng))

    def rotate(self, toks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(toks) < 2 or rng.random() >= self.cfg.rotate_prob:
            return toks
        return np.roll(toks, -int(rng.integers(0, len(toks))))

    def __call__(self, toks: np.ndarray, sent_starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = self.cfg.noise
        if "permute" in noise:
            toks = self.permute(toks, sent_starts, rng)
        if "mask" in noise:
            toks = self.mask(toks, rng)
        if "delete" in noise:
            toks = self.delete(toks, rng)
        if "infill" in noise:
            toks = self.infill(toks, rng)
        if "rotate" in noise:
            toks = self.rotate(toks, rng)
        return toks


class Denoise(ObjectiveBase):
    """BART denoising; the model needs an encoder-decoder with an ``lm`` head."""

    name = "denoise"
    family = Family.ENCODER_DECODER
    heads = {"lm": {}}

    def __init__(self, tokenizer: Any, config: DenoiseConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.SpecialIds`.
            config: a :class:`DenoiseConfig`; keyword ``settings`` override its fields
                (``noise=["infill", "permute"]`` or ``noise="mask,delete"``).
        """
        sp = self.sp = as_special_ids(tokenizer)
        self.config = cfg = make_config(DenoiseConfig, config, settings, self.name)
        self.bos = sp.bos_token_id if sp.bos_token_id is not None else sp.cls_token_id
        self.eos = sp.eos_token_id if sp.eos_token_id is not None else sp.sep_token_id
        if self.bos is None or self.eos is None:
            raise ConfigError("denoise needs begin/end tokens (bos/eos or [CLS]/[SEP]) in the tokenizer")
        # [MASK]; a unigram (T5-style) vocabulary has none: use its first sentinel instead
        self.mask_id = sp.mask_token_id if sp.mask_token_id is not None else (
            sp.sentinel_token_ids[0] if sp.sentinel_token_ids else None)
        if self.mask_id is None and {"mask", "infill"} & set(cfg.noise):
            raise ConfigError("denoise: mask/infill noise needs a mask token (or a sentinel) in the tokenizer")
        if cfg.whole_word and sp.continuation is None:
            raise ConfigError("denoise: whole_word needs the tokenizer's continuation mask")
        self.start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else self.eos
        self.pad_id = sp.pad_token_id if sp.pad_token_id is not None else self.eos
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

    def dataset(self, shards: Any, seq_len: int, rank: int = 0, world_size: int = 1) -> SentenceChunks:
        """Runs of whole sentences of at most ``seq_len - 2`` tokens (room for <s> and </s>)."""
        if seq_len < 3:
            raise ConfigError(f"denoise needs seq_len >= 3, got {seq_len}")
        return SentenceChunks(shards, seq_len - 2, rank=rank, world_size=world_size)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Chunks -> ``input_ids``, ``attention_mask`` (B, S), ``labels``, ``decoder_input_ids``
        (B, T) and ``n_targets``. An example is a dict from the dataset or a plain id array
        (one sentence)."""
        src, tgt = [], []
        for ex in examples:
            if isinstance(ex, dict):
                toks, starts = np.asarray(ex["tokens"], np.int64), np.asarray(ex.get("sentence_starts", [0]), np.int64)
            else:
                toks, starts = np.asarray(ex, np.int64).reshape(-1), np.zeros(1, np.int64)
            self.sp.check_ids(toks)
            noised = self.noiser(toks, starts, rng)
            src.append(np.concatenate([[self.bos], noised, [self.eos]]).astype(np.int64))
            tgt.append(np.concatenate([[self.bos], toks, [self.eos]]).astype(np.int64))
        ids, am = pad_stack(src, self.pad_id)
        lab, lm = pad_stack(tgt, self.pad_id)
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


def seq2seq_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], prefix: str):
    """Summed cross-entropy of an encoder-decoder on its non-pad labels (shared with T5)."""
    out = model.backbone(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
        decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch.get("decoder_attention_mask"),
    )
    loss_sum, correct, n = sparse_ce(model.heads["lm"], out.last_hidden_state, batch["labels"])
    return loss_sum, {f"{prefix}_loss": ratio(loss_sum, n), f"{prefix}_acc": ratio(correct, n)}
