"""Atomic, resumable training checkpoints without pickle.

A checkpoint is a folder ``<out>/checkpoints/step-00000120/`` holding

* ``model.safetensors`` — the trained module's full state (FSDP shards gathered on rank 0);
* ``optimizer.safetensors`` + ``optimizer.json`` — AdamW moments/steps as tensors keyed by
  parameter name, hyper-parameters and parameter order as JSON;
* ``rng-rank{r}.json`` — every random stream of rank ``r``: torch CPU (and CUDA) generator, the
  collator's ``numpy.random.Generator`` and Python's ``random``;
* ``trainer.json`` — step, data position (micro-batches done), tokens, training time, run id.

It is written into ``.step-00000120.tmp`` and renamed into place only when complete, so a run
killed at any moment (even ``kill -9`` during a write) leaves either the previous checkpoints or
the new one, never a half-written folder that looks complete. Old checkpoints beyond
``keep_last`` are first renamed to a ``.trash-*`` name and then deleted, so a kill during the
deletion cannot leave a damaged ``step-*`` folder either. Names starting with ``.`` are ignored
and cleaned up by the next run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..utils import _fsync_dir, atomic_write_text
from .distributed import DistInfo, barrier

_STEP_RE = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def clean_stale(root: Path) -> None:
    """Remove leftovers of interrupted writes/deletions (``.step-*.tmp``, ``.trash-*``)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".step-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- RNG state
def capture_rng(np_rng: np.random.Generator | dict | None) -> dict[str, Any]:
    """Every random stream of this process as JSON-able data.

    Args:
        np_rng: the collator's generator, or its ``bit_generator.state`` captured earlier (when
            batches are collated ahead of the loop, the state that goes with the last batch used).
    """
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "python": _py_state_to_json(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    if np_rng is not None:
        state["numpy"] = np_rng if isinstance(np_rng, dict) else np_rng.bit_generator.state
    return state


def restore_rng(state: dict[str, Any], np_rng: np.random.Generator | None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    random.setstate(_py_state_from_json(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]])
    if np_rng is not None and "numpy" in state:
        np_rng.bit_generator.state = state["numpy"]


def _py_state_to_json(s: tuple) -> list:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _py_state_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


# ----------------------------------------------------------------------------- tensors
def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share memory with an earlier one (tied weights); return the aliases."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        out[k] = v.detach().contiguous()
    return out, aliases


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    tensors, aliases = _dedupe(tensors)
    md = {"aliases": json.dumps(aliases), **({"meta": json.dumps(meta)} if meta else {})}
    save_file(tensors, str(path), metadata=md)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
        for alias, canon in json.loads(md.get("aliases", "{}")).items():
            out[alias] = out[canon]
        return out
    except CheckpointError:
        raise
    except Exception as e:  # truncated or corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _split_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state dict (keyed by parameter name) -> tensors + JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{k}"] = v
            else:
                scalars.setdefault(name, {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, v in tensors.items():
        name, k = key.rsplit("/", 1)
        state.setdefault(name, {})[k] = v
    for name, sc in rest.get("scalars", {}).items():
        state.setdefault(name, {}).update(sc)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # full_state_dict gathers FSDP shards; cpu_offload keeps them on rank 0 only, on the CPU.
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], rng_state: dict[str, Any], info: DistInfo,
                    keep_last: int = 2, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (all ranks must call this), then prune old ones.

    Args:
        root: the checkpoints folder (``<out>/checkpoints``).
        step: optimizer steps completed.
        model: the trained module (DDP/FSDP wrappers are fine; names are the inner module's).
        optimizer: its optimizer.
        trainer_state: JSON-able loop state (step, data position, tokens, time, ...).
        rng_state: this rank's :func:`capture_rng` output.
        info: the process's :class:`DistInfo`.
        keep_last: how many complete checkpoints to keep.
        extra: more tensor files written by the main process, ``{file name: tensors}`` (fine-tuning
            keeps its best weights so far in ``best.safetensors``); read back with :func:`load_extra`.

    Returns:
        The checkpoint folder.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{checkpoint_name(step)}.tmp"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    msd, osd = _state_dicts(model, optimizer)  # a collective under FSDP: every rank calls it
    atomic_write_text(tmp / f"rng-rank{info.rank}.json", json.dumps(rng_state) + "\n")
    if info.is_main:
        _save_tensors(tmp / "model.safetensors", msd)
        otensors, orest = _split_optimizer(osd)
        _save_tensors(tmp / "optimizer.safetensors", otensors)
        atomic_write_text(tmp / "optimizer.json", json.dumps(orest, indent=1) + "\n")
        for name, tensors in (extra or {}).items():
            _save_tensors(tmp / name, tensors)
    barrier(info)
    if info.is_main:
        # trainer.json last: a folder without it is never taken for a complete checkpoint
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=2) + "\n")
        _fsync_dir(tmp)
        if final.exists():
            _trash(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(root)[:-keep_last]:
            _trash(old)
    barrier(info)
    return final


def _trash(path: Path) -> None:
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)  # atomic: the step-* name disappears at once
    shutil.rmtree(trash, ignore_errors=True)


def load_extra(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of an ``extra`` file of :func:`save_checkpoint` (CheckpointError when unreadable)."""
    return _load_tensors(Path(path) / name)


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The loop state (``trainer.json``) of a checkpoint folder."""
    return _read_json(Path(path) / TRAINER_STATE)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a checkpoint into ``model`` and ``optimizer`` (all ranks call this).

    Returns:
        ``(trainer_state, rng_state)`` where ``rng_state`` is this rank's.

    Raises:
        CheckpointError: missing/corrupt files, tensors that do not fit the model, or a
            checkpoint written by a different number of processes.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    trainer_state = _read_json(path / TRAINER_STATE)
    saved_world = trainer_state.get("world_size", 1)
    if saved_world != info.world_size:
        raise CheckpointError(
            f"{path}: written by {saved_world} process(es), resumed with {info.world_size}; "
            "resume with the same torchrun --nproc_per_node so data order and random streams match")
    rng_state = _read_json(path / f"rng-rank{info.rank}.json")
    msd = _load_tensors(path / "model.safetensors")
    expected = _state_dicts_keys(model)
    missing = sorted(set(expected) - set(msd))
    unexpected = sorted(set(msd) - set(expected))
    shapes = [k for k in expected if k in msd and tuple(msd[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path / 'model.safetensors'}: does not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]})")
    osd = _join_optimizer(_load_tensors(path / "optimizer.safetensors"), _read_json(path / "optimizer.json"))
    try:
        # strict=False: parameters that never received a gradient (BERT's pooler under MLM) have
        # no optimizer state; the model's tensors were checked against the file above.
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True, strict=False))
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit the model ({e})".replace("\n", " ")) from None
    return trainer_state, rng_state


def _state_dicts_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Full (unsharded) names and shapes of the model's state."""
    from .distributed import unwrap

    # a DTensor's .shape is already the global (unsharded) shape
    return {k.replace("_orig_mod.", ""): tuple(v.shape) for k, v in unwrap(model).state_dict().items()}
