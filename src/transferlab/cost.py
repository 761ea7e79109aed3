"""The price tag of every run: parameters, FLOPs, MFU, energy, CO2e and dollars.

* :func:`estimate_flops` — analytic matmul FLOPs of one sequence for training (forward +
  backward), a forward pass (prefill) or one KV-cached decode step, for all three families:
  every linear layer (the "6N" of Kaplan et al. 2020, counted layer by layer), attention scores
  and values (PaLM appendix B: 12·L·d_attn·T per trained token), encoder-decoder cross-attention,
  heads, and sparse MLM (the vocabulary projection only on the predicted positions). Checked
  against ``torch.utils.flop_counter.FlopCounterMode`` in the tests.
* :func:`device_peak_flops` — the device's dense peak: a table of accelerator datasheet figures,
  or on a CPU (and unknown accelerators) a short matmul benchmark cached per machine.
* :class:`CostTracker` — wraps a run: wall time, tokens/s, model FLOPs utilisation (MFU), energy
  and CO2e through codecarbon (offline) with an honest "estimate" label when no power counter is
  readable, and a price from an hourly device price. ``stop()`` writes ``report.json``.
* :func:`format_report` — the few aligned lines printed at the end of a run.

The method, its references and the defaults are documented in ``docs/cost.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import inspect
import json
import logging
import math
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

# ----------------------------------------------------------------------------- constants
MODES = ("train", "forward", "decode")

#: Dense (no structured sparsity) peak throughput in TFLOP/s by accelerator, from the vendors'
#: datasheets: (name pattern, bf16, fp16, tf32, fp32). fp16/bf16 are tensor-core figures with
#: fp32 accumulation; ``None`` means the format has no tensor-core path (the peak is then
#: measured). Patterns are tried in order, so the more specific ones come first.
GPU_PEAKS_TFLOPS: list[tuple[str, float | None, float | None, float | None, float]] = [
    (r"\bB200\b", 2250.0, 2250.0, 1100.0, 75.0),
    (r"\bH200 NVL\b", 835.5, 835.5, 417.5, 60.0),
    (r"\bH200\b", 989.5, 989.5, 494.5, 67.0),
    (r"\bGH200\b", 989.5, 989.5, 494.5, 67.0),
    (r"\bH100 PCIe\b", 756.0, 756.0, 378.0, 51.2),
    (r"\bH100 NVL\b", 835.5, 835.5, 417.5, 60.0),
    (r"\bH[18]00\b", 989.5, 989.5, 494.5, 67.0),  # SXM (the name torch reports: "H100 80GB HBM3")
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

#: Board power (TDP) in watts, used by the energy estimate when no power counter is readable.
GPU_TDP_WATTS: list[tuple[str, float]] = [
    (r"\bB200\b", 1000.0), (r"\bH200 NVL\b", 600.0), (r"\bH200\b", 700.0), (r"\bGH200\b", 700.0),
    (r"\bH100 PCIe\b", 350.0), (r"\bH100 NVL\b", 400.0), (r"\bH[18]00\b", 700.0),
    (r"\bA[18]00.*PCI", 300.0), (r"\bA[18]00\b", 400.0), (r"\bL40S\b", 350.0), (r"\bL40\b", 300.0),
    (r"\bL4\b", 72.0), (r"\bA40\b", 300.0), (r"\bA10\b", 150.0), (r"\bRTX A6000\b", 300.0),
    (r"\bRTX 4090\b", 450.0), (r"\bRTX 3090\b", 350.0), (r"\bV100-PCIE\b|\bV100 PCIe\b", 250.0),
    (r"\bV100\b", 300.0), (r"\bT4\b", 70.0), (r"\bMI300X\b", 750.0),
]
DEFAULT_GPU_TDP_WATTS = 300.0

#: Share of a server CPU's TDP per core (thread) in use: e.g. EPYC 9654 360 W / 96 cores = 3.8 W,
#: Xeon Platinum 8480+ 350 W / 56 cores = 6.3 W, EPYC 7763 280 W / 64 cores = 4.4 W.
CPU_WATTS_PER_CORE = 5.0

#: Indicative on-demand prices in USD per device-hour (rounded, public cloud price lists
#: 2024-25; they vary a lot by provider and region, so set your own with --price-per-hour).
GPU_PRICE_PER_HOUR: list[tuple[str, float]] = [
    (r"\bB200\b", 6.00), (r"\bH200\b", 3.80), (r"\bGH200\b", 3.50), (r"\bH[18]00\b", 3.00),
    (r"\bA[18]00\b", 1.80), (r"\bL40S\b", 1.00), (r"\bL40\b", 0.90), (r"\bL4\b", 0.80),
    (r"\bA40\b", 0.50), (r"\bA10\b", 0.75), (r"\bRTX A6000\b", 0.80), (r"\bRTX 4090\b", 0.50),
    (r"\bRTX 3090\b", 0.30), (r"\bV100\b", 2.50), (r"\bT4\b", 0.35), (r"\bMI300X\b", 2.50),
]
DEFAULT_GPU_PRICE_PER_HOUR = 2.00
#: USD per CPU core-hour (about an on-demand compute-optimised cloud vCPU, e.g. AWS c7a).
CPU_PRICE_PER_CORE_HOUR = 0.05

#: World-average grid carbon intensity (gCO2e/kWh), used only when codecarbon's country table
#: cannot be read; the same fallback codecarbon uses.
WORLD_GRID_INTENSITY = 475.0

# codecarbon CPU modes that read a hardware energy counter; "constant" and "cpu_load" are its
# TDP-based models and therefore estimates.
_MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "windows_emi"}

# Length of the CPU peak benchmark (seconds); module-level so tests can shorten it.
_PEAK_BENCH_SECONDS = 1.0

_ENV_PRICE = "TRANSFERLAB_PRICE_PER_HOUR"
_ENV_INTENSITY = "TRANSFERLAB_GRID_INTENSITY"
_ENV_COUNTRY = "TRANSFERLAB_COUNTRY"
_ENV_PEAK = "TRANSFERLAB_PEAK_FLOPS"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- FLOPs
def _head_macs(cfg: Any, positions: float, predicted: float) -> float:
    """Multiply-accumulates of the heads (+ pooler) for one sequence.

    ``positions`` is the number of per-token outputs (T, or T_dec for encoder-decoders) and
    ``predicted`` the number of rows that reach the vocabulary projection (sparse MLM gathers
    the masked positions first). Every head in ``cfg.heads`` is assumed to run once, as in
    multi-task pre-training (MLM + NSP); the backbone's [CLS] pooler runs on every forward.
    """
    d, macs = cfg.d_model, 0.0
    if getattr(cfg, "pooler", False) and str(cfg.family) == "encoder":
        macs += d * d  # one row per sequence
    for name, settings in (cfg.heads or {}).items():
        kind = (settings or {}).get("type", name)
        labels = (settings or {}).get("num_labels", 2)
        if kind == "lm":  # with embedding_size: transform d -> E, then the (V, E) output matrix
            e = getattr(cfg, "embedding_size", None) or d
            macs += predicted * ((d * e if cfg.lm_head_transform else 0) + e * cfg.vocab_size)
        elif kind == "nsp":
            macs += d * 2
        elif kind == "classification":
            macs += d * labels
        elif kind == "token_classification":
            macs += positions * d * labels
        elif kind == "span":
            macs += positions * d * 2
        elif kind == "rtd":
            macs += positions * (d * d + d)
    return macs


def estimate_flops(
    cfg: Any,
    seq_len: int,
    mode: str = "train",
    decoder_len: int | None = None,
    n_predicted: float | None = None,
) -> float:
    """Analytic matmul FLOPs of ONE sequence (multiply by the batch size for a batch).

    Counts every matrix multiply as 2 FLOPs per multiply-accumulate: the linear layers of every
    block (for a plain block ``2·(4·d·d_attn + 2·d·d_ff)`` per token, the "2N" of Kaplan et al.),
    attention scores and weighted values (``4·d_attn·S`` per query per layer over ``S`` keys,
    without discounting the causal mask, as in the PaLM MFU convention), encoder-decoder
    cross-attention (query/output projections per decoder token, key/value projections per
    encoder token per decoder layer, scores over the encoder length), and the heads. Training
    is forward + backward = 3 x forward (the backward pass computes gradients for both the
    input and the weights of every matmul). Element-wise work (norms, softmax, activations) is
    left out, as FlopCounterMode and the MFU convention do.

    Args:
        cfg: a :class:`~transferlab.config.ModelConfig` (or a model with ``.config``).
        seq_len: tokens in the sequence (encoder tokens for encoder-decoders). In ``decode``
            mode: keys in the cache including the new token (decoders), or the encoder length
            (encoder-decoders).
        mode: ``train`` (forward + backward), ``forward`` (evaluation / generation prefill) or
            ``decode`` (one new token with a KV cache).
        decoder_len: decoder tokens of an encoder-decoder (default ``seq_len``; in ``decode``
            mode the decoder keys in the cache including the new token, default 1).
        n_predicted: rows that reach the vocabulary projection (sparse MLM: the masked positions
            of this sequence, may be fractional as a batch average). Default: every position.

    Returns:
        FLOPs as a float.
    """
    cfg = getattr(cfg, "config", cfg)
    if mode not in MODES:
        raise ValueError(f"estimate_flops: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if seq_len <= 0:
        raise ValueError(f"estimate_flops: seq_len must be positive, got {seq_len}")
    enc_dec = str(cfg.family) == "encoder-decoder"
    if decoder_len is not None and not enc_dec:
        raise ValueError("estimate_flops: decoder_len only applies to encoder-decoder models")
    d = cfg.d_model
    inner = cfg.n_heads * (cfg.d_head or cfg.d_model // cfg.n_heads)  # d_attn
    gated = str(cfg.activation) in ("swiglu", "geglu")
    block = 4 * d * inner + (3 if gated else 2) * d * cfg.d_ff  # qkv + out + MLP, per token
    cross_q_out = 2 * d * inner  # cross-attention query + output projections, per decoder token
    cross_kv = 2 * d * inner  # cross-attention key + value projections, per encoder token
    L_enc = cfg.n_layers
    L_dec = (cfg.n_decoder_layers or cfg.n_layers) if enc_dec else cfg.n_layers

    if mode == "decode":
        if enc_dec:
            s_dec = decoder_len or 1
            macs = L_dec * (block + cross_q_out + 2 * inner * (s_dec + seq_len))
        else:
            macs = L_dec * (block + 2 * inner * seq_len)
        return 2.0 * (macs + _head_macs(cfg, 1, 1 if n_predicted is None else n_predicted))

    if enc_dec:
        T, Td = seq_len, decoder_len or seq_len
        macs = L_enc * (T * block + 2 * inner * T * T)  # encoder
        macs += L_dec * (Td * (block + cross_q_out) + T * cross_kv)  # decoder projections
        macs += L_dec * 2 * inner * Td * (Td + T)  # decoder self- and cross-attention
        positions = Td
    else:
        T = seq_len
        macs = L_enc * (T * block + 2 * inner * T * T)
        emb = getattr(cfg, "embedding_size", None)
        if emb and emb != d:  # the embedding projection (E -> d) on every token (encoders only)
            macs += T * emb * d
        positions = T
    macs += _head_macs(cfg, positions, positions if n_predicted is None else n_predicted)
    flops = 2.0 * macs
    return 3.0 * flops if mode == "train" else flops


def generation_flops(cfg: Any, prompt_len: int, new_tokens: int, batch_size: int = 1) -> float:
    """FLOPs of KV-cached generation: one prefill, then ``new_tokens - 1`` decode steps.

    The prefill runs the prompt (encoder-decoders: the encoder over the prompt and the decoder
    over its start token) and yields the first new token; each later token is one decode step
    whose attention reads the growing cache. The LM head is counted on every prefill position
    (as the model computes it) and once per decode step.

    Args:
        cfg: model config (or model).
        prompt_len: prompt tokens (encoder input length for encoder-decoders).
        new_tokens: tokens generated.
        batch_size: sequences generated in parallel.

    Returns:
        Total FLOPs.
    """
    cfg = getattr(cfg, "config", cfg)
    if new_tokens <= 0:
        return 0.0
    if str(cfg.family) == "encoder-decoder":
        total = estimate_flops(cfg, prompt_len, "forward", decoder_len=1)
        total += sum(estimate_flops(cfg, prompt_len, "decode", decoder_len=i) for i in range(2, new_tokens + 1))
    else:
        total = estimate_flops(cfg, prompt_len, "forward")
        total += sum(estimate_flops(cfg, prompt_len + i, "decode") for i in range(1, new_tokens))
    return batch_size * total


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, non-embedding) parameter counts; tied weights counted once.

    Non-embedding excludes every ``nn.Embedding`` (token, position, segment, relative-position
    tables), the N of Kaplan et al.'s scaling laws.
    """
    if model is None:
        return 0, 0
    if hasattr(model, "num_parameters"):
        try:
            return int(model.num_parameters()), int(model.num_parameters(exclude_embeddings=True))
        except TypeError:  # a transformers model or something else with another signature
            pass
    import torch.nn as nn

    total = sum(p.numel() for p in model.parameters())
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return int(total), int(total - emb)


