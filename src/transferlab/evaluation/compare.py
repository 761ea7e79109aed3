"""``transferlab compare``: a resumable grid of methods x tasks x train sizes x seeds.

A comparison is one YAML (or JSON) file::

    out_dir: runs/compare-imdb          # relative paths: from the working directory
    tasks: [imdb]                       # built-in names or {name, train_file, ...} mappings
    train_sizes: [100, 300, 1000, 3000] # labelled examples; "all" = the whole training split
    seeds: [0, 1, 2]
    finetune: {epochs: 3, lr: 5.0e-5}   # defaults for every transformer entry
    models:
      - majority                        # baselines by name
      - tfidf-logreg
      - {name: bert-mini, model: runs/bert-mini}
      - {name: bert-mini-scratch, model: runs/bert-mini, from_scratch: true}
      - {name: minilm, model: "builtin:minilm", finetune: {lr: 1.0e-4}}

Each finished cell appends one JSON row to ``out_dir/results.jsonl``; a rerun skips every cell
whose row is already there with the same settings (a cell's settings are hashed into its row,
so editing a method's settings reruns that method and ignores its old rows). After the grid,
``summary.md`` / ``summary.csv`` hold mean ± sample std over seeds per (task, train size, method)
with training time and cost columns, and ``plots/`` the learning curves and metric-vs-cost
Pareto plots.

Every method gets the same labelled examples for a given seed and size: baselines and
fine-tuning both draw them with :func:`transferlab.finetune.tasks.subsample`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError, DataError, TransferlabError
from .baselines import BASELINES, BaselineResult, run_baseline
from .metrics import higher_is_better, mean_std, primary_metric

RESULTS = "results.jsonl"
#: finetune settings a comparison fixes per cell (they may not appear in ``finetune:``)
_CELL_FIELDS = ("model", "task", "train_file", "validation_file", "test_file", "text_column", "pair_column",
                "label_column", "task_type", "from_scratch", "train_size", "seed", "out_dir", "eval_on_test")
_TASK_FILE_KEYS = ("train_file", "validation_file", "test_file", "task_type", "text_column", "pair_column", "label_column")
#: cost columns shown in tables, in this order, when any row has them
COST_COLUMNS = (("energy_kwh", "energy (kWh)"), ("co2e_kg", "CO2e (kg)"), ("price_usd", "price ($)"),
                ("flops", "FLOPs"))
GROUPS = ("pre-trained", "from scratch", "tf-idf", "majority", "lead")


# ------------------------------------------------------------------------------ config
@dataclass
class MethodSpec:
    """One row label of the comparison: a baseline or a transformer fine-tuning recipe."""

    name: str
    baseline: str | None = None  #: majority, lead, tfidf-logreg, tfidf-svm
    model: str | None = None  #: model folder, builtin:minilm, or a preset (with from_scratch)
    from_scratch: bool = False
    finetune: dict[str, Any] = field(default_factory=dict)  #: FinetuneConfig overrides
    c_grid: list[float] | None = None  #: TF-IDF baselines
    min_steps: int = 0  #: fine-tuning: at least this many optimiser steps per cell (more epochs for small sizes)
    #: this method only at these train sizes (a subset of the grid's; None = all of them): an
    #: expensive model can sit out the largest sizes of a learning curve
    train_sizes: list[int | None] | None = None

    @property
    def group(self) -> str:
        """Plot/legend family: pre-trained, from scratch, tf-idf, majority or lead."""
        if self.baseline:
            return "tf-idf" if self.baseline.startswith("tfidf") else self.baseline
        return "from scratch" if self.from_scratch else "pre-trained"


@dataclass
class TaskEntry:
    """A built-in task by name, or user files (paths resolved against the config's folder)."""

    name: str
    files: dict[str, Any] = field(default_factory=dict)  #: train_file, validation_file, ... columns

    @property
    def builtin(self) -> bool:
        return not self.files


@dataclass
class CompareConfig:
    """A parsed comparison file (see the module docstring)."""

    out_dir: Path
    tasks: list[TaskEntry]
    models: list[MethodSpec]
    train_sizes: list[int | None]  #: None = the whole training split ("all")
    seeds: list[int]
    eval_on_test: bool = True
    finetune: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)  #: CostConfig fields
    cost_axis: str = "auto"  #: x axis of the cost plot: auto, train_seconds, energy_kwh, price_usd, flops
    save_models: bool = False  #: keep each fine-tuned cell's checkpoint under out_dir/cells/
    source: str = ""  #: the file it was read from


