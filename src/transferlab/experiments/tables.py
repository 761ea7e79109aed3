"""Tables of a comparison: mean ± std over seeds per (task, train size, method), as markdown,
CSV and plots (the files ``transferlab compare`` and ``transferlab report`` write)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..evaluation.metrics import higher_is_better, mean_std
from .config import CompareConfig, plan_cells

#: cost columns shown in tables, in this order, when any row has them
COST_COLUMNS = (("energy_kwh", "energy (kWh)"), ("co2e_kg", "CO2e (kg)"), ("price_usd", "price ($)"),
                ("flops", "FLOPs"))


# ------------------------------------------------------------------------------ tables
def summarize(rows: list[dict[str, Any]], cfg: CompareConfig) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (task, train size, method), current settings only.

    Args:
        rows: result rows (:func:`transferlab.experiments.grid.read_results`); rows of other
            settings (another spec hash) are left out, and a later row of a cell wins.
        cfg: the comparison (its cells and order).

    Returns:
        One dict per group, in config order (task, size, method): ``task``, ``train_size``,
        ``method``, ``group``, ``metric``, ``split``, ``n`` (seeds), ``n_train``, ``mean``,
        ``std``, ``val_mean``, ``val_std``, ``train_seconds``, every metric as
        ``<split>/<metric>`` (mean, std) pairs and the mean of each cost column.
    """
    split = "test" if cfg.eval_on_test else "validation"
    cells = plan_cells(cfg)
    current = {(*c.key, c.spec_hash) for c in cells}
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:  # a later row of the same cell wins (e.g. a rerun after deleting a line)
        k = (r["method"], r["task"], str(r["train_size"]), int(r["seed"]), r["spec"])
        if k in current:
            latest[k] = r
    out = []
    order_m = [m.name for m in cfg.models]
    for t in cfg.tasks:
        for size in cfg.train_sizes:
            label = "all" if size is None else str(size)
            for mname in order_m:
                rs = [r for (m, tk, sz, _, _), r in latest.items() if m == mname and tk == t.name and sz == label]
                if not rs:
                    continue
                metric = rs[0]["metric"]
                sp = split if all(r.get(split) for r in rs) else "validation"
                mean, std = mean_std(r[sp][metric] for r in rs)
                vm, vs = mean_std(r["validation"][metric] for r in rs)
                g: dict[str, Any] = {
                    "task": t.name, "train_size": label, "method": mname, "group": rs[0].get("group", ""),
                    "metric": metric, "split": sp, "n": len(rs),
                    "n_train": sum(r["n_train"] for r in rs) / len(rs), "mean": mean, "std": std,
                    "val_mean": vm, "val_std": vs,
                    "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs),
                    "seeds": sorted(int(r["seed"]) for r in rs),
                }
                for name in sorted(set().union(*(r[sp].keys() for r in rs))):
                    vals = [r[sp][name] for r in rs if name in r[sp]]
                    g[f"{sp}/{name}"] = mean_std(vals)
                for key, _ in COST_COLUMNS:
                    vals = [float(r["cost"][key]) for r in rs if isinstance(r.get("cost", {}).get(key), (int, float))]
                    if len(vals) == len(rs):
                        g[key] = sum(vals) / len(vals)
                out.append(g)
    return out


def _fmt_num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def _cost_columns(summary: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, h) for k, h in COST_COLUMNS if any(k in g for g in summary)]