# ----------------------------------------------------------------------------- peaks
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
        log.warning("cost: the peak benchmark got %.0f%% of %s' CPU time (other jobs running): "
                    "not caching %.0f GFLOP/s as the peak", 100 * share, _plural(threads, "thread"), measured / 1e9)
        return peak, f"measured under load: {where}, {100 * share:.0f}% of the CPU: MFU overstated"
    cache[key] = {"flops": peak, "measured_at": _now()}
    try:
        from .utils import atomic_write_text

        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as e:  # a read-only home must not break a run; measure again next time
        log.warning("cost: could not cache the peak in %s (%s)", path, e)
    return peak, f"measured: {where}"


# ----------------------------------------------------------------------------- config
@dataclass
class CostConfig:
    """Where the energy comes from, what it emits, and what the hardware costs.

    Unset fields fall back to the environment (``TRANSFERLAB_COUNTRY``,
    ``TRANSFERLAB_GRID_INTENSITY``, ``TRANSFERLAB_PRICE_PER_HOUR``, ``TRANSFERLAB_PEAK_FLOPS``),
    then to the documented defaults (``docs/cost.md``).
    """

    country_iso_code: str | None = None
    """ISO 3166-1 alpha-3 code of the grid (USA, FRA, DEU, ...); default USA."""
    grid_intensity: float | None = None
    """Grid carbon intensity in gCO2e/kWh; default: codecarbon's figure for the country."""
    price_per_hour: float | None = None
    """USD per device-hour (per GPU; for a CPU run, for the cores it uses)."""
    track_energy: bool = True
    """Run codecarbon (offline) for energy; False uses the TDP x time estimate only."""
    peak_flops: float | None = None
    """Override the per-device peak FLOP/s used for MFU (e.g. a device not in the table)."""
    watts: float | None = None
    """Override the power draw (W, all devices) of the estimate used when nothing is measured."""

    def resolved(self) -> "CostConfig":
        """A copy with environment variables and defaults applied, validated."""
        country = (self.country_iso_code or os.environ.get(_ENV_COUNTRY) or "USA").strip().upper()
        intensity = self.grid_intensity if self.grid_intensity is not None else _env_float(_ENV_INTENSITY, "gCO2e/kWh")
        price = self.price_per_hour if self.price_per_hour is not None else _env_float(_ENV_PRICE, "USD per device-hour")
        peak = self.peak_flops if self.peak_flops is not None else _env_float(_ENV_PEAK, "FLOP/s")
        for name, v in (("grid_intensity", intensity), ("price_per_hour", price), ("peak_flops", peak),
                        ("watts", self.watts)):
            if v is not None and (not math.isfinite(v) or v < 0 or (name == "peak_flops" and v == 0)):
                raise ConfigError(f"cost.{name} must be a non-negative number, got {v}")
        if not re.fullmatch(r"[A-Z]{3}", country):
            raise ConfigError(f"cost.country_iso_code must be a 3-letter ISO code such as USA or FRA, got {country!r}")
        return CostConfig(country, intensity, price, bool(self.track_energy), peak, self.watts)


