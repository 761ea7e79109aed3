"""Heads: hidden states in, logits out.

Pre-training heads: ``lm`` (GPT/BART/T5 LM head, or BERT's MLM head with its dense + act + norm
transform), ``nsp`` (next-sentence prediction on the pooled [CLS]), ``rtd`` (ELECTRA's
replaced-token detection). Fine-tuning heads: ``classification`` (``num_labels``; 1 = regression),
``token_classification``, ``span`` (extractive QA start/end). Each head is built from
``(ModelConfig, settings dict)``; the settings live in ``config.heads`` and so in ``config.json``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import FAMILY_SPECS, ModelConfig
from ..errors import ConfigError
from .blocks import Norm, activation_fn


class LMHead(nn.Module):
    """Vocabulary projection, optionally tied to the token embedding.

    ``forward`` takes hidden states of any leading shape (…, C), so MLM can gather the masked
    positions *before* the projection (sparse prediction): only picked rows hit the big matmul.
    """

    def __init__(self, cfg: ModelConfig, embed_tokens: nn.Embedding, **_: Any):
        super().__init__()
        self.tied = cfg.tie_embeddings
        self.embed = [embed_tokens]  # not registered twice
        self.transform = None
        # With an embedding projection (embedding_size != d_model) the transform maps back to the
        # embedding width, so the output matrix (tied or not) is (V, E), as in HF's
        # ElectraGeneratorPredictions (dense hidden -> embedding_size, LayerNorm(embedding_size)).
        E = cfg.emb_dim
        if E != cfg.d_model and not cfg.lm_head_transform:
            raise ConfigError(f"an lm head on a model with embedding_size={E} != d_model={cfg.d_model} needs "
                              "lm_head_transform=true (its dense maps d_model back to embedding_size)")
        if cfg.lm_head_transform:
            self.transform = nn.Sequential()
            self.transform.dense = nn.Linear(cfg.d_model, E)
            self.transform.act = _Act(activation_fn(cfg.activation if cfg.activation in ("gelu", "gelu_tanh", "relu") else "gelu"))
            self.transform.norm = Norm(E, cfg.norm, cfg.norm_eps)
        self.weight = None if self.tied else nn.Parameter(torch.empty(cfg.vocab_size, E).normal_(0, cfg.init_std))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.lm_head_bias else None
        self.scale = cfg.d_model**-0.5 if (cfg.scale_logits and cfg.tie_embeddings) else 1.0

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed[0].weight if self.tied else self.weight

    def transform_hidden(self, h: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        """Everything before the vocabulary projection (BERT's transform, T5's logit scale), so a
        fused loss can do the projection itself: ``forward(h) == F.linear(transform_hidden(h),
        output_weight, bias)``."""
        if self.transform is not None:
            h = self.transform(h)
        if self.scale != 1.0:
            h = h * self.scale
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        return F.linear(self.transform_hidden(h), self.output_weight, self.bias)


class _Act(nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def pool(cfg: ModelConfig, h: torch.Tensor, attention_mask: torch.Tensor | None, how: str,
         pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence vector (B, C) from hidden states (B, T, C).

    how: ``cls`` (the pooler output when the encoder has one, else h[:, 0]), ``mean`` (masked mean),
    ``last`` (last non-pad token; right or left padding), ``auto`` (the family's choice,
    ``FamilySpec.pooling``: cls for encoders, last for decoders and encoder-decoders, mean for
    elmo and word2vec), ``concat`` (ULMFiT's concat pooling
    ``[h_T, maxpool(H), meanpool(H)]`` over the real tokens: (B, 3C)); ``ulmfit`` pools as
    ``concat`` (its head differs, see :class:`ClassificationHead`).
    """
    if how == "auto":  # the family's choice: cls for encoders, last for causal models, ...
        how = FAMILY_SPECS[str(cfg.family)].pooling
    if how == "cls":
        return pooler_output if pooler_output is not None else h[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    m = attention_mask.to(h.dtype)
    if how == "mean":
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    if how == "last":
        T = h.shape[1]
        # index of the last attended position, whether padding is on the left or the right
        idx = (torch.arange(T, device=h.device)[None] * attention_mask.long()).argmax(1)
        return h[torch.arange(h.shape[0], device=h.device), idx]
    if how in CONCAT_POOLINGS:
        last = pool(cfg, h, attention_mask, "last")  # (B, C)
        mx = h.masked_fill(m[..., None] == 0, float("-inf")).amax(1)  # (B, C): padding never wins
        return torch.cat([last, mx, pool(cfg, h, attention_mask, "mean")], -1)  # (B, 3C)
    raise ValueError(f"unknown pooling {how!r}; expected cls, mean, last, concat, ulmfit or auto")


#: poolings that concatenate [last, max, mean]: the classifier reads 3 x d_model
CONCAT_POOLINGS = ("concat", "ulmfit")
#: hidden width of ULMFiT's classifier head (the paper's 50)
ULMFIT_HIDDEN = 50


class NSPHead(nn.Module):
    """Next-sentence prediction: 2 logits from the pooled [CLS] vector."""

    def __init__(self, cfg: ModelConfig, embed_tokens=None, **_: Any):
        super().__init__()
        self.seq_relationship = nn.Linear(cfg.d_model, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, 2)
        return self.seq_relationship(pooled)


class RTDHead(nn.Module):
    """ELECTRA discriminator: one logit per token, 'was this token replaced?'."""

    def __init__(self, cfg: ModelConfig, embed_tokens=None, **_: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = activation_fn("gelu")
        self.out = nn.Linear(cfg.d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T)
        return self.out(self.act(self.dense(h))).squeeze(-1)


class ClassificationHead(nn.Module):
    """Sequence classification / regression (num_labels=1) on a pooled vector.

    With ``pooling="concat"`` the classifier reads ``[h_T, max, mean]`` (3 x d_model); with
    ``pooling="ulmfit"`` the same pooled vector goes through ULMFiT's head (Howard & Ruder,
    2018, section 3.3): two blocks of batch norm, dropout and a linear layer, ReLU between
    (3d -> 50 -> num_labels).

    ``dense_act`` (``gelu``, ``gelu_tanh`` or ``relu``) puts a dense layer and that activation
    before the classifier, on the first token rather than a tanh pooler: the heads of ELECTRA
    (gelu), RoFormer (its hidden_act) and DistilBERT (relu) in transformers, so their checkpoints
    load exactly.
    """

    def __init__(self, cfg: ModelConfig, embed_tokens=None, num_labels: int = 2, pooling: str = "auto",
                 dropout: float | None = None, dense_act: str | None = None, **_: Any):
        super().__init__()
        self.num_labels, self.pooling = num_labels, pooling
        self.dropout = nn.Dropout(cfg.dropout if dropout is None else dropout)
        self.dense_act = dense_act
        if dense_act is not None:
            if dense_act not in ("gelu", "gelu_tanh", "relu"):
                raise ConfigError(f"classification dense_act must be gelu, gelu_tanh or relu, got {dense_act!r}")
            self.dense = nn.Linear(cfg.d_model, cfg.d_model)
            self.act = _Act(activation_fn(dense_act))
        width = cfg.d_model * (3 if pooling in CONCAT_POOLINGS else 1)
        self.ulmfit = pooling == "ulmfit"
        if self.ulmfit:
            if dense_act is not None:
                raise ConfigError("classification pooling='ulmfit' has its own hidden layer; drop dense_act")
            self.bn1, self.dense = nn.BatchNorm1d(width), nn.Linear(width, ULMFIT_HIDDEN)
            self.bn2, width = nn.BatchNorm1d(ULMFIT_HIDDEN), ULMFIT_HIDDEN
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, C) or (B, 3C) -> (B, num_labels)
        if self.ulmfit:  # BN -> dropout -> linear -> ReLU -> BN -> dropout -> linear
            h = torch.relu(self.dense(self.dropout(_batch_norm(self.bn1, pooled))))  # (B, 50)
            return self.classifier(self.dropout(_batch_norm(self.bn2, h)))
        if self.dense_act is not None:
            pooled = self.act(self.dense(self.dropout(pooled)))  # (B, C)
        return self.classifier(self.dropout(pooled))


def _batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, C)
    """``bn(x)``, except that a training batch of one row (the last, short batch of an epoch) is
    normalised with the running statistics: one row has no variance to normalise by."""
    if bn.training and x.shape[0] == 1:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


