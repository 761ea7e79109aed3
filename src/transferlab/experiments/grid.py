"""The ``transferlab compare`` grid runner: cells, the resumable results log, running a cell.

Each finished cell appends one JSON row to ``out_dir/results.jsonl``; a rerun skips every cell
whose row is already there with the same settings (a cell's settings are hashed into its row,
so editing a method's settings reruns that method and ignores its old rows). After the grid,
:mod:`.tables` writes ``summary.md`` / ``summary.csv`` (mean ± sample std over seeds per
(task, train size, method) with training time and cost columns) and ``plots/`` the learning
curves and metric-vs-cost Pareto plots.

A transformer cell runs in its own folder, ``out_dir/cells/<method>/<task>/n<size>/seed<seed>``,
where fine-tuning keeps its checkpoints (:mod:`transferlab.finetune.loop`): a grid killed in the
middle of a cell resumes that cell from its latest checkpoint and ends with the row an
uninterrupted run writes. The folder goes once the row is written, unless ``save_models``.

Every method gets the same labelled examples for a given seed and size: baselines and
fine-tuning both draw them with :func:`transferlab.finetune.tasks.subsample`.

The study runner (:mod:`.study`) uses the same public pieces: :func:`run_compare` with its own
``runner``, :func:`run_finetune_cell`, :func:`append_row` and :func:`read_results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError, DataError, TransferlabError
from ..finetune.metrics import primary_metric
from .baselines import BaselineResult, run_baseline
from .config import Cell, CompareConfig, MethodSpec, TaskEntry, plan_cells
from .tables import format_table, summarize, write_outputs

RESULTS = "results.jsonl"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl`` (a comparison's or a study's).

    A torn row (an append cut by ``kill -9`` or a full disk: not JSON) is skipped with a warning
    wherever it is, so its cell simply reruns; rows are appended on a fresh line
    (:func:`transferlab.outputs.append_jsonl`), so a torn row never swallows the next one.

    Args:
        path: the log (a missing file reads as no rows).

    Returns:
        The rows in file order.

    Raises:
        DataError: a row without the keys that identify a cell (method, task, train_size, seed, spec).
    """
    from ..outputs import read_jsonl

    p = Path(path)
    rows = read_jsonl(p)
    for n, row in enumerate(rows, 1):
        if not {"method", "task", "train_size", "seed", "spec"} <= set(row):
            raise DataError(f"{p}: row {n}: not a comparison result row (needs method, task, train_size, seed, spec)")
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one result row to a ``results.jsonl`` on a fresh line and fsync it.

    A row is either fully there or cut and ignored by :func:`read_results` (its cell then
    reruns). Paths, numpy/torch scalars and dataclasses in ``row`` are written as JSON values.

    Args:
        path: the log (created with its folder if missing).
        row: one cell's result; it needs ``method``, ``task``, ``train_size``, ``seed`` and
            ``spec`` to be read back.
    """
    from ..outputs import append_jsonl

    append_jsonl(path, row, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


# ------------------------------------------------------------------------------ cell folders
CELLS = "cells"  #: under out_dir: one folder per transformer cell (checkpoints, then the saved model)
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _path_part(name: str) -> str:
    """``name`` as one path component: kept when already safe, else slugged plus a short hash
    (method names such as ``BART w/ Token Masking`` must not nest folders or collide)."""
    if _SAFE.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:48] or "cell"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def cell_dir(out_dir: Path, cell: Cell) -> Path:
    """The folder of a transformer cell: ``out_dir/cells/<method>/<task>/n<size>/seed<seed>``.

    Args:
        out_dir: the comparison's folder.
        cell: the cell.

    Returns:
        The folder (not created).
    """
    return (Path(out_dir) / CELLS / _path_part(cell.method.name) / _path_part(cell.task.name)
            / f"n{cell.size_label}" / f"seed{cell.seed}")


def _spec_file(folder: Path) -> Path:
    # beside the folder, not in it: the folder is a fine-tune output, which admits no foreign files
    return folder.with_name(folder.name + ".spec")


def claim_cell_dir(out_dir: Path, cell: Cell) -> Path:
    """The cell's folder, ready for its run: what a killed run of the same settings left there
    (fine-tuning checkpoints) is kept so the cell resumes; a folder left by other settings
    (the method was edited since) is removed, so its checkpoints are never resumed.

    Args:
        out_dir: the comparison's folder.
        cell: the transformer cell about to run.

    Returns:
        :func:`cell_dir` of the cell, with its settings' fingerprint recorded beside it.
    """
    from ..utils import atomic_write_text

    folder = cell_dir(out_dir, cell)
    spec = _spec_file(folder)
    mine = spec.is_file() and spec.read_text(encoding="utf-8").strip() == cell.spec_hash
    if folder.exists() and not mine:
        shutil.rmtree(folder)
    if not mine:
        atomic_write_text(spec, cell.spec_hash + "\n")
    return folder


def resumes(out_dir: Path, cell: Cell) -> bool:
    """Whether the cell's next run continues from checkpoints a killed run of it left.

    Args:
        out_dir: the comparison's folder.
        cell: a transformer cell.

    Returns:
        True when its folder holds a complete checkpoint written with the cell's settings.
    """
    from ..finetune.loop import CHECKPOINTS
    from ..training.checkpoint import list_checkpoints

    folder = cell_dir(out_dir, cell)
    spec = _spec_file(folder)
    mine = spec.is_file() and spec.read_text(encoding="utf-8").strip() == cell.spec_hash
    return mine and bool(list_checkpoints(folder / CHECKPOINTS))


def drop_cell_dir(out_dir: Path, cell: Cell) -> None:
    """Remove a finished cell's folder and its now empty parents up to ``out_dir/cells``.

    Args:
        out_dir: the comparison's folder.
        cell: the finished cell (its row is already in the results log).
    """
    folder = cell_dir(out_dir, cell)
    shutil.rmtree(folder, ignore_errors=True)
    _spec_file(folder).unlink(missing_ok=True)
    root = Path(out_dir) / CELLS
    for parent in folder.parents:
        if parent == root.parent or not parent.is_dir():
            break
        try:
            parent.rmdir()  # only when empty: other cells' folders stay
        except OSError:
            break


# ------------------------------------------------------------------------------ running
@contextlib.contextmanager
def _cost_env(cost: dict[str, Any]) -> Iterator[None]:
    """Expose the comparison's cost settings to every run's CostTracker via its env variables."""
    names = {"price_per_hour": "TRANSFERLAB_PRICE_PER_HOUR", "grid_intensity": "TRANSFERLAB_GRID_INTENSITY",
             "country_iso_code": "TRANSFERLAB_COUNTRY"}
    old = {v: os.environ.get(v) for v in names.values()}
    try:
        for k, v in names.items():
            if cost.get(k) is not None:
                os.environ[v] = str(cost[k])
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


class _TaskCache:
    """Loads each task once for the baselines (fine-tuning loads its own)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, t: TaskEntry) -> Any:
        if t.name not in self._data:
            from ..finetune.tasks import Columns, load_builtin, load_files

            if t.builtin:
                self._data[t.name] = load_builtin(t.name)
            else:
                f = t.files
                data = load_files(f["train_file"], f.get("validation_file"), f.get("test_file"), f.get("task_type"),
                                  Columns(f.get("text_column"), f.get("pair_column"), f.get("label_column")))
                data.name = t.name
                self._data[t.name] = data
        return self._data[t.name]