def _env_float(name: str, what: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r}: expected a number ({what})") from None


def grid_intensity_for(country_iso_code: str) -> tuple[float, str]:
    """(gCO2e/kWh, source) for a country from codecarbon's bundled energy-mix table."""
    try:
        from codecarbon.input import DataSource

        mix = DataSource().get_global_energy_mix_data()
    except Exception:  # codecarbon missing or its data unreadable
        return WORLD_GRID_INTENSITY, "world average (codecarbon's country table unavailable)"
    row = mix.get(country_iso_code)
    if row is None:
        raise ConfigError(
            f"cost.country_iso_code: {country_iso_code!r} is not in codecarbon's country table "
            "(expected an ISO 3166-1 alpha-3 code such as USA, FRA, DEU); or set cost.grid_intensity"
        )
    return float(row["carbon_intensity"]), f"codecarbon energy mix {row.get('country_name', country_iso_code)} {row.get('year', '')}".strip()


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--price-per-hour``, ``--country``, ``--grid-intensity``, ``--no-energy`` to a CLI
    subcommand; read them back with :func:`cost_config_from_args`."""
    g = parser.add_argument_group("cost accounting (docs/cost.md)")
    g.add_argument("--price-per-hour", type=float, default=None, metavar="USD",
                   help=f"price of one device-hour (default: ${CPU_PRICE_PER_CORE_HOUR:.2f} per CPU core, "
                        f"a table per GPU model; env {_ENV_PRICE})")
    g.add_argument("--country", default=None, metavar="ISO3",
                   help=f"country of the electricity grid for CO2e, e.g. USA, FRA (default USA; env {_ENV_COUNTRY})")
    g.add_argument("--grid-intensity", type=float, default=None, metavar="G_PER_KWH",
                   help=f"grid carbon intensity in gCO2e/kWh, overrides --country (env {_ENV_INTENSITY})")
    g.add_argument("--no-energy", action="store_true",
                   help="do not start codecarbon; report the TDP x time energy estimate only")


def cost_config_from_args(args: argparse.Namespace) -> CostConfig:
    """The :class:`CostConfig` described by :func:`add_cost_arguments`' flags."""
    return CostConfig(
        country_iso_code=getattr(args, "country", None),
        grid_intensity=getattr(args, "grid_intensity", None),
        price_per_hour=getattr(args, "price_per_hour", None),
        track_energy=not getattr(args, "no_energy", False),
    )