class TokenClassificationHead(nn.Module):
    """Per-token labels (tagging)."""

    def __init__(self, cfg: ModelConfig, embed_tokens=None, num_labels: int = 2, dropout: float | None = None, **_: Any):
        super().__init__()
        self.num_labels = num_labels
        self.dropout = nn.Dropout(cfg.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(cfg.d_model, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, num_labels)
        return self.classifier(self.dropout(h))


class SpanHead(nn.Module):
    """Extractive QA: start and end logits per token."""

    def __init__(self, cfg: ModelConfig, embed_tokens=None, **_: Any):
        super().__init__()
        self.qa_outputs = nn.Linear(cfg.d_model, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, 2): start, end
        return self.qa_outputs(h)


def head_macs_of(cfg: ModelConfig, positions: float, predicted: float) -> float:
    """Multiply-accumulates of ``cfg.heads`` for one sequence, concat pooling and ULMFiT's head
    counted at their widths (the other heads as :func:`~transferlab.models.flops.head_macs`).

    Args:
        cfg: the model config.
        positions: per-token outputs (T).
        predicted: rows that reach the vocabulary projection.

    Returns:
        Multiply-accumulates (FLOPs / 2).
    """
    import dataclasses

    from .flops import head_macs

    macs, others, d = 0.0, {}, cfg.d_model
    for name, settings in (cfg.heads or {}).items():
        settings = settings or {}
        kind, how = settings.get("type", name), settings.get("pooling", "auto")
        if kind == "classification" and how in CONCAT_POOLINGS:
            labels = settings.get("num_labels", 2)
            macs += 3 * d * ULMFIT_HIDDEN + ULMFIT_HIDDEN * labels if how == "ulmfit" else 3 * d * labels
        else:
            others[name] = settings
    return macs + head_macs(dataclasses.replace(cfg, heads=others), positions, predicted)


HEADS: dict[str, type[nn.Module]] = {
    "lm": LMHead,
    "nsp": NSPHead,
    "rtd": RTDHead,
    "classification": ClassificationHead,
    "token_classification": TokenClassificationHead,
    "span": SpanHead,
}
# Heads that read the pooled sequence vector rather than per-token states.
POOLED_HEADS = {"nsp", "classification"}