def _run_baseline_cell(cell: Cell, tasks: _TaskCache, cost: dict[str, Any]) -> dict[str, Any]:
    """A baseline cell's part of its result row (the shape :func:`run_finetune_cell` returns)."""
    from ..cost import CostConfig, CostTracker

    data = tasks.get(cell.task)
    cc = CostConfig(**{**cost, "peak_flops": 1.0})  # no model FLOPs: MFU is meaningless, skip the benchmark
    tracker = CostTracker(None, kind="baseline", config=cc, dtype="fp32", device="cpu").start()
    try:
        res: BaselineResult = run_baseline(cell.method.baseline, data, cell.train_size, cell.seed, cell.eval_on_test,
                                           cell.method.c_grid, tracker=tracker, vectors=cell.method.vectors,
                                           **cell.method.finetune)  # the rows' validation/test subsets
    finally:
        tracker.stop()  # no-op when run_baseline stopped it after fitting
    report = {k: v for k, v in res.cost.items() if k not in ("flops", "flops_per_token", "flops_source", "peak_flops",
                                                            "peak_source", "mfu", "flops_per_second", "tokens",
                                                            "tokens_per_second", "steps")}
    return {"task_type": data.task_type, "validation": res.validation, "test": res.test,
            "train_seconds": res.train_seconds, "n_train": res.n_train, "params": res.params, "cost": report}


