"""Compare pre-training runs: validation loss curves of several run folders in one plot.

A run folder is what ``transferlab pretrain --out DIR`` writes: ``metrics.jsonl`` with one JSON
row per logged step (``split: train``) and per evaluation (``split: validation``). This module
reads those rows, draws every run's validation loss against tokens, steps or minutes (optionally
with horizontal reference lines such as a unigram baseline), and summarises each run's last
evaluation: what ``transferlab curves`` prints and saves.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..utils import atomic_write_bytes

X_AXES = {"tokens": "training tokens", "step": "optimizer step", "minutes": "wall-clock minutes"}


@dataclass
class RunCurve:
    """One run's validation curve."""

    label: str
    steps: list[int]
    tokens: list[int]
    minutes: list[float]  #: from the train rows' ``elapsed_s`` when they have it, else empty
    val_loss: list[float]
    val_acc: list[float | None]  #: ``val_mlm_acc`` / ``val_acc`` when present

    @property
    def final(self) -> float:
        return self.val_loss[-1]


def read_run(run: str | Path, label: str | None = None) -> RunCurve:
    """Read the validation rows of a run folder (or of a ``metrics.jsonl`` file itself).

    Raises:
        DataError: no metrics file, a line that is not JSON, or no validation row.
    """
    path = Path(run)
    metrics = path if path.is_file() else path / "metrics.jsonl"
    if not metrics.is_file():
        raise DataError(f"{path}: no metrics.jsonl (expected a folder written by `transferlab pretrain --out`)")
    rows = []
    for i, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{metrics}:{i}: not a JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{metrics}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    val = [r for r in rows if r.get("split") == "validation" and "val_loss" in r]
    if not val:
        raise DataError(f"{metrics}: no validation rows (was the run evaluated? see --eval-every)")
    name = label or (path.parent.name if path.is_file() else path.name)
    # validation rows carry no clock; take it from the last train row logged at or before each step
    clock = sorted((int(r["step"]), float(r["elapsed_s"])) for r in rows
                   if r.get("split") == "train" and "elapsed_s" in r and "step" in r)
    minutes = []
    for r in val:
        before = [t for s, t in clock if s <= int(r["step"])]
        if before:
            minutes.append(before[-1] / 60)
    return RunCurve(name, [int(r["step"]) for r in val], [int(r.get("tokens", 0)) for r in val],
                    minutes if len(minutes) == len(val) else [], [float(r["val_loss"]) for r in val],
                    [r.get("val_mlm_acc", r.get("val_acc")) for r in val])


def plot_runs(curves: Sequence[RunCurve], png: str | Path, x: str = "tokens",
              references: dict[str, float] | None = None, title: str = "") -> Path:
    """Validation loss of several runs against ``x`` (tokens, step or minutes) in one PNG.

    Args:
        curves: from :func:`read_run`.
        png: output path (written atomically).
        x: ``tokens``, ``step`` or ``minutes``.
        references: horizontal lines, label -> loss (e.g. ``{"unigram": 6.739}``).
        title: plot title.

    Returns:
        The PNG path.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for c in curves:
        xs = {"tokens": [t / 1e6 for t in c.tokens], "step": c.steps, "minutes": c.minutes}[x]
        if not xs:
            raise DataError(f"{c.label}: its metrics have no elapsed_s, so it cannot be drawn against minutes")
        ax.plot(xs, c.val_loss, "o-", ms=3.5, lw=1.5, label=f"{c.label} ({c.final:.3f})")
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1.1, color=f"C{len(curves) + i}", label=f"{name} ({value:.3f})")
    ax.set_xlabel(X_AXES[x] + (" (millions)" if x == "tokens" else ""))
    ax.set_ylabel("validation loss (nats per predicted token)")
    ax.set_title(title or "validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(png), buf.getvalue())
    return Path(png)


def summary_table(curves: Sequence[RunCurve], references: dict[str, float] | None = None) -> str:
    """A markdown table: each run's steps, tokens, last validation loss, perplexity, accuracy and
    its distance to each reference line."""
    import math

    refs = references or {}
    head = ["run", "steps", "tokens", "validation loss", "ppl", "accuracy", *[f"vs {k}" for k in refs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        acc = c.val_acc[-1]
        cells = [c.label, f"{c.steps[-1]:,}", f"{c.tokens[-1] / 1e6:.2f} M", f"{c.final:.3f}",
                 f"{math.exp(min(c.final, 50)):,.0f}", "-" if acc is None else f"{100 * acc:.1f}%",
                 *[f"{c.final - v:+.3f}" for v in refs.values()]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
