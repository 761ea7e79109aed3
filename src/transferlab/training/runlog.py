"""The one log schema of a training run: JSONL rows, TensorBoard, the progress bar, status lines
and the end-of-run summary line. Pre-training and fine-tuning both write it (live, as rows are
produced), so their run folders read alike.

Rows (one JSON object per line of ``metrics.jsonl``), every one with the same leading fields::

    {"step": 10, "split": "train", "loss": 5.61, "elapsed_s": 12.3, "tokens_per_s": 10650.0,
     "tokens": 131072, "lr": 0.0003, "grad_norm": 1.7, "mlm_loss": 5.61, "mlm_acc": 0.12, ...}
    {"step": 10, "split": "val", "loss": 5.70, "elapsed_s": 12.3, "tokens_per_s": 10650.0,
     "tokens": 131072, "ppl": 280.1, "mlm_loss": 5.70, "mlm_acc": 0.11}

``split`` is ``train`` or ``val``; ``loss`` is the mean loss per target; ``elapsed_s`` the
training seconds so far; ``tokens_per_s`` the training throughput so far; the other fields are
the objective's (or task's) metric names, unprefixed in both splits. Rows written before this
schema (``split: validation`` with ``val_loss``, ``val_<metric>`` fields) are read through
:func:`normalize_row` / :func:`read_rows`, which every reader uses.

TensorBoard: each numeric field ``f`` of a row is the scalar ``f/<split>`` at ``step``, so train
and validation of the same quantity share a chart (``loss/train`` and ``loss/val``); the run's
settings are logged once as hparams (:meth:`RunLog.log_hparams`).

API::

    log = RunLog(out_dir, tensorboard=True, progress=True)   # main process only
    history = log.open(keep_upto_step=resumed_step)   # rows beyond a resumed checkpoint dropped
    log.log_hparams({"lr": 3e-4, "objective": "mlm"})  # fresh runs only
    log.row("train", step, loss, elapsed_s, tokens_per_s, lr=..., **metrics)
    log.row("val", step, val_loss, elapsed_s, tokens_per_s, ppl=..., **metrics)
    log.progress(percent, step=step, loss=loss, tok_s=tps)  # the bar; shows the last val loss
    log.status("resumed from ...")                 # a line above the bar (tqdm.write)
    log.close()
    print(summary_line(summary))                   # the one end-of-run line
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

#: the fields every row starts with, in this order
ROW_FIELDS = ("step", "split", "loss", "elapsed_s", "tokens_per_s")
SPLITS = ("train", "val")


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the current schema, whatever schema it was written in.

    Old validation rows (``split: validation``, ``val_loss``, ``val_ppl``, ``val_<metric>``)
    become ``split: val`` rows with ``loss``, ``ppl`` and ``<metric>``; current rows are returned
    as they are (a copy).

    Args:
        row: one parsed JSONL row.

    Returns:
        The row with the current field names.
    """
    if row.get("split") != "validation":
        return dict(row)
    out: dict[str, Any] = {"step": row.get("step"), "split": "val"}
    for k, v in row.items():
        if k in ("step", "split"):
            continue
        out[k[len("val_"):] if k.startswith("val_") else k] = v
    return out


