"""The device's dense peak FLOP/s: accelerator datasheet figures, or a matmul benchmark.

On a CPU (and unknown accelerators) the peak is measured by a short matmul benchmark and cached
per machine in ``~/.cache/transferlab/peak.json``; a measurement disturbed by other jobs is used
for that run only (see :func:`device_peak_flops`). The method is documented in ``docs/cost.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Dense (no structured sparsity) peak throughput in TFLOP/s by accelerator, from the vendors'
#: datasheets: (name pattern, bf16, fp16, tf32, fp32). fp16/bf16 are tensor-core figures with
#: fp32 accumulation; ``None`` means the format has no tensor-core path (the peak is then
#: measured). Patterns are tried in order, so the more specific ones come first.
GPU_PEAKS_TFLOPS: list[tuple[str, float | None, float | None, float | None, float]] = [
    (r"\bB200\b", 2250.0, 2250.0, 1100.0, 75.0),
    (r"\bH[12]00 NVL\b", 835.5, 835.5, 417.5, 60.0),
    (r"\bH100 PCIe\b", 756.0, 756.0, 378.0, 51.2),
    # H200, GH200 and the SXM H100 / H800 (the name torch reports: "H100 80GB HBM3")
    (r"\bG?H200\b|\bH[18]00\b", 989.5, 989.5, 494.5, 67.0),
    (r"\bA[18]00\b", 312.0, 312.0, 156.0, 19.5),
    (r"\bL40S\b", 362.05, 362.05, 183.0, 91.6),
    (r"\bL40\b", 181.05, 181.05, 90.5, 90.5),
    (r"\bL4\b", 121.0, 121.0, 60.0, 30.3),
    (r"\bA40\b", 149.7, 149.7, 74.8, 37.4),
    (r"\bA10\b", 125.0, 125.0, 62.5, 31.2),
    (r"\bRTX A6000\b", 154.8, 154.8, 77.4, 38.7),
    (r"\bRTX 4090\b", 165.2, 165.2, 82.6, 82.6),
    (r"\bRTX 3090\b", 71.0, 71.0, 35.6, 35.6),
    (r"\bV100-PCIE\b|\bV100 PCIe\b", None, 112.0, None, 14.0),
    (r"\bV100\b", None, 125.0, None, 15.7),  # SXM2
    (r"\bT4\b", None, 65.0, None, 8.1),
    (r"\bMI300X\b", 1307.4, 1307.4, 653.7, 163.4),
]

# Length of the CPU peak benchmark (seconds); module-level so tests can shorten it.
_PEAK_BENCH_SECONDS = 1.0

log = logging.getLogger("transferlab.cost")

#: whether this process already warned that a peak measured under load is not cached: a grid of
#: runs (compare, study) measures once per cell, and one warning says it all
_warned_under_load = False


def _norm_dtype(dtype: Any) -> str:
    s = str(dtype).replace("torch.", "").lower()
    aliases = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
               "fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32"}
    if s not in aliases:
        raise ConfigError(f"cost: dtype must be bf16, fp16 or fp32, got {dtype!r}")
    return aliases[s]


def _match(table: list, name: str) -> Any:
    for row in table:
        if re.search(row[0], name):
            return row
    return None


def cpu_model_name() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), e.g. ``AMD EPYC 9654``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transferlab" / "peak.json"


def _tf32_enabled() -> bool:
    import torch

    with contextlib.suppress(Exception):
        if torch.get_float32_matmul_precision() != "highest":
            return True
    with contextlib.suppress(Exception):
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return False


def _benchmark_matmul(device: Any, dtype: str, n: int, seconds: float) -> tuple[float, float | None]:
    """Best sustained FLOP/s of an n x n x n matmul over about ``seconds`` of timing, and (on a
    CPU) the share of its threads' CPU time the process got during that best batch: well below 1
    means other jobs took the cores and the figure is too low to be a peak."""
    import torch

    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    a = torch.randn(n, n, device=device).to(tdtype)
    b = torch.randn(n, n, device=device).to(tdtype)
    kind = torch.device(device).type
    # accelerators run asynchronously: wait for the kernels, or we would time the launches
    sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}.get(kind)
    sync = sync or (lambda: None)
    with torch.no_grad():
        for _ in range(2):  # warm-up: thread pools, kernel selection
            a @ b
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        one = max(time.perf_counter() - t, 1e-6)
        inner = max(1, int(0.05 / one))  # time batches of ~50 ms so timer noise is negligible
        best, share, deadline = 0.0, None, time.perf_counter() + seconds
        threads = torch.get_num_threads()
        while True:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(inner):
                a @ b
            sync()
            wall = time.perf_counter() - t
            rate = inner * 2.0 * n**3 / wall
            if rate > best:
                best = rate
                share = None if kind != "cpu" else (time.process_time() - c) / (wall * threads)
            if time.perf_counter() >= deadline:
                break
    return best, share


#: below this share of its threads' CPU time, a CPU peak measurement was disturbed by other jobs
_MIN_CPU_SHARE = 0.8


def device_peak_flops(device: Any = None, dtype: Any = "bf16", refresh: bool = False) -> tuple[float, str]:
    """Dense peak FLOP/s of one device in ``dtype``, and where the figure comes from.

    A known accelerator's datasheet figure (fp32 uses the TF32 tensor-core figure when torch is
    allowed to use TF32). On a CPU, or an accelerator not in :data:`GPU_PEAKS_TFLOPS`, the peak
    is measured once by a ~1 s 1024^3 matmul benchmark (4096^3 on accelerators) in ``dtype``
    with torch's current thread count, and cached in ``~/.cache/transferlab/peak.json``
    (``$XDG_CACHE_HOME`` respected) keyed by device name, threads, dtype and torch version.

    A peak is the best the device ever did: a machine shared with other jobs measures low, so a
    new measurement (``refresh=True``, done by :class:`CostTracker` when a run beat the cached
    peak) only ever raises the cached figure.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``, a torch.device, or None (cpu).
        dtype: ``bf16``, ``fp16`` or ``fp32`` (or the torch dtype) the run computes in.
        refresh: measure again even when a cached figure exists.

    Returns:
        (peak FLOP/s, source) with source ``table: <name> <dtype> dense`` or
        ``measured: ...``.
    """
    import torch

    dt = _norm_dtype(dtype)
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        row = _match(GPU_PEAKS_TFLOPS, name)
        if row is not None:
            col = {"bf16": 1, "fp16": 2, "fp32": 3 if _tf32_enabled() else 4}[dt]
            label = "tf32" if (dt == "fp32" and col == 3) else dt
            if row[col] is not None:
                return row[col] * 1e12, f"table: {name} {label} dense"
        key_name, threads, size = name, 0, 4096
    else:
        key_name, threads, size = cpu_model_name(), torch.get_num_threads(), 1024
    key = f"{dev.type}|{key_name}|threads={threads}|{dt}|torch={torch.__version__}"
    path = _cache_file()
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    where = f"{size}^3 {dt} matmul" + (f", {_plural(threads, 'thread')}" if threads else "")
    old = float(cache[key].get("flops", 0)) if isinstance(cache.get(key), dict) else 0.0
    if old > 0 and not refresh:
        return old, f"measured: {where} (cached)"
    measured, share = _benchmark_matmul(dev, dt, size, _PEAK_BENCH_SECONDS)
    peak = max(old, measured)
    if share is not None and share < _MIN_CPU_SHARE and measured > old:
        # other jobs had the cores: a peak measured now would make every MFU look too good, so it
        # is used for this run only (and said so), and measured again next time
        global _warned_under_load
        if not _warned_under_load:
            _warned_under_load = True
            log.warning("cost: the peak benchmark got %.0f%% of %s' CPU time (other jobs running): "
                        "not caching %.0f GFLOP/s as the peak", 100 * share, _plural(threads, "thread"), measured / 1e9)
        return peak, f"measured under load: {where}, {100 * share:.0f}% of the CPU: MFU overstated"
    cache[key] = {"flops": peak, "measured_at": _now()}
    try:
        from ..utils import atomic_write_text

        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as e:  # a read-only home must not break a run; measure again next time
        log.warning("cost: could not cache the peak in %s (%s)", path, e)
    return peak, f"measured: {where}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