def run_finetune_cell(cell: Cell, out_dir: Path | None) -> dict[str, Any]:
    """Fine-tune one transformer cell: the method's settings on its task, size and seed.

    The default :data:`Runner` of :func:`run_compare`; the study runner calls it too, after
    pointing the cell's method at the model it pre-trained.

    Args:
        cell: the cell (its method must have a ``model``).
        out_dir: the cell's folder (:func:`claim_cell_dir`): its checkpoints while it runs, the
            fine-tuned model at the end; when it holds checkpoints the cell resumes from the
            latest one. None: no checkpoints, nothing kept.

    Returns:
        The cell's part of its result row: ``task_type``, ``validation`` and ``test`` metrics,
        ``train_seconds``, ``n_train``, ``train_tokens``, ``best_epoch``, ``params`` (steps,
        why it stopped) and ``cost`` (the cost tracker's report).
    """
    from ..finetune import FinetuneConfig, finetune
    from ..finetune.loop import CHECKPOINTS

    m, t = cell.method, cell.task
    kw: dict[str, Any] = dict(m.finetune)
    kw["epochs"] = cell_epochs(m, cell.train_size)
    if t.builtin:
        kw["task"] = t.name
    else:
        kw.update({k: v for k, v in t.files.items() if v is not None})
    # checkpoints left by a killed run of this cell (claim_cell_dir removed other settings' ones)
    resume = out_dir is not None and (out_dir / CHECKPOINTS).is_dir()
    cfg = FinetuneConfig(model=m.model or "", from_scratch=m.from_scratch, train_size=cell.train_size,
                         seed=cell.seed, eval_on_test=cell.eval_on_test, out_dir=str(out_dir) if out_dir else None,
                         quiet=True, resume=resume, **kw).validate()
    res = finetune(cfg)
    return {"task_type": str(getattr(res, "task_type", "") or ""), "validation": dict(res.validation),
            "test": dict(res.test), "train_seconds": float(res.train_seconds), "n_train": int(res.n_train),
            "train_tokens": int(getattr(res, "train_tokens", 0) or 0), "best_epoch": getattr(res, "best_epoch", None),
            "params": {"steps": getattr(res, "steps", None), "stopped": getattr(res, "stopped", None)},
            "cost": dict(getattr(res, "cost", {}) or {})}


def cell_epochs(method: MethodSpec, train_size: int | None) -> float:
    """Epochs of a fine-tuning cell: the configured ones, raised so that the cell takes at least
    ``min_steps`` optimiser steps. With 100 labels and batch 16, 3 epochs are 21 steps, too few
    to move a pre-trained model much (few-sample fine-tuning wants more steps, Mosbach et al.,
    2021), while 3000 labels need no more; fixed epochs would handicap the small sizes.

    Args:
        method: the transformer entry (its ``finetune`` epochs / batch size and ``min_steps``).
        train_size: the cell's labelled examples (None: the whole split, epochs as configured).

    Returns:
        Epochs (fractional epochs allowed, as ``finetune`` takes them).
    """
    from ..finetune.config import FinetuneConfig

    epochs = float(method.finetune.get("epochs", FinetuneConfig.epochs))
    if not method.min_steps or train_size is None:
        return epochs
    batch = int(method.finetune.get("batch_size", FinetuneConfig.batch_size))
    return max(epochs, method.min_steps * batch / train_size)


#: signature of a cell runner: (cell, out_dir for its checkpoint or None) -> partial row
Runner = Callable[[Cell, "Path | None"], dict[str, Any]]


@dataclass
class CompareReport:
    """What :func:`run_compare` did."""

    out_dir: Path
    n_cells: int
    n_run: int  #: cells run now
    n_skipped: int  #: cells already in results.jsonl
    failures: list[dict[str, str]]
    summary: list[dict[str, Any]]
    table: str  #: markdown
    files: list[Path]
    n_stale: int = 0  #: rows of an earlier config ignored


