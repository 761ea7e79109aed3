"""The one device choice and the one dtype choice of every command.

* :func:`resolve_device` — one spelling everywhere (``auto | cpu | cuda | cuda:N | mps``), the
  same default everywhere (``auto``: cuda when available, else cpu), and a one-line
  :class:`ConfigError` for a device this torch cannot use, instead of torch's
  ``AssertionError: Torch not compiled with CUDA enabled`` deep inside ``.to()``.
* :func:`resolve_dtype` — ``--dtype auto|bf16|fp16|fp32`` (:class:`~transferlab.config.DType`)
  with ``auto`` decided by the hardware; :func:`torch_dtype` for commands that cast weights.
"""

from __future__ import annotations

import re
from typing import Any

from .config import DType
from .errors import ConfigError

__all__ = ["DEVICES", "DTYPES", "DType", "resolve_device", "resolve_dtype", "torch_dtype", "cpu_has_native_bf16"]

DEVICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = tuple(d.value for d in DType)  #: the ``--dtype`` choices, in help order
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: Any = "auto") -> Any:
    """A ``torch.device`` for ``name`` that this machine has.

    Args:
        name: ``auto`` (or None: cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N``,
            ``mps``, or a ``torch.device``.

    Returns:
        The ``torch.device``.

    Raises:
        ConfigError: an unknown spelling, or a device this torch build / machine does not have.
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    if not _DEVICE.match(name):
        raise ConfigError(f"--device {name}: expected {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available (this torch {torch.__version__} "
                              f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
                              "use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {name}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return dev


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (avx512_bf16 or AMX), where bf16 is ~4x fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str | DType, device: Any) -> str:
    """``auto`` -> ``bf16`` on GPUs/CPUs with native bf16, else ``fp32``; others unchanged.

    Args:
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: the ``torch.device`` the run uses.

    Returns:
        The concrete spelling (never ``auto``).

    Raises:
        ConfigError: a spelling other than the four.
    """
    try:
        dtype = DType(str(dtype))
    except ValueError:
        raise ConfigError(f"--dtype {dtype}: expected {', '.join(DTYPES)}") from None
    if dtype != DType.AUTO:
        return dtype.value
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def torch_dtype(dtype: str | DType, device: Any) -> Any:
    """The ``torch.dtype`` of ``--dtype`` (``auto`` resolved for ``device``), for weights.

    Args:
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: the ``torch.device`` the weights go to.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``torch.float32``.
    """
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_dtype(dtype, device)]
