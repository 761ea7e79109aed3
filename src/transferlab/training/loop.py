"""The explicit training loop: one optimizer step at a time, with named hooks.

Read :meth:`Trainer.fit` top to bottom: it is the whole engine. Each step

1. collates ``grad_accum`` micro-batches (indices from :class:`GlobalSampler`, randomness from
   the trainer-owned ``numpy.random.Generator``);
2. all-reduces the number of predicted tokens ``n_targets`` over micro-batches and ranks, so every
   micro-batch loss is ``loss_sum / N_total``: accumulation and data parallelism are exactly the
   large batch (DDP averages gradients over ranks, so we multiply by the world size);
3. runs forward (bf16 autocast or fp32) and backward per micro-batch, synchronising gradients only
   on the last one (DDP ``no_sync`` / FSDP2 ``set_requires_gradient_sync``);
4. checks the loss is finite *before* updating (a NaN stops the run with the last good checkpoint
   intact), clips the gradient norm and steps AdamW at the learning rate the schedule gives for
   the current progress (the max of steps, tokens and minutes used, each over its budget);
5. calls ``maybe_log`` / ``maybe_eval`` / ``maybe_save``.

Checkpoints hold everything that decides the next step (weights, optimizer, all random streams,
the data position), so ``fit(resume=True)`` continues a killed run bit-identically.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import TransferlabError
from ..objectives.base import Objective, metric_floats
from ..objectives.example_rng import example_rng
from ..runtime import cpu_has_native_bf16, resolve_dtype  # noqa: F401  (the one dtype choice; re-exported)
from .checkpoint import (capture_rng, clean_stale, latest_checkpoint, list_checkpoints, load_checkpoint,
                         restore_rng, save_checkpoint)
from .config import TrainConfig
from .distributed import DistInfo, GlobalSampler, all_reduce, grad_sync, wrap_model
from .optim import build_optimizer, lr_multiplier, set_lr
from .runlog import RunLog

EVAL_SEED = 1234  # validation masks/noise come from this fixed seed, so every evaluation is comparable


class TrainingDiverged(TransferlabError):
    """The loss (or gradient norm) became NaN/inf; the weights were not updated."""


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS after every step.

    Why: glibc unmaps large freed blocks, so every step page-faults its working set in again
    (BENCHMARKS.md, "Pre-training throughput", allocator tuned). Serving every block from the
    heap (``M_MMAP_MAX=0``) and never trimming it (``M_TRIM_THRESHOLD``) makes the steady state
    fault-free at the price of keeping the peak heap, as jemalloc/tcmalloc preloading would.
    Process-wide, idempotent; a no-op (False) without glibc or with the environment variable
    ``TRANSFERLAB_MALLOC_TUNING=0``.

    Returns:
        True when the settings were applied.
    """
    import ctypes
    import ctypes.util
    import platform

    if os.environ.get("TRANSFERLAB_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - no loadable libc
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_MAX, 0))


def compile_model(module: nn.Module, whole: bool = True) -> None:
    """``torch.compile`` in place (parameter and state-dict names unchanged).

    Args:
        module: what the trainer optimises.
        whole: compile ``module.forward`` as one graph: backbone and loss together, which is what
            an objective's wrapper (:class:`~transferlab.objectives.base.ObjectiveModule`) runs;
            the blocks, the masks and the fused LM-head loss have no data-dependent branches under
            compile, so clm and denoise compile to one graph (mlm breaks once, at its gather of
            the masked rows). False: compile each backbone's
            :meth:`~transferlab.models.backbone.Backbone.compile_units` separately (FSDP shards
            the same units, and a bare model's forward is not what the objectives call).
    """
    if whole:
        # shapes change between batches for denoising (padded lengths) and sparse MLM (number
        # of masked rows): after one recompile dynamo marks those dimensions dynamic.
        module.compile()
        return
    from ..models.backbone import Backbone

    for b in [m for m in module.modules() if isinstance(m, Backbone)]:
        for unit in b.compile_units():
            unit.compile()


