"""Causal language modelling (GPT): next-token prediction on packed windows.

Dataset: the token stream ``doc_0 <eos> doc_1 <eos> ...`` (GPT-2's ``<|endoftext|>`` between
documents, so the model learns where documents end and that what follows is unrelated) cut into
windows of ``seq_len`` tokens every ``seq_len - 1`` tokens: consecutive windows overlap by one
token, so every token of the stream but the very first is a target exactly once.

Collator: ``labels`` are the inputs with -100 at padding, in the ``transformers`` convention
(``labels[t]`` is predicted from positions ``< t``; the loss shifts), so
``model(input_ids, labels=labels).loss`` equals ``loss_sum / n_targets``. Nothing is predicted
for padding (windows of one length never pad; short user-provided examples do).

Loss: the hidden state at ``t`` predicts ``labels[t + 1]``; fp32 cross-entropy summed.

Backward LM (ULMFiT's second direction): ``objective.reverse=true`` reverses each window's real
tokens in the collator, so any causal model learns to predict the previous token. A model that
reads right to left itself (``awd-lstm`` with ``family_options.backwards=true``, which a
backward classifier then reads its text with) gets its labels in its reading order instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Family
from ..errors import ConfigError
from ..specials import SpecialIds
from .base import Objective, as_tokenizer_ids, make_config, pad_stack, ratio
from .losses import sparse_ce
from .datasets import PackedWindows


@dataclass
class CLMConfig:
    """Causal LM settings."""

    separate_documents: bool = True
    """Insert the end-of-text token between packed documents (GPT-2); False packs them bare."""
    reverse: bool = False
    """Train a backward LM: each window's tokens are reversed (ULMFiT's backward model); not
    with a model that reads backwards itself (awd-lstm family_options.backwards)."""

    def validate(self) -> "CLMConfig":
        return self


class CLM(Objective):
    """Next-token prediction; the model needs a decoder with an ``lm`` head."""

    name = "clm"
    family = Family.DECODER
    heads = {"lm": {}}
    metric_names = ("clm_loss", "clm_acc")
    lm_loss_metric = "clm_loss"

    def __init__(self, tokenizer: Any, config: CLMConfig | None = None, **settings: Any):
        """Args:
            tokenizer: a Tokenizer or :class:`~transferlab.objectives.base.TokenizerIds`.
            config: a :class:`CLMConfig`; keyword ``settings`` override its fields.
        """
        self.sp = as_tokenizer_ids(tokenizer)
        self.config = make_config(CLMConfig, config, settings, self.name)
        sp = self.sp
        ids = SpecialIds.resolve(tokenizer=sp)
        # the document separator: eos (GPT-2's <|endoftext|>; the rule falls back to [SEP]), else bos
        self.separator = ids.eos if ids.eos is not None else sp.bos_token_id
        if self.config.separate_documents and self.separator is None:
            raise ConfigError(
                "clm: separate_documents needs an end-of-text token (eos, sep or bos) in the tokenizer; "
                "add one or set separate_documents=false"
            )
        self.pad_id = ids.pad

    def check_model(self, cfg: Any) -> None:
        """ConfigError unless the model is a decoder with an ``lm`` head and a large enough vocabulary."""
        cfg = self._check_common(cfg, Family.DECODER, self.sp)
        if self.config.reverse and _reads_backwards(cfg):
            raise ConfigError("clm: objective.reverse=true on a model that reads backwards already "
                              "(model.family_options.backwards=true) would read forwards; drop one of the two")

    def dataset(self, shards: Any, seq_len: int) -> PackedWindows:
        """Windows of ``seq_len`` tokens overlapping by one, documents separated by eos."""
        if seq_len < 2:
            raise ConfigError(f"clm needs seq_len >= 2, got {seq_len}")
        sep = self.separator if self.config.separate_documents else None
        return PackedWindows(shards, seq_len, stride=seq_len - 1, separator=sep)

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Windows -> ``input_ids``, ``attention_mask``, ``labels`` (B, T) and ``n_targets``.

        ``rng`` is unused (the objective has no randomness) but kept for the common signature.
        """
        rows = [np.asarray(e, dtype=np.int64).reshape(-1) for e in examples]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            ids = np.stack(rows)
            am = np.ones_like(ids)
        else:
            ids, am = pad_stack(rows, self.pad_id)
        self.sp.check_ids(ids[am > 0])
        if self.config.reverse:  # right padding: only the real tokens turn round
            ids = _flip_real(ids, am)
        labels = np.where(am > 0, ids, -100)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(am),
            "labels": torch.from_numpy(labels),
            "n_targets": torch.tensor(int((labels[:, 1:] != -100).sum())),
        }

    def compute(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]):
        model = self._model_of(module)
        out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        h = out.last_hidden_state[:, :-1]  # (B, T-1, C): position t predicts token t+1
        labels = batch["labels"]
        if _reads_backwards(model.config):  # its states come in reading order: so must the labels
            from ..models.lstm import flip_rows

            labels = flip_rows(labels, batch.get("attention_mask"))
        loss_sum, correct, n = sparse_ce(model.heads["lm"], h, labels[:, 1:], dense=True)
        return loss_sum, {"clm_loss": ratio(loss_sum, n), "clm_acc": ratio(correct, n)}


def _reads_backwards(cfg: Any) -> bool:
    """Whether the model reads each sequence right to left (awd-lstm ``backwards``)."""
    return bool(getattr(getattr(cfg, "family_options", None), "backwards", False))


def _flip_real(ids: np.ndarray, am: np.ndarray) -> np.ndarray:
    """(B, T) ids with each row's real (leading) tokens reversed; padding stays on the right."""
    out = ids.copy()
    for b, n in enumerate(am.sum(1)):
        out[b, :n] = ids[b, :n][::-1]
    return out
