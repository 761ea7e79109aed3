"""Resumable fine-tuning checkpoints: the pre-training format plus the loop's own state (data
position, early stopping, best weights), and the settings a resumed run must share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..training.distributed import DistInfo
from .config import FinetuneConfig
from .inputs import length_grouped_batches
from .tasks import TaskData


#: settings a resumed run may change (they do not decide the trained weights)
RESUME_SAFE = ("out_dir", "resume", "force", "quiet", "device", "eval_on_test", "cost", "save_every", "keep_last",
               "keep_checkpoints", "eval_batch_size", "test_size")


def _fingerprint(cfg: FinetuneConfig, data: TaskData) -> dict[str, Any]:
    d = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_SAFE}
    d["task_name"] = data.name
    return json.loads(json.dumps(d, default=str))


def _describe_run(fp: dict[str, Any]) -> str:
    return f"task {fp.get('task_name')!r} ({fp.get('task_type') or 'inferred'}) with model {fp.get('model')!r}"


def _save_checkpoint(root: Path, cfg: FinetuneConfig, fingerprint: dict[str, Any], model: Any, optimizer: Any,
                     info: DistInfo, run: dict[str, Any], best: dict[str, Any], history: list[dict[str, Any]],
                     stopped: str, done: bool, scaler: Any) -> None:
    """A pre-training-format checkpoint plus the fine-tuning state: data position (epoch, batches
    done in it, the batch-order generator as it was when the epoch's order was drawn),
    early-stopping state and the best weights so far (``best.safetensors``)."""
    from ..training.checkpoint import capture_rng, save_checkpoint

    best_is_current = best["state"] is not None and best["step"] == run["step"]
    state = {"kind": "finetune", "fingerprint": fingerprint, "world_size": info.world_size,
             "step": run["step"], "tokens": run["tokens"], "epoch": run["epoch"], "pos": run["pos"],
             "elapsed_s": run["elapsed"], "loss_sum": run["loss_sum"], "loss_n": run["loss_n"],
             "bad_evals": run["bad_evals"], "history": history, "stopped": stopped, "done": done,
             "best": {k: best[k] for k in ("score", "metrics", "epoch", "step")},
             "best_weights": None if best["state"] is None else ("current" if best_is_current else "best.safetensors"),
             "scaler": scaler.state_dict() if scaler is not None else None}
    extra = {"best.safetensors": best["state"]} if best["state"] is not None and not best_is_current else None
    save_checkpoint(root, run["step"], model, optimizer, state, capture_rng(run["epoch_rng"]), info,
                    cfg.keep_last, extra=extra)


def _resume(path: Path, cfg: FinetuneConfig, fingerprint: dict[str, Any], model: Any, optimizer: Any,
            info: DistInfo, rng: np.random.Generator, run: dict[str, Any], best: dict[str, Any],
            history: list[dict[str, Any]], lengths: list[int], G: int, scaler: Any) -> list[list[int]] | None:
    """Load checkpoint ``path`` into the model, optimizer and loop state; return the current
    epoch's batch order (re-drawn from the saved generator state) or None at an epoch boundary."""
    from ..training.checkpoint import load_checkpoint, load_extra, read_trainer_state, restore_rng

    state = read_trainer_state(path)
    saved = state.get("fingerprint")
    if state.get("kind") != "finetune" or not isinstance(saved, dict):
        raise CheckpointError(f"--resume {cfg.out_dir}: {path} is not a fine-tuning checkpoint "
                              f"(this run: {_describe_run(fingerprint)})")
    if (saved.get("task_name"), saved.get("model")) != (fingerprint["task_name"], fingerprint["model"]):
        raise CheckpointError(f"--resume {cfg.out_dir}: its checkpoints are of {_describe_run(saved)}, "
                              f"not {_describe_run(fingerprint)}")
    diff = [k for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)]
    if diff:
        raise ConfigError(f"--resume {cfg.out_dir}: this command differs from the run's settings: "
                          + ", ".join(f"finetune.{k} {fingerprint.get(k)!r} (was {saved.get(k)!r})" for k in diff[:4]))
    state, rng_state = load_checkpoint(path, model, optimizer, info)
    restore_rng(rng_state, rng)  # the batch-order generator as it was when this epoch's order was drawn
    run.update(step=state["step"], tokens=state["tokens"], epoch=state["epoch"], pos=state["pos"],
               elapsed=state["elapsed_s"], loss_sum=state["loss_sum"], loss_n=state["loss_n"],
               bad_evals=state["bad_evals"], epoch_rng=rng_state.get("numpy"), stopped=state.get("stopped"))
    history[:] = state["history"]
    best.update(state["best"])
    if state["best_weights"] == "current":
        best["state"] = _full_state(model, cfg.fsdp and info.world_size > 1)
    elif state["best_weights"]:
        best["state"] = load_extra(path, state["best_weights"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if run["epoch"] == 0:
        return None
    return length_grouped_batches(lengths, G, rng)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _full_state(model: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """:func:`_cpu_state`, or under FSDP the full weights all-gathered on every rank (a collective)."""
    if not sharded:
        return _cpu_state(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in full.items()}
