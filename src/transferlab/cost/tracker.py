"""Energy, CO2e and price of a run: :class:`CostTracker` and its settings (:class:`CostConfig`).

Energy comes from codecarbon (offline) with an honest "estimate" label when no power counter is
readable (then TDP x time), CO2e from the grid intensity, and the price from an hourly device
price. ``CostTracker.stop()`` writes ``report.json``. Defaults are documented in ``docs/cost.md``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from .peaks import _match, _norm_dtype, _now, _plural, cpu_model_name, device_peak_flops

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

_ENV_PRICE = "TRANSFERLAB_PRICE_PER_HOUR"
_ENV_INTENSITY = "TRANSFERLAB_GRID_INTENSITY"
_ENV_COUNTRY = "TRANSFERLAB_COUNTRY"
_ENV_PEAK = "TRANSFERLAB_PEAK_FLOPS"

log = logging.getLogger("transferlab.cost")


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
        if mode not in ("train", "forward"):  # a run trains or evaluates; decode is per token
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
            from ..models.flops import family_flops  # what cost.estimate_flops dispatches to

            seq_len = seq_len or self.seq_len
            if self.cfg is None or not seq_len:
                raise ValueError("CostTracker.add: pass flops=..., or a model with .config and seq_len")
            n_seq = tokens / seq_len
            per_seq_pred = None if n_predicted is None or n_seq == 0 else float(n_predicted) / n_seq
            flops = n_seq * family_flops(self.cfg, seq_len, self.mode, decoder_len or self.decoder_len, per_seq_pred)
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
        from .._version import __version__
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


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` atomically, keeping keys another writer put there (metrics)."""
    from ..utils import atomic_write_text

    merged: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(old, dict):
            merged = old
    merged.update(report)
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")


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
