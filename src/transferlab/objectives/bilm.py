"""Bidirectional LM (ELMo, Peters et al. 2018): both directions' log-likelihoods, one softmax.

Dataset: the token stream ``doc_0 <eos> doc_1 <eos> ...`` cut into windows of ``seq_len`` tokens
every ``seq_len - 1`` tokens (as ``clm``): consecutive windows overlap by one token, so every
token is a forward target exactly once (all but the stream's first) and a backward target
exactly once (all but its last).

Loss: the forward stack's state at ``t`` predicts token ``t + 1`` and the backward stack's state
at ``t`` predicts ``t - 1``, both through the model's ``lm`` head (the shared
:class:`~transferlab.models.elmo.BiLMSoftmax`), fp32 cross-entropy fused with the projection.
``loss_sum`` is the sum of both directions' negative log-likelihoods (the paper's joint
objective) and ``n_targets`` counts the predictions of both, so the reported loss is the mean
per prediction, ``(L_fwd + L_bwd) / 2`` for equal counts, and ``exp`` of it (the run's
perplexity) the geometric mean of the two directions' perplexities. Metrics: ``bilm_loss`` (that
mean), ``fwd_loss`` / ``bwd_loss`` and ``fwd_ppl`` / ``bwd_ppl`` (exp of a micro-batch's
direction loss). Only the targets reach the vocabulary projection (``sparse_targets``: the cost
report bills exactly those rows).

A char-input model reads a token -> characters table (``models.elmo``): :meth:`BiLM.wrap_model`
fills an empty one from the tokenizer the objective was built with (the data's), so the saved
model runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, pad_stack, ratio
from .datasets import PackedWindows
from .losses import sparse_ce

#: the family this objective trains (``models/elmo.py``)
FAMILY_NAME = "elmo"


class _FamilyName(str):
    """A registered family's name with the ``.value`` of :class:`~transferlab.config.Family`
    members, which ``objectives list`` and ``model_settings`` read."""

    @property
    def value(self) -> str:
        return str(self)


@dataclass
class BiLMConfig:
    """Bidirectional LM settings."""

    separate_documents: bool = True
    """Insert the end-of-text token between packed documents; False packs them bare."""

    def validate(self) -> "BiLMConfig":
        return self


def direction_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each direction's targets from ``labels`` (B, T) (-100 at padding).

    Returns:
        ``(forward, backward)``, each (B, T - 1): ``forward[:, t]`` is token ``t + 1``, read from
        the forward state at ``t``; ``backward[:, t]`` is token ``t``, read from the backward
        state at ``t + 1``. A target counts only where both the token and the state reading it
        are real, so neither direction predicts from (or into) padding.
    """
    pair = (labels[:, 1:] != -100) & (labels[:, :-1] != -100)  # (B, T-1)
    return labels[:, 1:].masked_fill(~pair, -100), labels[:, :-1].masked_fill(~pair, -100)