# ----------------------------------------------------------------------------- energy
def _start_codecarbon(out_dir: Path | None, device: Any) -> Any:
    """An offline codecarbon tracker, started; raises whatever codecarbon raises.

    Process tracking mode attributes CPU load to this process (the machine may be shared);
    nothing is written (``save_to_file=False``), and output_dir points away from the working
    directory for the modes that write temporary files (powermetrics, Intel Power Gadget).
    """
    from codecarbon import OfflineEmissionsTracker

    # after the import (which sets its own level) and before init (which logs while it probes)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)  # codecarbon refuses a missing output_dir

    kw: dict[str, Any] = {}
    if getattr(device, "type", None) == "cuda":
        kw["gpu_ids"] = [device.index or 0]
    # write nothing (no emissions.csv): codecarbon 3 takes output_methods=[], older ones save_to_file
    try:
        from codecarbon.emissions_tracker import BaseEmissionsTracker

        params = inspect.signature(BaseEmissionsTracker.__init__).parameters
    except (ImportError, ValueError):  # pragma: no cover
        params = {}
    if "output_methods" in params:
        kw["output_methods"] = []
    else:  # pragma: no cover - codecarbon < 3
        kw["save_to_file"] = False
    tracker = OfflineEmissionsTracker(
        country_iso_code="USA",  # CO2e is recomputed from our grid intensity; see CostTracker._build
        log_level="error", tracking_mode="process", allow_multiple_runs=True,
        output_dir=str(out_dir) if out_dir is not None else tempfile.gettempdir(), **kw,
    )
    tracker.start()
    # codecarbon logs and swallows its own set-up errors; a tracker that did not start has no
    # start time, and would only fail later with an unhelpful AttributeError
    if getattr(tracker, "_start_time", None) is None:
        raise RuntimeError("codecarbon did not start (its set-up failed)")
    return tracker


