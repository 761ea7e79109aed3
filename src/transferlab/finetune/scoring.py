"""Running a fine-tuned model over examples: device, autocast, progress bars and the scoring core
that training (validation), ``evaluate`` and the test split share."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch

from ..training.distributed import DistInfo
from .task_types import TaskType

__all__ = ["score"]


def _device(name: str) -> torch.device:
    from ..runtime import resolve_device

    return resolve_device(name)


def _autocast(device: torch.device, dtype: str) -> Callable[[], Any]:
    """A factory of the forward context: bf16/fp16 autocast (fp32 master weights) or nothing."""
    dtype = _resolved(dtype, device)
    if dtype in ("bf16", "fp16"):
        half = torch.bfloat16 if dtype == "bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=half)
    return contextlib.nullcontext


def _resolved(dtype: str, device: torch.device) -> str:
    """``auto`` as in pre-training (:func:`~transferlab.runtime.resolve_dtype`: bf16 where it
    is native, else fp32); ``bf16``, ``fp16`` and ``fp32`` as they are."""
    from ..runtime import resolve_dtype

    return resolve_dtype(str(dtype), device)


def _inference(ctx: Callable[[], Any]) -> Callable[[], Any]:
    @contextlib.contextmanager
    def both():
        with torch.inference_mode(), ctx():
            yield

    return both


def _bar(total: int, desc: str, quiet: bool, leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=leave, dynamic_ncols=True, unit="ex" if not leave else "step")


def score(w: TaskType, model: Any, examples: Sequence[dict[str, Any]], batch_size: int,
           ctx: Callable[[], Any], quiet: bool, desc: str,
           info: DistInfo | None = None) -> tuple[dict[str, float], list[Any]]:
    """Metrics and predictions over ``examples``. Under torchrun rank ``r`` predicts examples
    ``r, r + W, ...`` and the predictions are gathered back into their order, so every example
    is scored exactly once and every rank gets the same metrics (and the same early-stopping
    decisions)."""
    world = info.world_size if info is not None and info.enabled else 1
    mine = examples[info.rank::world] if world > 1 else examples
    feats = w.encode(mine, train=False)
    was_training = model.training
    model.eval()
    bar = _bar(len(feats), desc, quiet, leave=False)
    try:
        preds = w.predict(model, mine, feats, batch_size, _inference(ctx), bar) if mine else []
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, preds)
        preds = [None] * len(examples)
        for r, part in enumerate(parts):
            preds[r::world] = part
    return w.score(preds, examples), preds