def autocast_dtype(dtype: str) -> torch.dtype | None:
    """The autocast dtype of a resolved training dtype (``bf16``/``fp16``), None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(dtype))


def accumulate_gradients(engine: nn.Module, batches: Sequence[dict[str, Any]], n_total: float, info: DistInfo,
                         dtype: str, weights: Sequence[float] | None = None,
                         scaler: Any = None) -> list[tuple[torch.Tensor, dict[str, float]]]:
    """Forward and backward over one optimizer step's micro-batches: the trainer core shared by
    pre-training (:class:`Trainer`) and fine-tuning (:func:`transferlab.finetune.loop.finetune`).

    Each micro-batch's summed loss is divided by ``n_total``, the number of targets of the whole
    accumulated batch over all ranks (counted before any forward), and multiplied by the world size
    because DDP/FSDP average gradients over ranks. So the gradient is that of the mean loss over
    the large batch, whatever the split into micro-batches and processes. Gradients are all-reduced
    only on the last micro-batch (``no_sync``).

    Args:
        engine: the (possibly DDP/FSDP-wrapped) module whose ``forward(**batch)`` returns
            ``(loss_sum, metrics)``.
        batches: this rank's micro-batches, on the device.
        n_total: targets in the whole accumulated, distributed batch.
        info: this process's :class:`DistInfo`.
        dtype: resolved dtype: ``bf16``/``fp16`` autocast or ``fp32``.
        weights: per micro-batch factor (default 1); 0 runs a placeholder micro-batch that adds
            nothing (a rank with no examples left in a ragged last batch must still take part in
            the gradient all-reduce).
        scaler: a ``torch.amp.GradScaler`` for fp16 (the loss is scaled before backward).

    Returns:
        ``(detached loss_sum * weight, metrics)`` per micro-batch (metrics as ``forward`` gave them).
    """
    amp = autocast_dtype(dtype)
    scale = info.world_size / max(n_total, 1.0)  # DDP/FSDP average over ranks: undo it
    out = []
    for i, batch in enumerate(batches):
        w = 1.0 if weights is None else float(weights[i])
        with grad_sync(engine, enabled=i == len(batches) - 1):
            with torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                part, part_metrics = engine(**batch)
            loss = part.float() * (scale * w)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        out.append((part.detach() * w, part_metrics))
    return out


def clip_gradients(model: nn.Module, max_norm: float, measure: bool = False) -> float:
    """Clip the gradient norm to ``max_norm`` (0: off); return the norm before clipping.

    Args:
        measure: with ``max_norm`` 0, still compute the norm (the clip coefficient is clamped to
            exactly 1.0 then, so the gradients are unchanged); otherwise return 0.0 without work.
    """
    if not max_norm and not measure:
        return 0.0
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2 DTensor
        norm = norm.full_tensor()
    return float(norm)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _count_tokens(batch: dict[str, Any]) -> int:
    """Input tokens processed: encoder/decoder input positions (what tokens/s and max_tokens count)."""
    n = int(batch["input_ids"].numel()) if "input_ids" in batch else 0
    if "decoder_input_ids" in batch:
        n += int(batch["decoder_input_ids"].numel())
    return n


class _Prefetcher:
    """Collates micro-batches ahead in one thread, in order, each with the collator RNG state after
    it, so a checkpoint can record the state that belongs to the last batch actually used."""

    def __init__(self, make: Callable[[int], dict], rng: np.random.Generator, start: int, depth: int):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()

        def work() -> None:
            g = start
            while not self.stop.is_set():
                try:
                    item = (make(g), rng.bit_generator.state)
                except BaseException as e:  # surface collation errors in the training loop
                    item = e
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if isinstance(item, BaseException):
                    return
                g += 1

        self.thread = threading.Thread(target=work, daemon=True, name="transferlab-collate")
        self.thread.start()

    def get(self) -> tuple[dict, dict]:
        item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class Trainer:
    """Train ``model`` on ``objective`` over ``train_data`` with the settings in ``cfg``.

    Args:
        model: the TransferModel to train; ``objective.wrap_model(model)`` is what is optimised
            and checkpointed (for ELECTRA: the generator + discriminator pair).
        objective: an :class:`~transferlab.objectives.base.Objective`.
        train_data: index-addressable examples (``objective.dataset(shards, seq_len)``).
        cfg: a :class:`TrainConfig`.
        out_dir: run folder: ``metrics.jsonl`` and ``tensorboard/`` (the schema of
            :mod:`~transferlab.training.runlog`), ``checkpoints/``, ``loss_curve.png``.
        val_data: held-out examples for periodic validation (optional).
        info: this process's :class:`DistInfo` (default: single process on CPU).
        on_step: callbacks called on every rank after each optimizer step with the step record
            (``step``, ``tokens``, ``step_tokens``, ``n_targets``, ``loss``, ``lr``, ...); e.g. cost tracking.
    """

    def __init__(self, model: nn.Module, objective: Objective, train_data: Sequence, cfg: TrainConfig,
                 out_dir: str | Path, val_data: Sequence | None = None, info: DistInfo | None = None,
                 on_step: list[Callable[[dict], None]] | None = None):
        self.cfg = cfg.validate()
        cfg.require_budget()
        self.info = info or DistInfo()
        self.out = Path(out_dir)
        self.objective, self.train_data, self.val_data = objective, train_data, val_data
        self.on_step = list(on_step or [])
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.dtype = resolve_dtype(cfg.dtype, self.info.device)
        # What is optimised and checkpointed: the objective's wrapper around the model, whose
        # forward returns the loss (ELECTRA's owns the generator); unwrap_model gives back what is saved.
        self.model = objective.wrap_model(model).to(self.info.device)
        if cfg.gradient_checkpointing:
            from ..models.blocks import set_gradient_checkpointing

            set_gradient_checkpointing(self.model, True)
        if self.info.device.type == "cpu":
            tune_cpu_allocator()
        self.compile_seconds: float | None = None  # the first (compiling) step's wall time
        if cfg.compile:
            compile_model(self.model, whole=not cfg.fsdp)
        self.model.train()
        # DDP / FSDP2 wrap the objective's module: its forward is the whole loss, so the wrapper's
        # hooks (DDP's reducer, FSDP's root all-gather) run even though objectives call the
        # backbone and the heads separately. FSDP2 shards in place: self.model's parameters
        # become DTensors under their usual names.
        self.engine = wrap_model(self.model, self.info, fsdp=cfg.fsdp)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps)
        self.sampler = GlobalSampler(len(train_data), cfg.batch_size, cfg.seed, self.info.rank, self.info.world_size)
        if len(train_data) == 0:
            raise TransferlabError("no training examples: the data is shorter than one window of train.seq_len")
        self.languages: Any = None  # temperature sampling (data.multilingual.LanguagePlan)
        if cfg.language_alpha is not None:
            from ..data.multilingual import LanguagePlan

            self.languages = LanguagePlan(train_data, cfg.language_alpha, cfg.batch_size, cfg.seed,
                                          self.info.rank, self.info.world_size)
            self.sampler = self.languages.sampler  # same interface: positions, indices, epoch_of
        self._val_groups: dict[str, np.ndarray] = {}
        if val_data is not None:
            from ..data.multilingual import language_groups

            self._val_groups = language_groups(val_data)  # {code: val items}: val_loss/<code>
        # The collator's generator and this rank's torch/python streams (dropout, sampling):
        # distinct per rank, identical for a given (seed, rank), restored exactly on resume.
        seeds = np.random.SeedSequence([cfg.seed, self.info.rank, 1]).generate_state(2)
        self.rng = np.random.default_rng([cfg.seed, self.info.rank])
        torch.manual_seed(int(seeds[0]))
        import random

        random.seed(int(seeds[1]))
        self.step = self.micro = self.tokens = 0
        self.elapsed = 0.0  # training seconds over all resumes (evaluation and checkpoints excluded)
        self.history: list[dict] = []
        self.last_val: dict[str, float] = {}
        self._rng_after: dict | None = None
        self._stop_signal = False
        self.log: RunLog | None = None  # main process only, while fit() runs
        self._resumed_from: Path | None = None

    def final_model(self) -> nn.Module:
        """The trained model to save for fine-tuning (the objective's ``unwrap_model``)."""
        return self.objective.unwrap_model(self.model)

    def export_model(self) -> nn.Module | None:
        """A plain CPU copy of :meth:`final_model` with full (unsharded) weights, on the main
        process (None elsewhere). Every rank must call it: under FSDP it gathers the shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final = self.final_model()
        prefix = next((name for name, m in self.model.named_modules() if m is final), None)
        if prefix is None:
            raise RuntimeError("unwrap_model returned a module that is not part of the trained module")
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.info.is_main:
            return None
        pre = f"{prefix}." if prefix else ""
        state = {k[len(pre):]: v for k, v in full.items() if k.startswith(pre)}
        if not hasattr(final, "config"):
            raise RuntimeError(f"cannot rebuild {type(final).__name__} without a .config")
        with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the streams as they are
            copy = type(final)(final.config)
        copy.load_state_dict(state, strict=True)
        return copy.eval()

    # ------------------------------------------------------------------ budget
    def progress(self) -> float:
        """Fraction of the budget used: the max over the budgets that are set."""
        c, p = self.cfg, 0.0
        if c.max_steps:
            p = max(p, self.step / c.max_steps)
        if c.max_tokens:
            p = max(p, self.tokens / c.max_tokens)
        if c.max_minutes:
            p = max(p, self.elapsed / (60.0 * c.max_minutes))
        return p

    def _stopped_by(self) -> str:
        c = self.cfg
        for name, used, budget in (("max_steps", self.step, c.max_steps), ("max_tokens", self.tokens, c.max_tokens),
                                   ("max_minutes", self.elapsed / 60.0, c.max_minutes)):
            if budget and used >= budget:
                return name
        return "signal" if self._stop_signal else "unknown"

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until the budget is used; return a summary. ``resume`` continues from the latest
        checkpoint in ``out_dir/checkpoints`` (a fresh start when there is none)."""
        ckpt_root = self.out / "checkpoints"
        if self.info.is_main:
            clean_stale(ckpt_root)
        if resume and (last := latest_checkpoint(ckpt_root)) is not None:
            self._load(last)
        self._open_logs()
        prefetch = (_Prefetcher(self._collate, self.rng, self.micro, 2 * self.cfg.grad_accum)
                    if self.cfg.num_workers else None)
        old_handler = self._install_signal_handler()
        try:
            while self.progress() < 1.0 and not self._stop_signal:
                t0 = time.perf_counter()
                record = self.train_step(prefetch)
                dt = time.perf_counter() - t0
                if self.cfg.compile and self.compile_seconds is None:
                    self.compile_seconds = dt
                    self._status(f"torch.compile warm-up: the first step took {dt:.1f}s")
                self.elapsed += self._agree(dt)
                record.update(elapsed_s=self.elapsed, tokens=self.tokens, step=self.step)
                for cb in self.on_step:
                    cb(record)
                self.maybe_log(record)
                self.maybe_eval()
                self.maybe_save()
            # stopped by SIGTERM: no extra validation row (the resumed run would keep it, and an
            # uninterrupted run never wrote it: metrics.jsonl must read the same either way)
            if not self._stop_signal and (not self.last_val or self.last_val.get("step") != self.step):
                self.maybe_eval(force=True)
            self.maybe_save(force=True)
        finally:
            if prefetch is not None:
                prefetch.close()
            self._close_logs()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
        return self.summary()

    def train_step(self, prefetch: _Prefetcher | None = None) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches (on every rank)."""
        cfg, info = self.cfg, self.info
        batches = []
        for _ in range(cfg.grad_accum):
            if prefetch is not None:
                batch, self._rng_after = prefetch.get()
            else:
                batch = self._collate(self.micro + len(batches))
            batches.append(_to_device(batch, info.device))
        # n_targets and tokens of the whole accumulated, distributed batch, known before any forward
        counts = torch.tensor([sum(float(b["n_targets"]) for b in batches),
                               sum(_count_tokens(b) for b in batches)], dtype=torch.float64, device=info.device)
        n_total, step_tokens = (float(x) for x in all_reduce(counts, info))
        # objectives whose loss mixes two normalisations (ELECTRA: generator per masked token,
        # discriminator per token) see both totals of the whole batch, so the split stays exact
        per = [self.objective.global_counts(b) for b in batches]
        if per[0]:
            keys = sorted(per[0])
            tot = all_reduce(torch.tensor([sum(float(c[k]) for c in per) for k in keys], dtype=torch.float64,
                                          device=info.device), info)
            for b in batches:
                b["global_counts"] = dict(zip(keys, tot.tolist()))
        lr = set_lr(self.optimizer, cfg.lr, lr_multiplier(self.progress(), cfg.warmup, cfg.schedule, cfg.min_lr_ratio))
        parts = accumulate_gradients(self.engine, batches, n_total, info, self.dtype)
        loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        metrics: dict[str, float] = {}
        for batch, (part, part_metrics) in zip(batches, parts):
            loss_sum += part.double()
            w = float(batch["n_targets"]) / max(sum(float(b["n_targets"]) for b in batches), 1.0)
            for k, v in metric_floats(part_metrics).items():  # this rank's target-weighted means
                metrics[k] = metrics.get(k, 0.0) + float(v) * w
        grad_norm = self._clip()
        flags = torch.stack([loss_sum, torch.tensor(float(self._stop_signal), dtype=torch.float64, device=info.device)])
        all_reduce(flags, info)
        loss = float(flags[0]) / max(n_total, 1.0)
        self._stop_signal = bool(flags[1] > 0)  # every rank stops together
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            last = latest_checkpoint(self.out / "checkpoints")
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(
                f"step {self.step + 1}: training {what} is {loss if what == 'loss' else grad_norm} (not finite); "
                f"stopped before updating the weights; last good checkpoint: {last or 'none'} "
                f"(lower train.lr, keep train.clip > 0 or try train.dtype=fp32)")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.micro += cfg.grad_accum
        self.tokens += int(step_tokens)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "n_targets": int(n_total),
                "step_tokens": int(step_tokens), "epoch": self.sampler.epoch_of(self.micro), **metrics}

    # ------------------------------------------------------------------ hooks
    def maybe_log(self, record: dict[str, Any]) -> None:
        """Progress bar every step; a ``train`` row (metrics.jsonl + TensorBoard) every ``log_every`` steps."""
        if self.log is None:
            return
        tps = self.tokens / max(self.elapsed, 1e-9)
        self.log.progress(100 * min(self.progress(), 1.0), step=self.step, loss=f"{record['loss']:.4f}",
                          tok_s=f"{tps:,.0f}")
        if self.cfg.log_every and (self.step % self.cfg.log_every == 0 or self.step == 1):
            fields = {k: v for k, v in record.items() if k not in ("step", "loss", "elapsed_s")}
            self.log.row("train", record["step"], record["loss"], record["elapsed_s"], tps, **fields)

    def maybe_eval(self, force: bool = False) -> None:
        """Validation loss/perplexity every ``eval_every`` steps (and at the end)."""
        if self.val_data is None or not (force or (self.cfg.eval_every and self.step % self.cfg.eval_every == 0)):
            return
        res = self.evaluate()
        if res:
            self.last_val = {"step": self.step, **res}
            if self.log is not None:
                metrics = {k[len("val_"):]: v for k, v in res.items() if k != "val_loss"}  # ppl, <metric>, loss/<lang>
                if self.languages is not None:  # realised token shares so far, beside q in the summary
                    shares = self.languages.realised(self.micro * self.info.world_size * self.cfg.batch_size)
                    metrics.update({f"share/{c}": round(v, 6) for c, v in shares.items() if self.languages.q[c] > 0})
                self.log.row("val", self.step, res["val_loss"], self.elapsed, self.tokens / max(self.elapsed, 1e-9),
                             tokens=self.tokens, **metrics)

    def maybe_save(self, force: bool = False) -> None:
        """Checkpoint every ``save_every`` steps and at the end (all ranks take part)."""
        if not (force or (self.cfg.save_every and self.step % self.cfg.save_every == 0)):
            return
        latest = latest_checkpoint(self.out / "checkpoints")
        if force and latest is not None and latest.name == f"step-{self.step:08d}":
            return  # this step is already saved
        state = {"step": self.step, "micro_batches": self.micro, "tokens": self.tokens, "elapsed_s": self.elapsed,
                 "world_size": self.info.world_size, "dtype": self.dtype, "last_val": self.last_val}
        rng = capture_rng(self._rng_after if self.cfg.num_workers else self.rng)
        save_checkpoint(self.out / "checkpoints", self.step, self.model, self.optimizer, state, rng, self.info,
                        self.cfg.keep_last)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per target (and perplexity) over fixed validation windows with fixed masks.

        The same examples are collated with a generator seeded by ``EVAL_SEED`` every time, and the
        torch RNG is forked, so evaluating never changes the training run and numbers from
        different evaluations (and runs) are comparable.
        """
        out = self._evaluate(np.arange(len(self.val_data)))
        if out:
            # per language (data prepared with languages): the same fixed windows and masks, by language
            for code, items in self._val_groups.items():
                part = self._evaluate(items)
                if part:
                    out[f"val_loss/{code}"], out[f"val_ppl/{code}"] = part["val_loss"], part["val_ppl"]
        return out

    def _evaluate(self, items: np.ndarray) -> dict[str, float]:
        """:meth:`evaluate` over the validation items ``items`` (in this order)."""
        info, B = self.info, self.cfg.batch_size
        n = len(items)
        per_rank = min(B, n // info.world_size)
        if per_rank == 0:
            return {}
        n_batches = min(self.cfg.eval_batches, n // (per_rank * info.world_size))
        sampler = GlobalSampler(n, per_rank, 0, info.rank, info.world_size, shuffle=False)
        rng = np.random.default_rng([EVAL_SEED, info.rank])
        sums = torch.zeros(2, dtype=torch.float64, device=info.device)  # loss_sum, n_targets
        metric_sums: dict[str, float] = {}  # metric x n_targets, so the means are target-weighted
        self.model.eval()
        devices = [info.device] if info.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED)
            for b in range(n_batches):
                idx = [int(items[i]) for i in sampler.indices(b)]
                batch = _to_device(self.objective.collate([self.val_data[i] for i in idx],
                                                          example_rng(self.objective, EVAL_SEED, idx, rng)),
                                   info.device)
                with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
                    part, part_metrics = self.engine(**batch)
                n_b = float(batch["n_targets"])
                sums += torch.stack([part.detach().double(), torch.tensor(n_b, dtype=torch.float64, device=info.device)])
                for k, v in metric_floats(part_metrics).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * n_b
        self.model.train()
        keys = sorted(metric_sums)  # same objective on every rank: same keys
        flat = torch.cat([sums, torch.tensor([metric_sums[k] for k in keys], dtype=torch.float64, device=info.device)])
        all_reduce(flat, info)
        n = float(flat[1].clamp(min=1))
        loss = float(flat[0]) / n
        out = {"val_loss": loss}
        out.update({f"val_{k}": float(v) / n for k, v in zip(keys, flat[2:])})
        # perplexity of the objective's language-modelling part, which two-part losses name
        lm_metric = self.objective.lm_loss_metric
        lm = f"val_{lm_metric}" if lm_metric is not None and f"val_{lm_metric}" in out else "val_loss"
        out["val_ppl"] = math.exp(min(out[lm], 50.0))
        return out

    # ------------------------------------------------------------------ internals
    def _collate(self, micro_batch: int) -> dict[str, torch.Tensor]:
        # per-example streams keyed by the global stream position (fixes step and example), for
        # objectives that support them: accumulation and ranks then see the large batch's masks
        c = self.cfg
        # the stream position of this step's first example (over micro-batches and ranks): per-step
        # draws (mtlm's attention mode) are keyed by it, so every micro-batch of a step shares them
        step_start = (micro_batch // c.grad_accum) * c.grad_accum * self.info.world_size * c.batch_size
        rng = example_rng(self.objective, c.seed, self.sampler.positions(micro_batch), self.rng, step_start=step_start)
        return self.objective.collate([self.train_data[i] for i in self.sampler.indices(micro_batch)], rng)

    def _clip(self) -> float:
        return clip_gradients(self.model, self.cfg.clip, measure=True)

    def _agree(self, seconds: float) -> float:
        """Step time every rank agrees on (the slowest), so a time budget stops all ranks together."""
        if self.info.world_size == 1 or not self.cfg.max_minutes:
            return seconds
        return float(all_reduce(torch.tensor([seconds], dtype=torch.float64, device=self.info.device),
                                self.info, op="max")[0])

    def _load(self, path: Path) -> None:
        state, rng = load_checkpoint(path, self.model, self.optimizer, self.info)
        self.step, self.micro, self.tokens = state["step"], state["micro_batches"], state["tokens"]
        self.elapsed, self.last_val = state["elapsed_s"], state.get("last_val", {})
        restore_rng(rng, self.rng)
        self._rng_after = rng.get("numpy")
        self._resumed_from = path

    def _open_logs(self) -> None:
        """The run's :class:`RunLog` (main process): rows from beyond the checkpoint we resumed
        from are dropped (they are re-done now); the settings are logged once, on a fresh start."""
        if not self.info.is_main:
            return
        self.log = RunLog(self.out, tensorboard=self.cfg.tensorboard, progress=self.cfg.progress)
        self.history = self.log.open(self.step, 100 * min(self.progress(), 1.0))
        if self._resumed_from is not None:
            self._status(f"resumed from {self._resumed_from} (step {self.step}, {self.tokens:,} tokens)")
        if self.step == 0:
            self.log.log_hparams(self._hparams())
        if self.languages is not None:
            top = sorted(self.languages.q.items(), key=lambda kv: -kv[1])
            self._status(f"language sampling, alpha={self.cfg.language_alpha}: q = " + ", ".join(
                f"{c} {100 * v:.3g}% (p {100 * self.languages.p[c]:.2g}%)" for c, v in top if v > 0))

    def _hparams(self) -> dict[str, Any]:
        """The settings TensorBoard shows next to the run: the train config and the objective."""
        import dataclasses

        hp: dict[str, Any] = {f"train.{k}": v for k, v in self.cfg.to_dict().items()}
        hp["objective"] = self.objective.name
        ocfg = self.objective.config
        if dataclasses.is_dataclass(ocfg):
            hp.update({f"objective.{k}": v for k, v in dataclasses.asdict(ocfg).items()})
        hp["world_size"] = self.info.world_size
        return hp

    def _status(self, message: str) -> None:
        """A status line on the main process, above the progress bar."""
        if self.log is not None:
            self.log.status(message)
        elif self.info.is_main:
            print(message, flush=True)

    def _close_logs(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _install_signal_handler(self):
        """SIGTERM (preemption, torchrun shutdown) -> save a checkpoint after this step and stop."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop_signal = True

        return signal.signal(signal.SIGTERM, handler)

    def summary(self) -> dict[str, Any]:
        """What the run did: steps, tokens, time, throughput, final losses, why it stopped."""
        last_train = next((r for r in reversed(self.history) if r.get("split") == "train"), {})
        return {
            "steps": self.step, "tokens": self.tokens, "train_seconds": round(self.elapsed, 3),
            "tokens_per_s": self.tokens / max(self.elapsed, 1e-9), "dtype": self.dtype,
            "world_size": self.info.world_size, "final_train_loss": last_train.get("loss"),
            "val_loss": self.last_val.get("val_loss"), "val_ppl": self.last_val.get("val_ppl"),
            "stopped_by": self._stopped_by(), "compile_warmup_s": self.compile_seconds,
            "checkpoint": str(latest_checkpoint(self.out / "checkpoints") or ""),
            "checkpoints": [str(p) for _, p in list_checkpoints(self.out / "checkpoints")],
            **({"languages": self.languages.table(self.micro * self.info.world_size * self.cfg.batch_size)}
               if self.languages is not None else {}),
        }


def plot_loss_curve(metrics_file: Path, png: Path, title: str = "") -> Path | None:
    """Train (per logged step) and validation loss against steps, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runlog import read_rows

    recs = read_rows(metrics_file, warn=False)  # either schema; a row torn by a kill is skipped
    tr = [(r["step"], r["loss"]) for r in recs if r.get("split") == "train" and "loss" in r]
    va = [(r["step"], r["loss"]) for r in recs if r.get("split") == "val" and "loss" in r]
    if not tr and not va:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1.2)
    if va:
        ax.plot(*zip(*va), "o-", label="validation", lw=1.5, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean per target)")
    ax.set_title(title or Path(metrics_file).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..utils import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(png), buf.getvalue())
    return Path(png)


def fit(model: nn.Module, objective: Any, train_data: Sequence, cfg: TrainConfig, out_dir: str | Path,
        val_data: Sequence | None = None, resume: bool = False, info: DistInfo | None = None,
        on_step: list[Callable[[dict], None]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` with the explicit loop; see :class:`Trainer` for the arguments.

    Returns:
        ``(trained model, summary)``: the model is the objective's ``unwrap_model`` of what was
        optimised (the model itself for plain objectives), still on its device.
    """
    trainer = Trainer(model, objective, train_data, cfg, out_dir, val_data=val_data, info=info, on_step=on_step)
    summary = trainer.fit(resume=resume)
    return trainer.final_model(), summary