def _codecarbon_verdict(tracker: Any, device_type: str) -> tuple[bool, str]:
    """(is the run's compute device read from a power counter?, what codecarbon used).

    codecarbon reads RAPL / Intel Power Gadget / Windows EMI (CPU), NVML (NVIDIA GPU) or
    powermetrics (Apple); otherwise it falls back to a TDP model ("constant" or "cpu_load"),
    and RAM is always a model: those parts are estimates.
    """
    parts, measured = [], False
    for hw in getattr(tracker, "_hardware", None) or []:
        kind = type(hw).__name__
        if kind == "GPU":
            parts.append("GPU: NVML (measured)")
            measured |= device_type == "cuda"
        elif kind == "AppleSiliconChip":
            parts.append(f"{getattr(hw, 'chip_part', 'chip')}: powermetrics (measured)")
            measured |= device_type in ("cpu", "mps")
        elif kind == "CPU":
            mode = str(getattr(hw, "_mode", "unknown"))
            if mode in _MEASURED_CPU_MODES:
                parts.append(f"CPU: {mode} (measured)")
                measured |= device_type == "cpu"
            else:
                tdp = getattr(hw, "_tdp", None)
                parts.append(f"CPU: {mode} model{f' at {tdp} W TDP' if tdp else ''} (estimate)")
        elif kind == "RAM":
            parts.append("RAM: power model (estimate)")
        else:
            parts.append(f"{kind} (estimate)")
    return measured, "codecarbon " + "; ".join(parts or ["(no hardware found)"])


