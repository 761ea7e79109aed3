"""What a run prints and the command-line flags of cost accounting.

:func:`format_report` turns a :meth:`~transferlab.cost.CostTracker.stop` report into a few
aligned console lines; :func:`add_cost_arguments` / :func:`cost_config_from_args` are the flags
every training subcommand takes.
"""

from __future__ import annotations

import argparse
from typing import Any

from .tracker import _ENV_COUNTRY, _ENV_INTENSITY, _ENV_PRICE, CPU_PRICE_PER_CORE_HOUR, CostConfig


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


def format_report(report: dict[str, Any], throughput: bool = True) -> str:
    """A few aligned lines summarising a :meth:`CostTracker.stop` report for the console.

    Args:
        report: what :meth:`CostTracker.stop` returned.
        throughput: include the wall-clock tokens / tokens/s row (False where the run's one
            summary line, ``runlog.summary_line``, already reports them).
    """
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
    if not throughput:
        rows = [row for row in rows if row[0] != "tokens"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