def read_rows(path: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` in the current schema (torn rows skipped).

    Args:
        path: the JSONL file.
        warn: warn on stderr about a torn or invalid row.

    Returns:
        The rows, through :func:`normalize_row`.
    """
    from ..outputs import read_jsonl

    return [normalize_row(r) for r in read_jsonl(Path(path), warn=warn)]


def summary_line(summary: dict[str, Any]) -> str:
    """The one end-of-run line: steps, tokens, training time and throughput, why it stopped.

    Args:
        summary: with ``steps``, ``tokens``, ``train_seconds``, ``tokens_per_s``, ``dtype``,
            ``stopped_by`` and optionally ``val_loss`` / ``val_ppl`` (what ``Trainer.summary`` returns).

    Returns:
        One line without a newline.
    """
    val = ""
    if summary.get("val_loss") is not None:
        ppl = summary.get("val_ppl")
        val = f", validation loss {summary['val_loss']:.4f}" + (f" (ppl {ppl:.2f})" if ppl is not None else "")
    return (f"trained {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['train_seconds']:.1f}s "
            f"({summary['tokens_per_s']:,.0f} tokens/s, {summary['dtype']}), stopped by {summary['stopped_by']}{val}")


def _hparam_value(v: Any) -> int | float | str | bool:
    """A value TensorBoard's hparams plugin accepts (numbers, strings, bools; others as JSON)."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, default=str)


class RunLog:
    """One run's logs in the schema of the module docstring (create it on the main process only).

    Args:
        out_dir: the run folder; rows go to ``<out_dir>/<jsonl>``, events to ``<out_dir>/tensorboard``.
        tensorboard: write TensorBoard events.
        progress: show a tqdm bar (0-100 %).
        jsonl: the file name of the rows.
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, progress: bool = True,
                 jsonl: str = "metrics.jsonl"):
        self.out = Path(out_dir)
        self.path = self.out / jsonl
        self.tensorboard, self.show_progress = tensorboard, progress
        self.history: list[dict[str, Any]] = []  # rows in the current schema, oldest first
        self.last_val_loss: float | None = None
        self._file: Any = None
        self._writer: Any = None
        self._bar: Any = None
        self._postfix: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def open(self, keep_upto_step: int = 0, initial_percent: float = 0.0) -> list[dict[str, Any]]:
        """Open the files (appending) and the bar.

        Rows beyond ``keep_upto_step`` (written after the checkpoint a run resumes from) are
        dropped: they are re-done now, and the file must read as if the run was never stopped.

        Args:
            keep_upto_step: the step the run continues from (0: a fresh run keeps nothing).
            initial_percent: where the bar starts (a resumed run's progress).

        Returns:
            The kept rows, in the current schema (also :attr:`history`).
        """
        from ..utils import atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, Any]] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("step", 0) <= keep_upto_step:
                    kept.append(rec)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.history = [normalize_row(r) for r in kept]
        vals = [r for r in self.history if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
        self.last_val_loss = float(vals[-1]["loss"]) if vals else None
        self._file = open(self.path, "a", encoding="utf-8")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=keep_upto_step + 1)
        if self.show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=100.0, initial=round(initial_percent, 2), unit="%",
                             bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f}% [{elapsed}<{remaining}{postfix}]",
                             dynamic_ncols=True)
        return self.history

    def close(self) -> None:
        """Flush and close the rows, the event file and the bar (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ writing
    def row(self, split: str, step: int, loss: float, elapsed_s: float, tokens_per_s: float,
            **fields: Any) -> dict[str, Any]:
        """Append one row to the JSONL file and its numeric fields to TensorBoard.

        Args:
            split: ``train`` or ``val``.
            step: the optimizer step.
            loss: the mean loss per target.
            elapsed_s: training seconds so far.
            tokens_per_s: training throughput so far.
            fields: everything else (``tokens``, ``lr``, ``ppl``, metric names), unprefixed.

        Returns:
            The row as written.
        """
        if split not in SPLITS:
            raise ValueError(f"RunLog.row: split must be one of {SPLITS}, got {split!r}")
        rec = {"step": int(step), "split": split, "loss": loss, "elapsed_s": elapsed_s, "tokens_per_s": tokens_per_s}
        rec.update({k: v for k, v in fields.items() if k not in ROW_FIELDS})
        self.history.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        if self._writer is not None:
            for k, v in rec.items():
                if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(f"{k}/{split}", v, rec["step"])
        if split == "val" and isinstance(loss, (int, float)) and math.isfinite(loss):
            self.last_val_loss = float(loss)
        return rec

    def log_hparams(self, params: dict[str, Any], metrics: Iterable[str] = ("loss/train", "loss/val")) -> None:
        """Record the run's settings once (TensorBoard's HPARAMS tab), in the run's event file.

        Args:
            params: flat name -> value (non-scalar values are stored as JSON text).
            metrics: the scalar tags the hparams table shows next to them.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        exp, ssi, sei = hparams({k: _hparam_value(v) for k, v in params.items()}, {m: 0.0 for m in metrics})
        fw = self._writer.file_writer
        for s in (exp, ssi, sei):
            fw.add_summary(s)

    # ------------------------------------------------------------------ console
    def progress(self, percent: float, **postfix: Any) -> None:
        """Move the bar to ``percent`` (0-100) and show ``postfix`` plus the latest validation loss."""
        if self._bar is None:
            return
        self._bar.update(round(min(percent, 100.0), 2) - self._bar.n)
        shown = dict(postfix)
        if self.last_val_loss is not None:
            shown["val_loss"] = f"{self.last_val_loss:.4f}"
        self._bar.set_postfix(shown, refresh=False)

    def status(self, message: str, err: bool = False) -> None:
        """Print a status line above the bar (``tqdm.write``), never glued onto it."""
        stream = sys.stderr if err else sys.stdout
        if self._bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)
