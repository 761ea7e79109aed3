"""Compare pre-training runs: validation loss curves of several run folders in one plot.

A run folder is what ``transferlab pretrain --out DIR`` writes: ``metrics.jsonl`` with one JSON
row per logged step (``split: train``) and per evaluation (``split: val``; older runs wrote
``split: validation`` rows with ``val_*`` fields, read alike through
:func:`~transferlab.training.runlog.read_rows`). This module reads those rows, draws every run's validation loss against tokens, steps or minutes (optionally
with horizontal reference lines such as a unigram baseline), and summarises each run's last
evaluation: what ``transferlab curves`` prints and saves.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..utils import atomic_write_bytes

X_AXES = {"tokens": "training tokens", "step": "optimizer step", "minutes": "wall-clock minutes"}

#: the language-modelling part of each objective's loss (its ``Objective.lm_loss_metric``; listed
#: here so reading curves does not import torch; a test checks they agree). Only used for rows
#: written before the trainer logged ``val_ppl``.
LM_LOSS_METRICS = ("mlm_loss", "clm_loss", "denoise_loss", "span_loss", "gen_loss")


def row_perplexity(row: dict) -> float:
    """The perplexity of one validation row (either schema): the run's own ``ppl`` when it logged
    one, else exp of its language-modelling loss (``mlm_loss`` for mlm+nsp, ``gen_loss`` for
    ELECTRA's generator, ...), else exp of ``loss``.

    Why not exp(val_loss) always: for combined objectives ``val_loss`` adds a classification
    loss (NSP) or a weighted discriminator loss (ELECTRA's 50 x RTD), and its exp is no perplexity
    of anything (3,477 for a run whose MLM perplexity is 1,740; 1.2e12 for one at 1,245).
    """
    from .runlog import normalize_row

    row = normalize_row(row)
    if isinstance(row.get("ppl"), (int, float)):
        return float(row["ppl"])
    key = next((k for k in LM_LOSS_METRICS if isinstance(row.get(k), (int, float))), "loss")
    return math.exp(min(float(row[key]), 50.0))


@dataclass
class RunCurve:
    """One run's validation curve."""

    label: str
    steps: list[int]
    tokens: list[int]
    minutes: list[float]  #: from the train rows' ``elapsed_s`` when they have it, else empty
    val_loss: list[float]
    val_acc: list[float | None]  #: ``val_mlm_acc`` / ``val_acc`` when present
    val_ppl: list[float]  #: perplexity of the language-modelling part (:func:`row_perplexity`)

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
    from .runlog import read_rows

    rows = read_rows(metrics)  # either schema; a row torn by a kill (or a full disk) is skipped with a warning
    val = [r for r in rows if r.get("split") == "val" and "loss" in r]
    if not val:
        raise DataError(f"{metrics}: no validation rows (was the run evaluated? see --eval-every)")
    name = label or (path.parent.name if path.is_file() else path.name)
    # older validation rows carry no clock; take it from the last train row logged at or before each step
    clock = sorted((int(r["step"]), float(r["elapsed_s"])) for r in rows
                   if r.get("split") == "train" and "elapsed_s" in r and "step" in r)
    minutes = []
    for r in val:
        before = [t for s, t in clock if s <= int(r["step"])]
        if isinstance(r.get("elapsed_s"), (int, float)):  # current rows carry their own clock
            minutes.append(float(r["elapsed_s"]) / 60)
        elif before:
            minutes.append(before[-1] / 60)
    return RunCurve(name, [int(r["step"]) for r in val], [int(r.get("tokens", 0)) for r in val],
                    minutes if len(minutes) == len(val) else [], [float(r["loss"]) for r in val],
                    [r.get("mlm_acc", r.get("acc")) for r in val], [row_perplexity(r) for r in val])


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
    its distance to each reference line. The loss is the objective's whole loss (what the plot
    shows); the perplexity is that of its language-modelling part, as the run logged it."""
    refs = references or {}
    head = ["run", "steps", "tokens", "validation loss", "ppl", "accuracy", *[f"vs {k}" for k in refs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        acc = c.val_acc[-1]
        cells = [c.label, f"{c.steps[-1]:,}", f"{c.tokens[-1] / 1e6:.2f} M", f"{c.final:.3f}",
                 _ppl(c.val_ppl[-1]), "-" if acc is None else f"{100 * acc:.1f}%",
                 *[f"{c.final - v:+.3f}" for v in refs.values()]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ppl(v: float) -> str:
    """Perplexity cell: thousands separators for big values, two decimals for small ones."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