# ----------------------------------------------------------------------------- tracker
class CostTracker:
    """Accounts the cost of one run; usable as ``with CostTracker(...) as t:``.

    Call :meth:`add` once per optimiser step (cheap arithmetic only: codecarbon samples in its
    own thread and is started/stopped once). With several processes (DDP) pass the global
    token count of each step; peak and price are multiplied by the world size, and only rank 0
    writes ``report.json``.

    Args:
        model: the model being trained (parameters are counted; its ``config`` drives the
            default FLOPs estimate). Any ``nn.Module`` works when ``flops`` is passed to add().
        kind: what the run is: ``pretrain``, ``finetune``, ``compare``, ``generate``, ...
        out_dir: run directory; ``stop()`` writes ``out_dir/report.json`` atomically.
        config: energy / carbon / price settings.
        dtype: the compute dtype (``bf16``/``fp16``/``fp32``), which selects the peak.
        device: the compute device; default: the model's.
        seq_len: tokens per sequence (encoder side for encoder-decoders) for the FLOPs estimate.
        decoder_len: decoder tokens per sequence of an encoder-decoder (default ``seq_len``).
        mode: ``train`` (default) or ``forward`` for the FLOPs estimate of add().
    """

    def __init__(self, model: Any, kind: str = "pretrain", out_dir: str | Path | None = None,
                 config: CostConfig | None = None, dtype: Any = "fp32", device: Any = None,
                 seq_len: int | None = None, decoder_len: int | None = None, mode: str = "train"):
        import torch

        self.model, self.kind = model, kind
        self.out_dir = Path(out_dir) if out_dir is not None else None
        config = config or CostConfig()
        self._price_source = "config" if config.price_per_hour is not None else (
            f"env {_ENV_PRICE}" if os.environ.get(_ENV_PRICE, "").strip() else None)
        self.config = config.resolved()
        self.dtype = _norm_dtype(dtype)
        # resolved now, so a bad country fails before the run rather than after it
        if self.config.grid_intensity is not None:
            self.grid_intensity, self.grid_intensity_source = self.config.grid_intensity, "config"
        else:
            self.grid_intensity, self.grid_intensity_source = grid_intensity_for(self.config.country_iso_code)
        if device is None:
            params = next(iter(model.parameters()), None) if model is not None else None
            device = params.device if params is not None else "cpu"
        self.device = torch.device(device)
        self.seq_len, self.decoder_len, self.mode = seq_len, decoder_len, mode
        if mode not in MODES[:2]:
            raise ValueError(f"CostTracker: mode must be train or forward, got {mode!r}")
        self.cfg = getattr(model, "config", None) if model is not None else None
        self.tokens, self.flops, self.steps = 0, 0.0, 0
        self.flops_given = False
        self.report: dict[str, Any] | None = None
        self._t0: float | None = None
        self._paused = 0.0
        self._cc: Any = None
        self._cc_error: str | None = None
        self._started_at = ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "CostTracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.report is None and self._t0 is not None:
            self.stop(interrupted=exc_type is not None)

    def start(self) -> "CostTracker":
        """Resolve the peak (may benchmark for ~1 s), start codecarbon, then start the clock."""
        if self._t0 is not None:
            return self
        if self.config.peak_flops:
            self.peak, self.peak_source = float(self.config.peak_flops), "config"
        else:
            self.peak, self.peak_source = device_peak_flops(self.device, self.dtype)
        if self.config.track_energy:
            try:
                self._cc = _start_codecarbon(self.out_dir, self.device)
            except Exception as e:  # no codecarbon, unreadable hardware, ...: estimate instead
                self._cc, self._cc_error = None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        self._sync()
        self._started_at = _now()
        self._t0 = time.perf_counter()
        return self

    def add(self, tokens: int, flops: float | None = None, seq_len: int | None = None,
            decoder_len: int | None = None, n_predicted: float | None = None) -> None:
        """Account one optimiser step.

        Args:
            tokens: tokens processed in the step (encoder tokens for encoder-decoders).
            flops: the step's FLOPs if the caller knows them (e.g. ELECTRA's two models);
                default: ``tokens / seq_len`` sequences x :func:`estimate_flops`.
            seq_len: tokens per sequence for the estimate (default: the constructor's).
            decoder_len: decoder tokens per sequence (encoder-decoders).
            n_predicted: positions that reached the vocabulary projection in the whole step
                (sparse MLM: the number of masked targets); default all positions.
        """
        if self._t0 is None:
            raise RuntimeError("CostTracker.add() before start()")
        tokens = int(tokens)
        if flops is None:
            seq_len = seq_len or self.seq_len
            if self.cfg is None or not seq_len:
                raise ValueError("CostTracker.add: pass flops=..., or a model with .config and seq_len")
            n_seq = tokens / seq_len
            per_seq_pred = None if n_predicted is None or n_seq == 0 else float(n_predicted) / n_seq
            flops = n_seq * estimate_flops(self.cfg, seq_len, self.mode, decoder_len or self.decoder_len, per_seq_pred)
        else:
            self.flops_given = True
        self.tokens += tokens
        self.flops += float(flops)
        self.steps += 1

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Exclude a stretch (evaluation, checkpointing) from throughput and MFU; it still counts
        towards wall time, energy and price."""
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._paused += time.perf_counter() - t

    def stop(self, interrupted: bool = False) -> dict[str, Any]:
        """Stop the clock and codecarbon; build the report and write ``report.json``.

        Returns:
            The report dict (also kept as ``self.report``); see ``docs/cost.md`` for the fields.
        """
        if self.report is not None:
            return self.report
        if self._t0 is None:
            raise RuntimeError("CostTracker.stop() before start()")
        self._sync()
        wall = time.perf_counter() - self._t0
        compute = max(wall - self._paused, 1e-9)
        energy = self._energy(wall)
        if self.peak_source.startswith("measured") and self.flops / compute > self.peak * _world_size():
            # the run beat the cached peak, which was measured on a busier machine: measure again
            self.peak, self.peak_source = device_peak_flops(self.device, self.dtype, refresh=True)
        self.report = self._build(wall, compute, energy, interrupted)
        if self.out_dir is not None and _is_rank_zero():
            _write_report(self.out_dir / "report.json", self.report)
        return self.report

    # ------------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _device_name(self) -> str:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        if self.device.type == "cpu":
            return f"{cpu_model_name()} ({_plural(torch.get_num_threads(), 'thread')})"
        return self.device.type

    def _estimated_watts(self) -> tuple[float, str]:
        import torch

        threads = torch.get_num_threads()
        if self.config.watts is not None:
            return self.config.watts, f"{self.config.watts:g} W (config)"
        cpu_w = threads * CPU_WATTS_PER_CORE
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            row = _match(GPU_TDP_WATTS, name)
            tdp = row[1] if row else DEFAULT_GPU_TDP_WATTS
            return tdp + cpu_w, f"{tdp:g} W GPU TDP + {_plural(threads, 'core')} x {CPU_WATTS_PER_CORE:g} W"
        return cpu_w, f"{_plural(threads, 'core')} x {CPU_WATTS_PER_CORE:g} W per core"

    def _energy(self, wall: float) -> dict[str, Any]:
        """Stop codecarbon; return energy_kwh, energy_source and energy_method."""
        if self._cc is not None:
            try:
                self._cc.stop()
                data = self._cc.final_emissions_data
                kwh = float(data.energy_consumed)
                measured, method = _codecarbon_verdict(self._cc, self.device.type)
                if kwh > 0 and math.isfinite(kwh):
                    if not measured:
                        method += "; no readable power counter for the compute device"
                    return {"energy_kwh": kwh, "energy_source": "codecarbon" if measured else "estimate",
                            "energy_method": method}
                self._cc_error = "codecarbon reported no energy"
            except Exception as e:
                self._cc_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        watts, how = self._estimated_watts()
        why = "codecarbon disabled" if not self.config.track_energy else f"codecarbon failed ({self._cc_error})"
        return {"energy_kwh": watts * wall / 3.6e6, "energy_source": "estimate",
                "energy_method": f"TDP x time: {how} ({why})"}

    def _price(self) -> tuple[float, str]:
        import torch

        if self.config.price_per_hour is not None:
            return self.config.price_per_hour, self._price_source or "config"
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            row = _match(GPU_PRICE_PER_HOUR, name)
            return (row[1], f"default for {name}") if row else (DEFAULT_GPU_PRICE_PER_HOUR, "default for an unknown GPU")
        threads = torch.get_num_threads()
        return threads * CPU_PRICE_PER_CORE_HOUR, f"default: {_plural(threads, 'CPU core')} x ${CPU_PRICE_PER_CORE_HOUR:.2f}"

    def _build(self, wall: float, compute: float, energy: dict[str, Any], interrupted: bool) -> dict[str, Any]:
        from ._version import __version__
        import torch

        total, non_emb = count_parameters(self.model)
        n_dev = _world_size()
        peak_total = self.peak * n_dev if self.peak else None
        fps = self.flops / compute
        if n_dev > 1:  # each rank measured (or estimated) its own device; ranks are symmetric
            energy = dict(energy, energy_kwh=energy["energy_kwh"] * n_dev,
                          energy_method=f"{energy['energy_method']} x {n_dev} ranks")
        intensity, intensity_src = self.grid_intensity, self.grid_intensity_source
        price_h, price_src = self._price()
        return {
            "kind": self.kind,
            "device": self.device.type,
            "device_name": self._device_name(),
            "n_devices": n_dev,
            "dtype": self.dtype,
            "params_total": total,
            "params_non_embedding": non_emb,
            "steps": self.steps,
            "tokens": self.tokens,
            "flops": self.flops,
            "flops_per_token": self.flops / self.tokens if self.tokens else None,
            "flops_source": "given by the caller" if self.flops_given else f"estimate_flops ({self.mode})",
            "wall_seconds": wall,
            "compute_seconds": compute,
            "tokens_per_second": self.tokens / compute,
            "flops_per_second": fps,
            "peak_flops": peak_total,
            "peak_source": self.peak_source,
            "mfu": fps / peak_total if peak_total else None,
            **energy,
            "co2e_kg": energy["energy_kwh"] * intensity / 1000.0,
            "grid_intensity_g_per_kwh": intensity,
            "grid_intensity_source": intensity_src,
            "country_iso_code": self.config.country_iso_code,
            "price_usd": wall / 3600.0 * price_h * n_dev,
            "price_per_hour": price_h,
            "price_source": price_src,
            "started_at": self._started_at,
            "finished_at": _now(),
            "interrupted": interrupted,
            "torch_version": torch.__version__,
            "transferlab_version": __version__,
        }


# ----------------------------------------------------------------------------- output
def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` atomically, keeping keys another writer put there (metrics)."""
    from .utils import atomic_write_text

    merged: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(old, dict):
            merged = old
    merged.update(report)
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")


