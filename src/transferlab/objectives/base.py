"""The contract every pre-training objective follows: a dataset view, a collator and a loss.

An objective never subclasses the model. It

1. ``check_model(cfg)`` — raises :class:`~transferlab.errors.ConfigError` when the objective does
   not fit the family (clm needs a decoder, denoise an encoder-decoder, ...);
2. ``dataset(shards, seq_len)`` — a deterministic, index-addressable view of the prepared token
   shards (``len`` + ``__getitem__``), e.g. packed windows or sentence pairs; O(1) memory;
3. ``collate(examples, rng)`` — turns a list of examples into a batch dict of tensors, drawing all
   randomness (masking, noise) from ``rng`` (a ``numpy.random.Generator`` owned and checkpointed
   by the trainer, so masking is dynamic yet a resumed run is bit-identical). The batch holds
   ``n_targets`` (a 0-d long tensor): the number of predicted tokens, so the trainer can
   normalise the loss over a whole accumulated (and distributed) batch;
4. ``loss(model, batch)`` — returns :class:`LossOutput` with the *sum* of per-target losses
   (the trainer divides by the total ``n_targets``) and detached metrics for logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # 0-d, sum over this micro-batch's targets (weights included)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"mlm_loss": .., "nsp_acc": ..}


class Objective(Protocol):
    name: str

    def check_model(self, cfg: Any) -> None: ...

    def dataset(self, shards: Any, seq_len: int) -> Sequence[Any]: ...

    def collate(self, examples: list[Any], rng: np.random.Generator) -> dict[str, torch.Tensor]: ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput: ...
