"""The one LM cross-entropy: every pre-training objective, the model's ``labels`` loss and
seq2seq fine-tuning compute their token-level cross-entropy here.

Two entry points, one rule (fp32 softmax, ``-100`` ignored, decoders shift by one):

* :func:`lm_cross_entropy` — on logits that already exist, ``(..., V)`` against ``(...)``
  labels; what ``TransferModel(labels=...)`` returns (mean) and what ELECTRA's generator, which
  needs its logits for sampling, sums.
* :func:`sparse_ce` — from hidden states through an LM head, gathering the labelled rows
  *before* the vocabulary projection and, for LM heads, running projection and loss fused and
  chunked (:mod:`.fused_ce`): what the pre-training objectives use.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fused_ce

IGNORE_INDEX = -100  # the ``transformers`` convention for positions without a target


def lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean",
                     shift: bool = False) -> torch.Tensor:
    """Token-level cross-entropy in fp32, positions labelled -100 ignored.

    Args:
        logits: (..., V) scores, e.g. (B, T, V) or (N, V).
        labels: (...) target ids matching ``logits`` without its last dimension.
        reduction: ``mean`` (over the labelled positions) or ``sum``.
        shift: decoder LM: position t predicts label t + 1 (``logits[:, :-1]`` vs ``labels[:, 1:]``).

    Returns:
        A 0-d tensor.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def sparse_ce(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, fused: bool | None = None,
              dense: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on the labelled positions only, gathered *before* the head.

    With an LM head (``transform_hidden`` + ``output_weight``) the projection and the loss run
    fused and chunked (:func:`~transferlab.objectives.fused_ce.linear_cross_entropy`): the (N, V)
    logits are never materialised. Other heads get :func:`lm_cross_entropy` on ``head(h)``.

    Args:
        head: maps (N, C) hidden states to (N, V) logits (an LM head).
        hidden: (B, T, C) hidden states aligned with ``labels``.
        labels: (B, T) target ids, -100 where nothing is predicted.
        fused: use the fused loss for LM heads; None: :data:`fused_ce.ENABLED` (True).
        dense: most positions are targets (clm, denoise): under ``torch.compile`` feed every row
            to the fused loss, which masks the ignored ones, so the whole loss stays in the
            compiled graph. Sparse targets (MLM's ~15%) are gathered eagerly instead: their
            number changes every batch, and a compiled graph would recompile for each.

    Returns:
        (sum of per-target losses in fp32, number of correct argmax predictions, number of targets).
    """
    use_fused = (fused_ce.ENABLED if fused is None else fused) and hasattr(head, "transform_hidden")
    if dense and use_fused and torch.compiler.is_compiling():
        loss_sum, correct = fused_ce.linear_cross_entropy(
            head.transform_hidden(hidden.reshape(-1, hidden.shape[-1])), head.output_weight, head.bias,
            labels.reshape(-1))
        return loss_sum, correct, (labels != IGNORE_INDEX).sum()
    return _gathered_ce(head, hidden, labels, use_fused)


@torch.compiler.disable
def _gathered_ce(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                 use_fused: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sparse_ce` on the gathered target rows, always eager (see there)."""
    sel = labels != IGNORE_INDEX  # (B, T)
    if bool(sel.all()):
        h, tgt = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)  # every row: no gather
    else:
        h, tgt = hidden[sel], labels[sel]  # (N, C), (N,)
    if use_fused:
        # only predicted rows reach the vocabulary matmul, chunk by chunk
        loss_sum, correct = fused_ce.linear_cross_entropy(head.transform_hidden(h), head.output_weight, head.bias, tgt)
        return loss_sum, correct, sel.sum()
    logits = head(h)  # (N, V): only predicted rows reach the big vocabulary matmul
    loss_sum = lm_cross_entropy(logits, tgt, reduction="sum")
    correct = (logits.detach().argmax(-1) == tgt).sum()
    return loss_sum, correct, sel.sum()
