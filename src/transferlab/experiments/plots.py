"""Comparison plots (matplotlib, Agg backend, written atomically as PNG).

* :func:`learning_curve` — the task metric against the number of labelled examples (log x),
  one line per method with ± std error bars over seeds; pre-trained models solid, from-scratch
  dashed, TF-IDF dotted, majority / lead as grey reference lines.
* :func:`cost_plot` — the task metric against a cost (price, energy, FLOPs or training
  seconds; log x), every (method, train size) a point, with the Pareto front: the points no other
  point beats on both cost and score.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.metrics import higher_is_better

_STYLE = {  # group -> (line style, marker)
    "pre-trained": ("-", "o"),
    "from scratch": ("--", "s"),
    "tf-idf": (":", "^"),
    "majority": ("-.", "x"),
    "lead": ("-.", "x"),
}
_COST_LABEL = {"train_seconds": "training time (s)", "energy_kwh": "energy (kWh)", "co2e_kg": "CO2e (kg)",
               "price_usd": "price (USD)", "flops": "training FLOPs"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: importing this module stays cheap).

    Returns:
        The ``matplotlib.pyplot`` module.
    """
    import matplotlib

    matplotlib.use("Agg")  # never needs a display; safe in threads and on servers
    import matplotlib.pyplot as plt

    return plt


def _colors(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One colour per method, the same in every plot of a comparison; reference baselines grey."""
    cycle = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    out, k = {}, 0
    for g in summary:
        m = g["method"]
        if m in out:
            continue
        if g.get("group") in ("majority", "lead"):
            out[m] = "0.5"
        else:
            out[m] = cycle[k % len(cycle)]
            k += 1
    return out


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (a reader never sees half a file) and close it.

    Args:
        fig: a matplotlib figure.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    from ..utils import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def learning_curve(summary: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Metric vs labelled examples for one task.

    Args:
        summary: rows of :func:`~transferlab.experiments.tables.summarize` for one task.
        path: the PNG to write.
        title: plot title (the task name).

    Returns:
        ``path``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = list(dict.fromkeys(g["method"] for g in summary))
    colors = _colors(summary)
    for m in methods:
        pts = sorted((g for g in summary if g["method"] == m), key=lambda g: g["n_train"])
        group = pts[0].get("group", "")
        ls, marker = _STYLE.get(group, ("-", "o"))
        x = [g["n_train"] for g in pts]
        y = [g["mean"] for g in pts]
        e = [g["std"] for g in pts]
        ax.errorbar(x, y, yerr=e, linestyle=ls, marker=marker, color=colors[m], capsize=3, label=f"{m} ({group})")
    ax.set_xscale("log")
    metric, split = summary[0]["metric"], summary[0]["split"]
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(f"{metric} ({split})")
    n = max(g["n"] for g in summary)
    ax.set_title(f"{title}: learning curve (mean ± std over {n} seed{'s' if n > 1 else ''})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))


def pareto_front(points: Sequence[tuple[float, float]], higher_better: bool = True) -> list[int]:
    """Indices of the non-dominated points (lower cost and better score), sorted by cost.

    A point is dominated when another has cost <= and score >= (<= when lower is better) with at
    least one strict inequality.

    Args:
        points: ``(cost, score)`` pairs.
        higher_better: whether a higher score is better.

    Returns:
        Indices into ``points``, cheapest first.
    """
    sign = 1.0 if higher_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        s = sign * points[i][1]
        if s > best:
            front.append(i)
            best = s
    return front


def cost_plot(summary: Sequence[dict[str, Any]], path: str | Path, cost_key: str = "train_seconds",
              title: str = "") -> Path:
    """Metric vs cost for one task, with the Pareto front.

    Args:
        summary: rows of :func:`~transferlab.experiments.tables.summarize` for one task.
        path: the PNG to write.
        cost_key: ``train_seconds``, ``energy_kwh``, ``co2e_kg``, ``price_usd`` or ``flops``;
            rows without it are left out (noted in the title).
        title: plot title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = [g for g in summary if isinstance(g.get(cost_key), (int, float)) and g[cost_key] > 0]
    missing = len(summary) - len(rows)
    colors = _colors(summary)
    methods = list(dict.fromkeys(g["method"] for g in rows))
    for m in methods:
        pts = [g for g in rows if g["method"] == m]
        group = pts[0].get("group", "")
        _, marker = _STYLE.get(group, ("-", "o"))
        ax.errorbar([g[cost_key] for g in pts], [g["mean"] for g in pts], yerr=[g["std"] for g in pts],
                    linestyle="none", marker=marker, color=colors[m], capsize=2, label=m)
        for g in pts:
            ax.annotate(g["train_size"], (g[cost_key], g["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if rows:
        hb = higher_is_better(rows[0]["metric"])
        front = [rows[i] for i in pareto_front([(g[cost_key], g["mean"]) for g in rows], hb)]
        ax.plot([g[cost_key] for g in front], [g["mean"] for g in front], "k-", alpha=0.4, drawstyle="steps-post",
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_ylabel(f"{rows[0]['metric']} ({rows[0]['split']})")
    ax.set_xlabel(_COST_LABEL.get(cost_key, cost_key))
    note = f" ({missing} without {cost_key} left out)" if missing else ""
    ax.set_title(f"{title}: score vs cost{note}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
