"""Reading transformers checkpoints: safetensors (single or sharded) and config.json, never pickle.

Weights are read from ``model.safetensors`` (or a sharded ``model.safetensors.index.json``);
pickled ``pytorch_model.bin`` files are refused rather than unpickled, and an index may only name
files inside its own folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ...hub import resolve_builtin

__all__ = ["read_weights", "read_source"]


def read_weights(d: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory (single or sharded safetensors), never pickle.

    Args:
        d: the model folder.
        meta: only shapes and dtypes are read (tensors on the meta device): a free check.

    Returns:
        hf tensor name -> tensor, as stored.
    """
    from safetensors import safe_open

    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        from ...config import read_json

        weight_map = read_json(index, dict, "safetensors index", CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map: expected an object of tensor name -> file name, "
                                  f"got {type(weight_map).__name__}")
        files = [_inside(d, f, index) for f in dict.fromkeys(weight_map.values())]
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


_HF_NUMBER_KEYS = ("d_model", "d_ff", "d_kv", "vocab_size", "max_position_embeddings", "initializer_range",
                   "rope_theta", "relative_attention_num_buckets", "relative_attention_max_distance")


def _check_hf_numbers(raw: dict[str, Any], p: Path) -> None:
    """Sizes, counts and epsilons of a transformers config.json must be numbers (or null): a
    list or a string there is a one-line error naming the file and key, not a TypeError later."""
    for k, v in raw.items():
        numeric = (k in _HF_NUMBER_KEYS or k.startswith(("num_", "n_"))
                   or k.endswith(("_size", "_layers", "_heads", "_dim", "_eps", "_epsilon", "_positions")))
        if numeric and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{p}: {k}: expected a number, got {v!r}")


def _inside(d: Path, name: str, index: Path) -> Path:
    """``d / name`` when it names a file inside the model folder ``d``; refuse ``../x``, absolute
    paths and links that lead out of it: a model folder may only make us read its own files."""
    p = Path(name)
    root = d.resolve()
    full = (d / p).resolve()
    if p.is_absolute() or ".." in p.parts or (full != root and root not in full.parents):
        raise CheckpointError(f"{index}: weight_map names {name!r}, outside the model folder {d}; "
                              "only files inside it are read")
    return d / p


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


def read_source(src: Any, config: Any = None, meta: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """The transformers config, tensors and a name for messages, from any source ``from_hf`` takes.

    Args:
        src: a directory (or ``builtin:NAME``), a transformers model, a state dict or a
            ``(state_dict, config)`` pair.
        config: the transformers config (object or dict) when ``src`` is a state dict.
        meta: read shapes only (see :func:`read_weights`).

    Returns:
        ``(hf config dict, state dict, where)``.
    """
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
        _check_hf_numbers(raw, p)
        return raw, read_weights(d, meta=meta), str(d / "model.safetensors")
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


