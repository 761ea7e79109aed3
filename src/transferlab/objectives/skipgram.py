"""Skip-gram (and CBOW) with negative sampling: word2vec (Mikolov et al., 2013) on prepared shards.

Dataset: windows of ``seq_len`` tokens of the stream ``doc_0 <eos> doc_1 <eos> ...``, cut every
``seq_len`` tokens (no overlap). Contexts never cross a document boundary (the separator) or a
window edge; special tokens are neither centers nor contexts.

Collator (all randomness per example, :mod:`.example_rng`, so accumulation, ranks and resume see
the same draws):

1. *frequent-word subsampling*: token ``w`` is kept with probability ``min(1, sqrt(t / f(w)))``
   (``t`` = ``sample``, ``f(w)`` its relative frequency in the training shards; the paper's
   ``P(discard) = 1 - sqrt(t / f)``). Discarded tokens are removed before windows are taken, so
   contexts reach further, as in ``word2vec.c``;
2. *dynamic window*: every kept center draws its radius ``b`` uniformly in ``1..window``; its
   contexts are the kept tokens within ``b`` positions on either side;
3. *negatives*: ``negatives`` noise words per scored row from the unigram distribution raised to
   ``noise_power`` (0.75), specials excluded; a noise word equal to the row's positive word is
   masked out of the loss (``word2vec.c`` skips it).

Loss (per scored row, summed; ``n_targets`` = rows): skip-gram scores each (center c, context o)
pair, CBOW each center against the mean of its contexts' input vectors ``h``:

    -log sigmoid(u_o . v_c) - sum_k log sigmoid(-u_k . v_c)         (skip-gram)
    -log sigmoid(u_c . h)   - sum_k log sigmoid(-u_k . h)           (CBOW)

with ``v`` the model's input vectors and ``u`` its context vectors (:mod:`transferlab.models.word2vec`).
The unigram counts come from the training shards the first time :meth:`SkipGram.dataset` is
called (the validation view reuses them), a deterministic function of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, pad_stack, ratio
from .datasets import PackedWindows

MODES = ("skipgram", "cbow")


class FamilyName(str):
    """A registered family's name where objectives declare a :class:`~transferlab.config.Family`:
    a str that also answers ``.value``, as the enum members do (listings print ``family.value``)."""

    @property
    def value(self) -> str:
        return str(self)


@dataclass
class SkipGramConfig:
    """word2vec settings (``objective.KEY=VALUE``); defaults as ``word2vec.c`` / gensim."""

    mode: str = "skipgram"
    """skipgram (predict each context word from the center) or cbow (the center from the mean of its contexts)."""
    window: int = 5
    """Largest context radius W; each center draws its radius uniformly in 1..W (dynamic window)."""
    negatives: int = 5
    """Noise words per scored row (k)."""
    sample: float = 1e-3
    """Subsampling threshold t: a word of frequency f is kept with probability min(1, sqrt(t / f)); 0 keeps every word."""
    noise_power: float = 0.75
    """Negatives are drawn from the unigram distribution raised to this power (0.75 in the paper)."""

    def validate(self) -> "SkipGramConfig":
        """ConfigError naming the setting when it is out of range."""
        if self.mode not in MODES:
            raise ConfigError(f"skipgram: objective.mode must be skipgram or cbow, got {self.mode!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"skipgram: objective.window must be an integer >= 1, got {self.window!r}")
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) or self.negatives < 1:
            raise ConfigError(f"skipgram: objective.negatives must be an integer >= 1, got {self.negatives!r}")
        if not self.sample >= 0:
            raise ConfigError(f"skipgram: objective.sample must be >= 0 (0: no subsampling), got {self.sample!r}")
        if not self.noise_power >= 0:
            raise ConfigError(f"skipgram: objective.noise_power must be >= 0, got {self.noise_power!r}")
        return self


class SkipGram(Objective):
    """word2vec's skip-gram / CBOW with negative sampling; the model is a ``word2vec`` family."""

    name = "skipgram"
    family = FamilyName("word2vec")
    heads: dict[str, dict] = {}
    metric_names = ("w2v_loss", "w2v_acc")
    lm_loss_metric = None
    per_example_rng = True

    def __init__(self, tokenizer: Any, config: SkipGramConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`SkipGramConfig`; keyword ``settings`` override its fields.
        """
        self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(SkipGramConfig, config, settings, self.name)
        ids = SpecialIds.resolve(tokenizer=self.sp)
        self.separator = ids.eos if ids.eos is not None else self.sp.bos_token_id
        self.pad_id = ids.pad
        self.counts: np.ndarray | None = None  # (V,) unigram counts of the training shards

    # ------------------------------------------------------------------ the noise and keep tables
    def set_counts(self, counts: np.ndarray) -> None:
        """Use ``counts`` (V,) as the corpus unigram counts (noise distribution, subsampling).

        Args:
            counts: non-negative token counts, one per vocabulary id.
        """
        V = self.sp.vocab_size
        c = np.asarray(counts, dtype=np.float64).reshape(-1)
        if c.shape != (V,) or (c < 0).any():
            raise DataError(f"skipgram: counts must be {V} non-negative numbers (one per token), got shape {c.shape}")
        c = np.where(self.sp.is_special, 0.0, c)
        if c.sum() <= 0:
            raise DataError("skipgram: the training shards hold no ordinary (non-special) tokens")
        self.counts = c
        noise = c ** self.config.noise_power
        noise[c == 0] = 0.0  # 0 ** 0 = 1: a word never seen is never noise, whatever the power
        self.noise = noise / noise.sum()  # (V,) P_n(w) = c(w)^0.75 / sum
        self._cdf = np.cumsum(self.noise)
        self._cdf[-1] = 1.0  # rounding: every uniform in [0, 1) maps to a token
        t = self.config.sample
        f = c / c.sum()
        with np.errstate(divide="ignore"):
            keep = np.where(f > 0, np.sqrt(t / np.maximum(f, 1e-300)), 0.0) if t > 0 else (f > 0).astype(float)
        self.keep_prob = np.minimum(keep, 1.0)  # (V,) the paper's 1 - P(discard)

    def draw_negatives(self, u: np.ndarray) -> np.ndarray:
        """Noise words for uniforms ``u`` in [0, 1) (any shape): inverse CDF of :attr:`noise`."""
        idx = np.searchsorted(self._cdf, u, side="right")
        return np.minimum(idx, self.sp.vocab_size - 1).astype(np.int64)

    # ------------------------------------------------------------------ the contract
    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is a ``word2vec`` family as large as the vocabulary."""
        cfg = getattr(cfg, "config", cfg)
        if str(cfg.family) != self.family:
            raise ConfigError(f"objective 'skipgram' trains global word vectors: it needs model.family=word2vec "
                              f"(--preset word2vec-128 or word2vec-256), got model.family={cfg.family}")
        if cfg.vocab_size < self.sp.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                              f"({self.sp.vocab_size}); set model.vocab_size={self.sp.vocab_size}")

    def model_settings(self) -> dict[str, Any]:
        """Family, vocabulary size, no heads and the special ids, as ModelConfig fields."""
        fields = SpecialIds.resolve(tokenizer=self.sp).config_fields()
        fields.pop("decoder_start_token_id", None)
        return {"family": self.family, "vocab_size": self.sp.vocab_size, "heads": {}, **fields}

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Windows of ``seq_len`` tokens, documents separated by eos; the first call also counts
        the shards' tokens (the noise and subsampling tables)."""
        if seq_len < 2:
            raise ConfigError(f"skipgram needs seq_len >= 2 (a center and a context), got {seq_len}")
        view = PackedWindows(shards, seq_len, stride=seq_len, separator=self.separator)
        if self.counts is None:
            tokens = np.asarray(shards.tokens)
            self.sp.check_ids(tokens)
            self.set_counts(np.bincount(tokens, minlength=self.sp.vocab_size)[: self.sp.vocab_size])
        return view

    def _contexts(self, ids: np.ndarray, am: np.ndarray,
                  rng: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Subsample and window a batch: compacted ids (B, T), contexts (B, T, 2W), their mask
        (B, T, 2W) and which compacted positions hold a kept token (B, T).

        Two draws, each (B, T) and per example: the subsampling uniforms and the window radii.
        """
        B, T = ids.shape
        W = self.config.window
        u = rng.random((B, T))  # subsampling
        radius = rng.integers(1, W + 1, size=(B, T))  # dynamic window, uniform in 1..W
        seg = np.cumsum(ids == self.separator, axis=1) if self.separator is not None else np.zeros_like(ids)
        kept = (am > 0) & ~self.sp.is_special[ids] & (u < self.keep_prob[ids])
        order = np.argsort(~kept, axis=1, kind="stable")  # kept positions first, in their order
        cid = np.take_along_axis(ids, order, 1)
        cseg = np.take_along_axis(seg, order, 1)
        crad = np.take_along_axis(radius, order, 1)  # a center keeps the radius drawn at its position
        cval = np.arange(T)[None] < kept.sum(1, keepdims=True)  # (B, T)
        offsets = [o for o in range(-W, W + 1) if o]
        pad = lambda a, v: np.pad(a, ((0, 0), (W, W)), constant_values=v)  # noqa: E731
        pid, pseg, pval = pad(cid, 0), pad(cseg, -1), pad(cval, False)
        ctx = np.stack([pid[:, W + o: W + o + T] for o in offsets], -1)  # (B, T, 2W)
        ok = np.stack([pval[:, W + o: W + o + T] & (pseg[:, W + o: W + o + T] == cseg) & (abs(o) <= crad)
                       for o in offsets], -1) & cval[..., None]
        return cid, ctx, ok, cval

    def collate(self, examples: list[Any], rng: Any) -> dict[str, torch.Tensor]:
        """Windows -> scored rows (``centers``, ``positives``, ``negatives``, ``neg_weight``;
        CBOW also ``contexts`` (M, 2W) and ``context_mask``), ``input_ids`` and ``n_targets``."""
        if self.counts is None:
            raise ConfigError("skipgram: call dataset(shards) (or set_counts) before collate: the noise "
                              "distribution is the training shards' unigram counts")
        rows = [np.asarray(e, dtype=np.int64).reshape(-1) for e in examples]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            ids = np.stack(rows)
            am = np.ones_like(ids)
        else:
            ids, am = pad_stack(rows, self.pad_id)
        self.sp.check_ids(ids[am > 0])
        B = ids.shape[0]
        cid, ctx, ok, _ = self._contexts(ids, am, rng)
        k = self.config.negatives
        out: dict[str, torch.Tensor] = {"input_ids": torch.from_numpy(ids)}
        if self.config.mode == "skipgram":
            b, i, s = np.nonzero(ok)  # row-major: each example's pairs together, in its own order
            centers, positives = cid[b, i], ctx[b, i, s]
        else:
            b, i = np.nonzero(ok.any(-1))
            centers = positives = cid[b, i]
            out["contexts"] = torch.from_numpy(ctx[b, i])  # (M, 2W)
            out["context_mask"] = torch.from_numpy(ok[b, i])
        per_row = np.bincount(b, minlength=B)
        rank = np.arange(len(b)) - np.repeat(np.cumsum(per_row) - per_row, per_row)  # row's own pair index
        u = rng.random((B, int(per_row.max(initial=0)), k))  # a row's first n draws: its own n rows
        negatives = self.draw_negatives(u[b, rank])  # (N, k)
        out.update({
            "centers": torch.from_numpy(centers.astype(np.int64)),
            "positives": torch.from_numpy(positives.astype(np.int64)),
            "negatives": torch.from_numpy(negatives),
            "neg_weight": torch.from_numpy((negatives != positives[:, None]).astype(np.float32)),
            "n_targets": torch.tensor(int(len(b))),
        })
        return out

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        """Summed negative-sampling loss of the batch's rows and the share of right decisions."""
        bb = self._model_of(module).backbone
        if "contexts" in batch:  # CBOW: h = mean of the context words' input vectors
            m = batch["context_mask"].to(bb.embed_tokens.weight.dtype)  # (M, 2W)
            h = (bb.embed_tokens(batch["contexts"]) * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        else:
            h = bb.embed_tokens(batch["centers"])  # (N, d) v_c
        targets = torch.cat([batch["positives"][:, None], batch["negatives"]], 1)  # (N, 1 + k)
        u = bb.context(targets)  # (N, 1 + k, d)
        scores = torch.bmm(u, h[:, :, None]).squeeze(-1).float()  # (N, 1 + k) u . v
        weight = torch.cat([torch.ones_like(batch["neg_weight"][:, :1]), batch["neg_weight"]], 1)
        sign = torch.ones_like(weight)
        sign[:, 1:] = -1.0  # the positive pulls together, the noise words push apart
        loss_sum = -(F.logsigmoid(sign * scores) * weight).sum()
        correct = (((sign * scores) > 0).float() * weight).sum()
        n = batch["n_targets"]
        return loss_sum, {"w2v_loss": ratio(loss_sum, n), "w2v_acc": ratio(correct, weight.sum())}

    def step_flops(self, cfg: Any, seq_len: int, step_tokens: float, n_targets: float) -> float | None:
        """Counted: ``1 + negatives`` dot products of width d per scored row, forward + backward."""
        from ..models.word2vec import pairs_flops

        return pairs_flops(cfg.d_model, self.config.negatives, n_targets)