def run_compare(
    cfg: CompareConfig,
    progress: bool = True,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    runner: Runner | None = None,
    plots: bool = True,
) -> CompareReport:
    """Run every unfinished cell of the grid, then write tables and plots.

    Args:
        cfg: the comparison (see :func:`load_compare_config`).
        progress: a tqdm bar over cells.
        only: run only these method names (the tables still show every finished cell).
        dry_run: list what would run, run nothing, write nothing.
        runner: how transformer cells run (default: :func:`run_finetune_cell`); it gets the
            cell's folder (:func:`cell_dir`), which holds the cell's fine-tuning checkpoints while
            it runs, so a cell killed midway resumes from them on the next run; the folder is
            dropped once the cell's row is written unless ``save_models``. Tests pass a stand-in.
        plots: write the plots.

    Returns:
        :class:`CompareReport`.

    Raises:
        ConfigError: an unknown method in ``only``; a user mistake inside a cell (a missing
            model folder, a bad file) stops the grid, other exceptions are logged to
            ``out_dir/errors.log`` and the cell is retried on the next run.
    """
    names = {m.name for m in cfg.models}
    if only:
        bad = sorted(set(only) - names)
        if bad:
            raise ConfigError(f"--only: unknown method(s) {', '.join(bad)}; the config has {', '.join(sorted(names))}")
    if not dry_run:
        _check_models(cfg, only)
    results_path = cfg.out_dir / RESULTS
    rows = read_results(results_path)
    done = {(r["method"], r["task"], str(r["train_size"]), int(r["seed"]), r["spec"]) for r in rows}
    cells = plan_cells(cfg)
    todo = [c for c in cells if (*c.key, c.spec_hash) not in done and (not only or c.method.name in only)]
    n_skipped = sum((*c.key, c.spec_hash) in done for c in cells)
    if dry_run:
        summary = summarize(rows, cfg)
        return CompareReport(cfg.out_dir, len(cells), 0, n_skipped, [], summary, format_table(summary, cfg), [],
                             _n_stale(rows, cells))
    tasks = _TaskCache()
    failures: list[dict[str, str]] = []
    bar: Any = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="compare", unit="cell")
    run = runner or run_finetune_cell
    try:
        with _cost_env(cfg.cost):
            for cell in todo:
                label = f"{cell.method.name} / {cell.task.name} / n={cell.size_label} / seed {cell.seed}"
                if bar is not None:
                    bar.set_postfix_str(label)
                t0 = time.perf_counter()
                try:
                    if cell.method.baseline:
                        part = _run_baseline_cell(cell, tasks, cfg.cost)
                    else:
                        ck = claim_cell_dir(cfg.out_dir, cell)
                        part = run(cell, ck)
                except TransferlabError:
                    raise
                except Exception as e:  # a crash in one cell should not lose the others
                    failures.append({"cell": label, "error": f"{type(e).__name__}: {e}"})
                    _log_error(cfg.out_dir, label, traceback.format_exc())
                    if bar is not None:
                        bar.update(1)
                    continue
                task_type = part.pop("task_type", "") or tasks.get(cell.task).task_type
                row = {
                    "method": cell.method.name, "group": cell.method.group, "task": cell.task.name,
                    "task_type": task_type, "train_size": cell.size_label, "seed": cell.seed,
                    "metric": primary_metric(task_type), "spec": cell.spec_hash,
                    "model": cell.method.model or cell.method.baseline, "from_scratch": cell.method.from_scratch,
                    **part, "wall_seconds": time.perf_counter() - t0,
                    "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                append_row(results_path, row)
                rows.append(row)
                if not cell.method.baseline and not cfg.save_models:
                    drop_cell_dir(cfg.out_dir, cell)  # after its row: a kill before it resumes, not reruns
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(rows, cfg)
    table = format_table(summary, cfg)
    files = write_outputs(summary, table, cfg, plots=plots)
    return CompareReport(cfg.out_dir, len(cells), len(todo) - len(failures), n_skipped, failures, summary, table,
                         [results_path, *files], _n_stale(rows, cells))


def _n_stale(rows: list[dict[str, Any]], cells: list[Cell]) -> int:
    current = {(*c.key, c.spec_hash) for c in cells}
    return sum((r["method"], r["task"], str(r["train_size"]), int(r["seed"]), r["spec"]) not in current for r in rows)


def _check_models(cfg: CompareConfig, only: Sequence[str] | None = None) -> None:
    """Fail before the first cell if a transformer entry that will run has no model."""
    from ..config import PRESETS

    for m in cfg.models:
        if m.baseline or m.model is None or (only and m.name not in only):
            continue
        if m.model.startswith("builtin:") or Path(m.model).is_dir():
            continue
        if m.model in PRESETS:
            if not m.from_scratch:
                raise ConfigError(f"{cfg.source}: model {m.name!r}: preset {m.model!r} has no pre-trained weights; "
                                  "set from_scratch: true or point model at a pre-trained folder")
            continue
        raise ConfigError(f"{cfg.source}: model {m.name!r}: {m.model} is not a model folder, builtin:minilm or a preset")


def _log_error(out_dir: Path, label: str, tb: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "errors.log", "a", encoding="utf-8") as f:
        f.write(f"=== {_dt.datetime.now().isoformat(timespec='seconds')} {label}\n{tb}\n")