def _si(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "n/a"
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}".rstrip()
    return f"{x:.{digits}g} {unit}".rstrip()


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_report(report: dict[str, Any]) -> str:
    """A few aligned lines summarising a :meth:`CostTracker.stop` report for the console."""
    r = report
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    energy_tag = "measured by codecarbon" if r.get("energy_source") == "codecarbon" else "estimate"
    co2 = r.get("co2e_kg") or 0.0
    co2_txt = f"{co2 * 1000:.3g} g" if co2 < 1 else f"{co2:.3g} kg"
    rows = [
        ("run", f"{r.get('kind')} on {r.get('device_name')}"
                + (f" x {r['n_devices']}" if r.get("n_devices", 1) > 1 else "") + f", {r.get('dtype')}"
                + (" (interrupted)" if r.get("interrupted") else "")),
        ("parameters", f"{_si(r.get('params_total'))} total, {_si(r.get('params_non_embedding'))} non-embedding"),
        ("tokens", f"{r.get('tokens', 0):,} in {_duration(r.get('wall_seconds', 0.0))} "
                   f"({r.get('tokens_per_second', 0):,.0f} tokens/s)"),
        ("compute", f"{_si(r.get('flops'), 'FLOP')} ({_si(r.get('flops_per_token'), 'FLOP')}/token), "
                    f"{_si(r.get('flops_per_second'), 'FLOP/s')}"),
        ("MFU", f"{mfu} of {_si(r.get('peak_flops'), 'FLOP/s')} peak ({r.get('peak_source')})"),
        ("energy", f"{r.get('energy_kwh', 0):.3g} kWh ({energy_tag}), {co2_txt} CO2e "
                   f"at {r.get('grid_intensity_g_per_kwh', 0):.0f} g/kWh ({r.get('country_iso_code')})"),
        ("price", f"${r.get('price_usd', 0):.4g} at ${r.get('price_per_hour', 0):.3g} per device-hour "
                  f"({r.get('price_source')})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _world_size() -> int:
    try:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except Exception:  # pragma: no cover - defensive
        return 1


def _is_rank_zero() -> bool:
    try:
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    except Exception:  # pragma: no cover
        return True


__all__ = [
    "CostConfig", "CostTracker", "estimate_flops", "generation_flops", "device_peak_flops", "format_report",
    "count_parameters", "grid_intensity_for", "add_cost_arguments", "cost_config_from_args", "cpu_model_name",
]
