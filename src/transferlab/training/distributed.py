"""Distributed training under ``torchrun``: process group, DDP/FSDP wrapping, per-rank data.

The same command runs on one process or under ``torchrun --nproc_per_node=N``: torchrun sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and :func:`init_distributed` joins the group (NCCL on GPUs,
gloo on CPUs). Data parallelism is exact: :class:`GlobalSampler` maps a *global* micro-batch index
to the examples each rank reads, so N processes with batch B see exactly the examples one process
with batch N*B sees, and the trainer normalises the loss by the all-reduced number of targets,
making the two runs mathematically the same optimisation.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..runtime import resolve_device


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, writes shared files and shows the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is initialised (collectives must be called on all ranks)."""
        return dist.is_available() and dist.is_initialized()


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device.

    Args:
        device: ``auto`` (or None: CUDA when available), ``cpu`` or ``cuda``, as
            :func:`~transferlab.runtime.resolve_device` spells them; a CUDA process uses GPU
            ``LOCAL_RANK``.

    Returns:
        A :class:`DistInfo`; ``world_size == 1`` and no process group without torchrun.
    """
    use_cuda = resolve_device(device).type == "cuda"  # the one device rule; other devices train on the CPU
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup_distributed(wait: bool = True) -> None:
    """Leave the process group (call once at the end of a run).

    Args:
        wait: first wait at a barrier until every rank has got here. A gloo process that tears
            down its group and exits while a peer is still working (rank 0 writing the model,
            say) can abort at exit ("terminate called without an active exception", SIGABRT),
            failing a finished run. Pass False on an error path: the other ranks may never
            arrive, and torchrun stops them once this process exits.
    """
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) when distributed; identity otherwise."""
    if info.enabled and info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled and info.world_size > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- wrapping
def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    """DDP (replicated) or FSDP2 (sharded) wrapper; the model itself when not distributed.

    Wrap the module whose ``forward`` computes the loss (the trainer's model + objective), so the
    wrapper's hooks run. FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every transformer
    block separately and then the root (embeddings, heads), so only one block's full parameters
    exist at a time; it works in place and keeps parameter names, so checkpoints are
    interchangeable with DDP and single-process runs.
    """
    if not info.enabled or info.world_size == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..models.backbone import Backbone

        for b in [m for m in model.modules() if isinstance(m, Backbone)]:
            for unit in b.fsdp_units():  # the transformer blocks
                fully_shard(unit)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # find_unused_parameters: some objectives leave parameters out of the loss (MLM never reads
    # BERT's pooler); DDP must then not wait for their gradients. static_graph would avoid the
    # per-step graph walk but breaks under no_sync accumulation (a reducer assertion in torch 2.13).
    return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
               find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 and torch.compile keep the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps (``enabled=False``).

    Only the last micro-batch of an optimizer step needs synchronised gradients; DDP's
    ``no_sync`` and FSDP2's ``set_requires_gradient_sync`` let the others accumulate locally.
    """
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# ----------------------------------------------------------------------------- data
class GlobalSampler:
    """Deterministic global example order, sliced per rank.

    The run consumes one global stream of example positions ``p = 0, 1, 2, ...``; position ``p``
    is example ``perm_e[p % n]`` of epoch ``e = p // n`` (a fresh permutation per epoch, seeded by
    ``(seed, e)``). Global micro-batch ``g`` covers positions ``[g*B*W, (g+1)*B*W)`` and rank ``r``
    reads its ``B`` consecutive positions in it. Hence the data position of a run is just the
    number of micro-batches done, and the order does not depend on how it is split into ranks.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self._epoch, self._perm = -1, np.arange(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                          if self.shuffle else np.arange(self.n))
        return self._perm

    def positions(self, micro_batch: int) -> np.ndarray:
        """Global stream positions this rank reads in global micro-batch ``micro_batch``."""
        start = (micro_batch * self.world_size + self.rank) * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def indices(self, micro_batch: int) -> list[int]:
        """Dataset indices this rank reads in global micro-batch ``micro_batch``."""
        out = []
        for p in self.positions(micro_batch):
            epoch, i = divmod(int(p), self.n)
            out.append(int(self._permutation(epoch)[i]))
        return out

    def epoch_of(self, micro_batch: int) -> float:
        """Fractional epoch reached after ``micro_batch`` global micro-batches."""
        return micro_batch * self.world_size * self.batch_size / self.n