def format_table(summary: list[dict[str, Any]], cfg: CompareConfig | None = None) -> str:
    """A markdown table: one row per (task, train size, method), mean ± std over n seeds.

    Args:
        summary: rows of :func:`summarize`.
        cfg: unused; kept so existing callers that pass it keep working.

    Returns:
        The table (the best mean of each (task, train size) in bold), or a one-line note when
        no cell has finished.
    """
    if not summary:
        return "(no finished cells yet)"
    costs = _cost_columns(summary)
    head = ["task", "train size", "method", "n", "metric", "score (mean ± std)", "validation", "train time (s)"]
    head += [h for _, h in costs]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["--:"] + ["---"] + ["--:"] * (len(head) - 5)) + "|"]
    best = best_of(summary)
    n_per = {}
    for g in summary:
        n_per[(g["task"], g["train_size"])] = n_per.get((g["task"], g["train_size"]), 0) + 1

    def ms(mean: float, std: float, n: int) -> str:
        return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"  # one seed has no spread

    for g in summary:
        key = (g["task"], g["train_size"])
        score = ms(g["mean"], g["std"], g["n"])
        if best[key] == g["method"] and n_per[key] > 1:
            score = f"**{score}**"  # the best mean of this (task, train size)
        cells = [g["task"], g["train_size"], g["method"], str(g["n"]), f"{g['metric']} ({g['split']})", score,
                 ms(g["val_mean"], g["val_std"], g["n"]), f"{g['train_seconds']:.1f}"]
        cells += [_fmt_num(g[k]) if k in g else "-" for k, _ in costs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(summary: list[dict[str, Any]]) -> str:
    """The summary as CSV with separate mean / std columns for every metric.

    Args:
        summary: rows of :func:`summarize`.

    Returns:
        The CSV text (header first).
    """
    metric_keys = sorted({k for g in summary for k in g if "/" in k})
    costs = [k for k, _ in _cost_columns(summary)]
    head = ["task", "train_size", "method", "group", "n", "n_train", "metric", "split", "mean", "std",
            "val_mean", "val_std", "train_seconds"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head + [f"{k}_{s}" for k in metric_keys for s in ("mean", "std")] + costs)
    for g in summary:
        w.writerow([g[h] for h in head] + [v for k in metric_keys for v in (g.get(k) or ("", ""))]
                   + [g.get(k, "") for k in costs])
    return buf.getvalue()


def write_outputs(summary: list[dict[str, Any]], table: str, cfg: CompareConfig, plots: bool = True) -> list[Path]:
    """Write summary.md, summary.csv and the plots into ``cfg.out_dir`` (each file atomically).

    Args:
        summary: rows of :func:`summarize`.
        table: :func:`format_table` of them.
        cfg: the comparison (folder, split, cost axis, tasks).
        plots: also write ``plots/`` (a learning curve per task with several sizes, a cost plot).

    Returns:
        The files written.
    """
    from ..utils import atomic_write_text

    d = cfg.out_dir
    md = d / "summary.md"
    header = (f"# Comparison ({cfg.source})\n\nMean ± sample std over seeds; score on the "
              f"{'test' if cfg.eval_on_test else 'validation'} split with the model chosen on validation.\n\n")
    atomic_write_text(md, header + table + "\n")
    csv_path = d / "summary.csv"
    atomic_write_text(csv_path, format_csv(summary))
    files = [md, csv_path]
    if plots and summary:
        from .plots import cost_plot, learning_curve

        axis = cfg.cost_axis
        if axis == "auto":
            axis = "price_usd" if all("price_usd" in g for g in summary) else "train_seconds"
        for t in cfg.tasks:
            sub = [g for g in summary if g["task"] == t.name]
            if not sub:
                continue
            if len({g["train_size"] for g in sub}) > 1:
                files.append(learning_curve(sub, d / "plots" / f"learning_curve_{t.name}.png", title=t.name))
            files.append(cost_plot(sub, d / "plots" / f"cost_{t.name}.png", cost_key=axis, title=t.name))
    return files


def best_of(summary: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The best method per (task, train size) by mean score (used to bold the winner).

    Args:
        summary: rows of :func:`summarize`.

    Returns:
        ``(task, train size) -> method name``.
    """
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for g in summary:
        k = (g["task"], g["train_size"])
        s = g["mean"] if higher_is_better(g["metric"]) else -g["mean"]
        if k not in best or s > best[k][0]:
            best[k] = (s, g["method"])
    return {k: v[1] for k, v in best.items()}