class BiLM(Objective):
    """Forward next-token + backward previous-token prediction; needs an ``elmo`` model."""

    name = "bilm"
    family = _FamilyName(FAMILY_NAME)
    heads = {"lm": {"type": "bilm_softmax"}}
    metric_names = ("bilm_loss", "fwd_loss", "bwd_loss", "fwd_ppl", "bwd_ppl")
    lm_loss_metric = None  # the whole loss is the LM loss: the run's perplexity is exp(bilm_loss)
    sparse_targets = True

    def __init__(self, tokenizer: Any, config: BiLMConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer (its vocabulary also fills a char-input model's character
                table) or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`BiLMConfig`; keyword ``settings`` override its fields.
        """
        self.sp = as_tokenizer_ids(tokenizer)
        self.tokenizer = tokenizer if callable(getattr(tokenizer, "convert_ids_to_tokens", None)) else None
        self.config = make_config(BiLMConfig, config, settings, self.name)
        ids = SpecialIds.resolve(tokenizer=self.sp)
        self.separator = ids.eos if ids.eos is not None else self.sp.bos_token_id
        if self.config.separate_documents and self.separator is None:
            raise ConfigError("bilm: separate_documents needs an end-of-text token (eos, sep or bos) in the "
                              "tokenizer; add one or set separate_documents=false")
        self.pad_id = ids.pad

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is an ``elmo`` biLM with the biLM softmax as ``lm`` head."""
        cfg = getattr(cfg, "config", cfg)
        if str(cfg.family) != FAMILY_NAME:
            raise ConfigError(f"objective 'bilm' trains a bidirectional LSTM LM: it needs model.family=elmo "
                              f"(presets elmo-tiny, elmo-mini, elmo-small), got model.family={cfg.family}; "
                              "a transformer decoder trains with clm, an encoder with mlm")
        if cfg.vocab_size < self.sp.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                              f"({self.sp.vocab_size}); set model.vocab_size={self.sp.vocab_size}")
        head = (cfg.heads or {}).get("lm")
        if head is None or head.get("type") != "bilm_softmax":
            raise ConfigError(f"objective 'bilm' needs model.heads.lm = {{'type': 'bilm_softmax'}} (the shared "
                              f"softmax of both directions); model.heads has {cfg.heads!r}")

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The trainer's module; a char-input model with an empty character table gets the one of
        this objective's tokenizer first (a one-line error when there is none to read)."""
        from ..models.backbone import backbone_of
        from ..models.elmo import ElmoBiLM, set_token_characters

        core = self.unwrap_model(model)
        bb = backbone_of(core)
        if isinstance(bb, ElmoBiLM) and bb.char_cnn is not None and not bool(bb.char_table[:, 0].any()):
            if self.tokenizer is None:
                raise ConfigError("bilm: the model reads characters (family_options.token_input=chars) but its "
                                  "character table is empty and the objective has no tokenizer vocabulary to fill "
                                  "it from; build the objective with a Tokenizer or call "
                                  "models.elmo.set_token_characters(model, tokenizer)")
            set_token_characters(core, self.tokenizer)
        return super().wrap_model(model)

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Windows of ``seq_len`` tokens overlapping by one, documents separated by eos."""
        if seq_len < 2:
            raise ConfigError(f"bilm needs seq_len >= 2, got {seq_len}")
        sep = self.separator if self.config.separate_documents else None
        return PackedWindows(shards, seq_len, stride=seq_len - 1, separator=sep)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> ``input_ids``, ``attention_mask``, ``labels`` (B, T) and ``n_targets``.

        ``labels`` are the inputs with -100 at padding; both directions read them
        (:func:`direction_labels`): a pair of neighbouring real tokens is one forward and one
        backward target, which ``n_targets`` counts. ``rng`` is unused (no randomness).
        """
        rows = [np.asarray(e, dtype=np.int64).reshape(-1) for e in examples]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            ids = np.stack(rows)
            am = np.ones_like(ids)
        else:
            ids, am = pad_stack(rows, self.pad_id)
        self.sp.check_ids(ids[am > 0])
        labels = np.where(am > 0, ids, -100)
        n = 2 * int(((am[:, 1:] > 0) & (am[:, :-1] > 0)).sum())  # neighbouring real pairs, one per direction
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(am),
                "labels": torch.from_numpy(labels), "n_targets": torch.tensor(n)}

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        """Both directions' summed NLL through the one ``lm`` head, and the per-direction metrics.

        Args:
            module: a bare TransferModel or what :meth:`wrap_model` returned.
            batch: what :meth:`collate` returned, on the model's device.

        Returns:
            ``(forward NLL sum + backward NLL sum, metrics)``.
        """
        model = self._model_of(module)
        h = model.backbone(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
        fwd, bwd = h.chunk(2, dim=-1)  # (B, T, P) each: [forward; backward]
        head, labels = model.heads["lm"], batch["labels"]
        fwd_labels, bwd_labels = direction_labels(labels)
        # forward state at t predicts t + 1; backward state at t predicts t - 1; one softmax
        f_sum, _, n_f = sparse_ce(head, fwd[:, :-1], fwd_labels, dense=True)
        b_sum, _, n_b = sparse_ce(head, bwd[:, 1:], bwd_labels, dense=True)
        f_mean, b_mean = ratio(f_sum, n_f), ratio(b_sum, n_b)
        return f_sum + b_sum, {"bilm_loss": ratio(f_sum + b_sum, n_f + n_b), "fwd_loss": f_mean, "bwd_loss": b_mean,
                               "fwd_ppl": f_mean.clamp(max=50).exp(), "bwd_ppl": b_mean.clamp(max=50).exp()}