_TOP_KEYS = {"out_dir", "tasks", "models", "train_sizes", "seeds", "eval_on_test", "finetune", "min_steps", "cost",
             "cost_axis", "save_models", "name", "description"}


def load_compare_config(path: str | Path, out_dir: str | Path | None = None) -> CompareConfig:
    """Read and check a comparison file; every mistake raises :class:`ConfigError` naming it.

    Relative paths in the file (``out_dir``, model folders, task files) are read from the
    working directory, like every other transferlab path, so ``runs/bert/model`` means the same
    in a config as on the command line.

    Args:
        path: the YAML/JSON file.
        out_dir: overrides the file's ``out_dir``.

    Returns:
        The :class:`CompareConfig` (paths made absolute).
    """
    from ..config import load_config_file

    p = Path(path)
    raw = load_config_file(p)
    return parse_compare_config(raw, Path.cwd(), str(p), out_dir)


def parse_compare_config(raw: dict[str, Any], base: Path | None = None, source: str = "compare config",
                         out_dir: str | Path | None = None) -> CompareConfig:
    """:func:`load_compare_config` for an already-read mapping (``base``, default the working
    directory, resolves relative paths)."""
    from ..finetune.config import FinetuneConfig

    where = source
    base = Path.cwd() if base is None else base
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("tasks", "models"):
        if not raw.get(key):
            raise ConfigError(f"{where}: {key}: expected a non-empty list")
        if not isinstance(raw[key], list):
            raise ConfigError(f"{where}: {key}: expected a list, got {type(raw[key]).__name__}")

    def resolve(p: Any) -> str:
        q = Path(str(p)).expanduser()
        return str(q if q.is_absolute() else base / q)

    # ---- tasks
    tasks: list[TaskEntry] = []
    for i, t in enumerate(raw["tasks"]):
        if isinstance(t, str):
            tasks.append(TaskEntry(t))
        elif isinstance(t, dict):
            bad = sorted(set(t) - {"name", *_TASK_FILE_KEYS})
            if bad:
                raise ConfigError(f"{where}: tasks[{i}]: unknown key(s) {', '.join(bad)}; known: name, {', '.join(_TASK_FILE_KEYS)}")
            if "train_file" not in t:
                raise ConfigError(f"{where}: tasks[{i}]: a task mapping needs train_file (or give a built-in task name as a string)")
            files = {k: (resolve(v) if k.endswith("_file") and v is not None else v) for k, v in t.items() if k != "name"}
            tasks.append(TaskEntry(str(t.get("name") or Path(files["train_file"]).stem), files))
        else:
            raise ConfigError(f"{where}: tasks[{i}]: expected a task name or a mapping, got {t!r}")
    _unique([t.name for t in tasks], where, "tasks")

    # ---- finetune defaults and methods
    ft_fields = {f.name for f in dataclasses.fields(FinetuneConfig)}

    def check_ft(d: Any, ctx: str) -> dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: {ctx}: expected a mapping of finetune settings")
        bad = sorted(set(d) - ft_fields)
        if bad:
            raise ConfigError(f"{where}: {ctx}: unknown finetune setting(s) {', '.join(bad)}; "
                              f"see `transferlab finetune --help`")
        fixed = sorted(set(d) & set(_CELL_FIELDS))
        if fixed:
            raise ConfigError(f"{where}: {ctx}: {', '.join(fixed)} are set per cell by the comparison; "
                              "use tasks/train_sizes/seeds/models entries instead")
        return dict(d)

    defaults = check_ft(raw.get("finetune"), "finetune")
    models: list[MethodSpec] = []
    for i, m in enumerate(raw["models"]):
        ctx = f"models[{i}]"
        if isinstance(m, str):
            if m not in BASELINES:
                raise ConfigError(f"{where}: {ctx}: {m!r} is not a baseline ({', '.join(BASELINES)}); "
                                  "a transformer entry is a mapping {name, model, from_scratch, finetune}")
            models.append(MethodSpec(m, baseline=m))
            continue
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: {ctx}: expected a baseline name or a mapping, got {m!r}")
        bad = sorted(set(m) - {"name", "model", "baseline", "from_scratch", "finetune", "c_grid", "min_steps",
                               "train_sizes"})
        if bad:
            raise ConfigError(f"{where}: {ctx}: unknown key(s) {', '.join(bad)}; known: name, model, baseline, "
                              "from_scratch, finetune, c_grid, min_steps, train_sizes")
        own_sizes = _sizes(m["train_sizes"], where, f"{ctx}.train_sizes") if "train_sizes" in m else None
        if ("model" in m) == ("baseline" in m):
            raise ConfigError(f"{where}: {ctx}: give exactly one of model (a transformer) or baseline")
        if "baseline" in m:
            if m["baseline"] not in BASELINES:
                raise ConfigError(f"{where}: {ctx}: baseline {m['baseline']!r}: expected one of {', '.join(BASELINES)}")
            grid = m.get("c_grid")
            if grid is not None and (not isinstance(grid, list) or not all(isinstance(c, (int, float)) and c > 0 for c in grid)):
                raise ConfigError(f"{where}: {ctx}: c_grid must be a list of positive numbers")
            models.append(MethodSpec(str(m.get("name") or m["baseline"]), baseline=m["baseline"],
                                     c_grid=[float(c) for c in grid] if grid else None, train_sizes=own_sizes))
            continue
        model = str(m["model"])
        # a preset name (bert-mini) stays a name unless a folder of that name exists
        if not model.startswith("builtin:") and ("/" in model or Path(base, model).expanduser().exists()):
            model = resolve(model)
        if not isinstance(m.get("from_scratch", False), bool):
            raise ConfigError(f"{where}: {ctx}: from_scratch must be true or false")
        models.append(MethodSpec(str(m.get("name") or Path(model).name), model=model,
                                 from_scratch=bool(m.get("from_scratch", False)),
                                 finetune={**defaults, **check_ft(m.get("finetune"), f"{ctx}.finetune")},
                                 min_steps=_min_steps(m.get("min_steps", raw.get("min_steps", 0)), where, ctx),
                                 train_sizes=own_sizes))
    _unique([m.name for m in models], where, "models (names)")

    # ---- grid
    sizes = _sizes(raw.get("train_sizes", ["all"]), where, "train_sizes")
    for m in models:
        extra = [s for s in (m.train_sizes or []) if s not in sizes]
        if extra:
            raise ConfigError(f"{where}: models: {m.name}: train_sizes {', '.join('all' if s is None else str(s) for s in extra)} "
                              "not in the grid's train_sizes")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: seeds: expected a non-empty list of integers, got {seeds!r}")
    _unique([str(s) for s in seeds], where, "seeds")
    _unique([str(s) for s in sizes], where, "train_sizes")
    cost = raw.get("cost") or {}
    from ..cost import CostConfig

    cost_fields = {f.name for f in dataclasses.fields(CostConfig)}
    if not isinstance(cost, dict) or set(cost) - cost_fields:
        raise ConfigError(f"{where}: cost: expected a mapping with keys among {', '.join(sorted(cost_fields))}")
    axis = raw.get("cost_axis", "auto")
    if axis not in ("auto", "train_seconds", "energy_kwh", "co2e_kg", "price_usd", "flops"):
        raise ConfigError(f"{where}: cost_axis: expected auto, train_seconds, energy_kwh, co2e_kg, price_usd or flops, got {axis!r}")
    od = out_dir if out_dir is not None else raw.get("out_dir")
    if not od:
        raise ConfigError(f"{where}: out_dir: where results go is required (or pass --out-dir)")
    od_path = Path(resolve(od))
    for key in ("eval_on_test", "save_models"):
        if key in raw and not isinstance(raw[key], bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {raw[key]!r}")
    return CompareConfig(od_path, tasks, models, sizes, seeds, bool(raw.get("eval_on_test", True)), defaults,
                         dict(cost), axis, bool(raw.get("save_models", False)), source)


def _sizes(raw: Any, where: str, ctx: str) -> list[int | None]:
    """Train sizes: positive integers or ``all`` (None = the whole training split)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: {ctx}: expected a non-empty list of positive integers or 'all', got {raw!r}")
    sizes: list[int | None] = []
    for s in raw:
        if s in ("all", None):
            sizes.append(None)
        elif isinstance(s, int) and not isinstance(s, bool) and s > 0:
            sizes.append(s)
        else:
            raise ConfigError(f"{where}: {ctx}: {s!r} is not a positive integer or 'all'")
    return sizes


def _min_steps(v: Any, where: str, ctx: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"{where}: {ctx}: min_steps must be a non-negative integer, got {v!r}")
    return v


def _unique(names: Sequence[str], where: str, what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{where}: {what}: {n!r} appears twice")
        seen.add(n)


# ------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    method: MethodSpec
    task: TaskEntry
    train_size: int | None
    seed: int
    eval_on_test: bool

    @property
    def size_label(self) -> str:
        return "all" if self.train_size is None else str(self.train_size)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.method.name, self.task.name, self.size_label, self.seed)

    @property
    def spec_hash(self) -> str:
        """A fingerprint of everything that determines the cell's result except size and seed."""
        m = self.method
        spec = {"baseline": m.baseline, "c_grid": m.c_grid, "model": m.model, "from_scratch": m.from_scratch,
                "finetune": m.finetune, "task": self.task.name, "task_files": self.task.files,
                "eval_on_test": self.eval_on_test}
        if m.min_steps and not m.baseline:  # only when it matters, so rows written without it keep their hash
            spec["min_steps"] = m.min_steps
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash((self.key, self.spec_hash))


def plan_cells(cfg: CompareConfig) -> list[Cell]:
    """Every cell, ordered task, train size, seed, method: the table fills up row by row."""
    return [Cell(m, t, n, s, cfg.eval_on_test) for t in cfg.tasks for n in cfg.train_sizes for s in cfg.seeds
            for m in cfg.models if m.train_sizes is None or n in m.train_sizes]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl``.

    A torn row (an append cut by ``kill -9`` or a full disk: not JSON) is skipped with a warning
    wherever it is, so its cell simply reruns; rows are appended on a fresh line
    (:func:`transferlab.outputs.append_jsonl`), so a torn row never swallows the next one.
    """
    from ..outputs import read_jsonl

    p = Path(path)
    rows = read_jsonl(p)
    for n, row in enumerate(rows, 1):
        if not {"method", "task", "train_size", "seed", "spec"} <= set(row):
            raise DataError(f"{p}: row {n}: not a comparison result row (needs method, task, train_size, seed, spec)")
    return rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row on a fresh line and fsync: a row is either fully there or cut and ignored."""
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
    from ..cost import CostConfig, CostTracker

    data = tasks.get(cell.task)
    cc = CostConfig(**{**cost, "peak_flops": 1.0})  # no model FLOPs: MFU is meaningless, skip the benchmark
    tracker = CostTracker(None, kind="baseline", config=cc, dtype="fp32", device="cpu").start()
    try:
        res: BaselineResult = run_baseline(cell.method.baseline, data, cell.train_size, cell.seed, cell.eval_on_test,
                                           cell.method.c_grid, tracker=tracker)
    finally:
        tracker.stop()  # no-op when run_baseline stopped it after fitting
    report = {k: v for k, v in res.cost.items() if k not in ("flops", "flops_per_token", "flops_source", "peak_flops",
                                                            "peak_source", "mfu", "flops_per_second", "tokens",
                                                            "tokens_per_second", "steps")}
    return {"task_type": data.task_type, "validation": res.validation, "test": res.test,
            "train_seconds": res.train_seconds, "n_train": res.n_train, "params": res.params, "cost": report}


def _run_finetune_cell(cell: Cell, out_dir: Path | None) -> dict[str, Any]:
    from ..finetune import FinetuneConfig, finetune

    m, t = cell.method, cell.task
    kw: dict[str, Any] = dict(m.finetune)
    kw["epochs"] = cell_epochs(m, cell.train_size)
    if t.builtin:
        kw["task"] = t.name
    else:
        kw.update({k: v for k, v in t.files.items() if v is not None})
    cfg = FinetuneConfig(model=m.model or "", from_scratch=m.from_scratch, train_size=cell.train_size,
                         seed=cell.seed, eval_on_test=cell.eval_on_test, out_dir=str(out_dir) if out_dir else None,
                         quiet=True, **kw).validate()
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
    2021), while 3000 labels need no more; fixed epochs would handicap the small sizes."""
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
        runner: how transformer cells run (default: :func:`transferlab.finetune.finetune`);
            tests pass a stand-in.
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
    run = runner or _run_finetune_cell
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
                        ck = (cfg.out_dir / "cells" / cell.method.name / cell.task.name / f"n{cell.size_label}"
                              / f"seed{cell.seed}") if cfg.save_models else None
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
                _append_row(results_path, row)
                rows.append(row)
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


# ------------------------------------------------------------------------------ tables
def summarize(rows: list[dict[str, Any]], cfg: CompareConfig) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (task, train size, method), current settings only.

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
    """A markdown table: one row per (task, train size, method), mean ± std over n seeds."""
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
    """The summary as CSV with separate mean / std columns for every metric."""
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
    """Write summary.md, summary.csv and the plots (atomically); return the files."""
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
    """The best method per (task, train size) by mean score (used to bold the winner)."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for g in summary:
        k = (g["task"], g["train_size"])
        s = g["mean"] if higher_is_better(g["metric"]) else -g["mean"]
        if k not in best or s > best[k][0]:
            best[k] = (s, g["method"])
    return {k: v[1] for k, v in best.items()}
