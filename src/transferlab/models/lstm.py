"""Reusable LSTM pieces: a weight-dropped LSTM layer, locked (variational) dropout, embedding dropout.

The regularisers of AWD-LSTM (Merity et al., 2017, "Regularizing and Optimizing LSTM Language
Models"), used by ULMFiT (Howard & Ruder, 2018):

* :class:`WeightDropLSTM`: DropConnect on the hidden-to-hidden matrix. One mask is drawn per
  forward and applied to the *weights*, then torch's fused LSTM kernel runs on the dropped
  weights, so every time step of the sequence sees the same dropped matrix and the recurrence
  stays one native call (the speed of ``torch.nn.LSTM``).
* :class:`LockedDropout`: one Bernoulli mask per sequence and feature, shared over time.
* :func:`embedding_dropout`: drops whole rows (words) of the token table, the kept ones scaled
  by ``1 / (1 - p)``; every occurrence of a dropped word in the batch reads zeros.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (1, B, H)


class WeightDropLSTM(nn.Module):
    """One unidirectional, batch-first LSTM layer with DropConnect on ``weight_hh``.

    Parameters carry ``torch.nn.LSTM``'s names (``weight_ih_l0``, ``weight_hh_l0``,
    ``bias_ih_l0``, ``bias_hh_l0``) and layout (gates i, f, g, o), so an ``nn.LSTM(I, H)``
    state dict loads into it and, with ``weight_p=0`` or in eval mode, both compute the same.

    Args:
        input_size: width I of the inputs.
        hidden_size: width H of the hidden state.
        weight_p: DropConnect probability on the hidden-to-hidden matrix (training only).
    """

    def __init__(self, input_size: int, hidden_size: int, weight_p: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.weight_p = input_size, hidden_size, float(weight_p)
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s initialisation: every weight uniform in +-1/sqrt(H)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def dropped_weight_hh(self) -> torch.Tensor:
        """The hidden-to-hidden matrix (4H, H) this forward uses: in training, entries zeroed
        with probability ``weight_p`` and the rest scaled by ``1 / (1 - weight_p)``."""
        if self.training and self.weight_p > 0:
            return F.dropout(self.weight_hh_l0, self.weight_p, training=True)
        return self.weight_hh_l0

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """Run the layer over a sequence.

        Args:
            x: inputs (B, T, I).
            state: initial ``(h, c)``, each (1, B, H); None = zeros.

        Returns:
            Outputs (B, T, H) and the final ``(h, c)``, each (1, B, H).
        """
        if state is None:
            z = x.new_zeros(1, x.shape[0], self.hidden_size)
            state = (z, z)
        weights = [self.weight_ih_l0, self.dropped_weight_hh(), self.bias_ih_l0, self.bias_hh_l0]
        if _cpu_low_precision(x) and not cpu_lowp_lstm_supported():
            # oneDNN has no bf16/fp16 LSTM on this CPU (AVX2 only): the recurrence runs in fp32
            with torch.autocast("cpu", enabled=False):
                y, h, c = torch._VF.lstm(x.float(), tuple(t.float() for t in state), [w.float() for w in weights],
                                         True, 1, 0.0, self.training, False, True)
            return y.to(x.dtype), (h.to(x.dtype), c.to(x.dtype))
        if x.dtype != weights[0].dtype and not torch.is_autocast_enabled(x.device.type):
            weights = [w.to(x.dtype) for w in weights]
        # the fused kernel nn.LSTM calls, on the (dropped) weights: one native call per sequence
        y, h, c = torch._VF.lstm(x, state, weights, True, 1, 0.0, self.training, False, True)
        return y, (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, weight_p={self.weight_p}"


def _cpu_low_precision(x: torch.Tensor) -> bool:
    """Whether the LSTM kernel would run in bf16/fp16 on a CPU (autocast or low-precision inputs)."""
    if x.device.type != "cpu":
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
    return x.dtype in (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def cpu_lowp_lstm_supported() -> bool:
    """Whether torch's CPU LSTM kernel runs in bf16 here (oneDNN needs native bf16; on AVX2-only
    CPUs ``nn.LSTM`` under bf16 autocast fails to create its primitive). Probed once."""
    z = torch.zeros(1, 1, 4)
    w = [torch.zeros(16, 4), torch.zeros(16, 4), torch.zeros(16), torch.zeros(16)]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch._VF.lstm(z, (z, z), w, True, 1, 0.0, False, False, True)
    except RuntimeError:
        return False
    return True


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence and feature, the same at every time step.

    Args:
        p: drop probability (training only).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if not self.training or self.p <= 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - self.p) / (1.0 - self.p)  # (B, 1, C)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(embed: nn.Embedding, ids: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Token embeddings with whole words dropped (AWD-LSTM's embedding dropout).

    Equal to looking ``ids`` up in ``weight * mask`` with one Bernoulli(1 - p) draw per row of
    the table scaled by ``1 / (1 - p)`` (Gal & Ghahramani's formulation), but the mask is
    gathered at the looked-up rows instead of multiplying the whole (V, E) table.

    Args:
        embed: the token table (V, E).
        ids: token ids (B, T).
        p: probability of dropping a word (training only).
        training: whether to drop.

    Returns:
        Embeddings (B, T, E).
    """
    x = embed(ids)  # (B, T, E)
    if not training or p <= 0:
        return x
    w = embed.weight
    keep = w.new_empty(w.shape[0]).bernoulli_(1.0 - p) / (1.0 - p)  # (V,): one draw per word
    return x * keep[ids].unsqueeze(-1).to(x.dtype)


def flip_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's real (leading, right-padded) positions; padding stays on the right.

    Args:
        x: (B, T, ...) values.
        mask: (B, T) 1 = real position (right padding), or None (every position real).

    Returns:
        (B, T, ...) with ``out[b, t] = x[b, n_b - 1 - t]`` for ``t < n_b`` (``n_b`` real
        positions of row ``b``) and ``x[b, t]`` after them. Its own inverse.
    """
    if mask is None or bool(mask.all()):
        return x.flip(1)
    B, T = mask.shape
    n = mask.long().sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(T, device=x.device).expand(B, T)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, idx.view(B, T, *([1] * (x.dim() - 2))).expand_as(x))
