"""The comparison file of ``transferlab compare``: a grid of methods x tasks x train sizes x seeds.

A comparison is one YAML (or JSON) file::

    out_dir: runs/compare-imdb          # relative paths: from the working directory
    tasks: [imdb]                       # built-in names or {name, train_file, ...} mappings
    train_sizes: [100, 300, 1000, 3000] # labelled examples; "all" = the whole training split
    seeds: [0, 1, 2]
    finetune: {epochs: 3, lr: 5.0e-5}   # defaults for every transformer entry
    models:
      - majority                        # baselines by name
      - tfidf-logreg
      - {baseline: vectors-logreg, vectors: runs/w2v/model}   # mean word2vec vectors + logistic regression
      - {name: bert-mini, model: runs/bert-mini}
      - {name: bert-mini-scratch, model: runs/bert-mini, from_scratch: true}
      - {name: minilm, model: "builtin:minilm", finetune: {lr: 1.0e-4}}

This module parses and checks it (:func:`load_compare_config`); :mod:`.grid` runs it and
:mod:`.tables` summarises it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .baselines import BASELINES, VECTOR_BASELINES

#: finetune settings a comparison fixes per cell (they may not appear in ``finetune:``)
CELL_FIELDS = ("model", "task", "train_file", "validation_file", "test_file", "text_column", "pair_column",
               "label_column", "task_type", "from_scratch", "train_size", "seed", "out_dir", "eval_on_test")
_TASK_FILE_KEYS = ("train_file", "validation_file", "test_file", "task_type", "text_column", "pair_column", "label_column")
GROUPS = ("pre-trained", "from scratch", "tf-idf", "majority", "lead")
_CADENCE = ("save_every", "keep_last")  #: finetune settings that are not part of a cell's fingerprint


# ------------------------------------------------------------------------------ config
@dataclass
class MethodSpec:
    """One row label of the comparison: a baseline or a transformer fine-tuning recipe."""

    name: str
    baseline: str | None = None  #: majority, lead, tfidf-logreg, tfidf-svm
    model: str | None = None  #: model folder, builtin:minilm, or a preset (with from_scratch)
    from_scratch: bool = False
    #: FinetuneConfig overrides (a baseline: only the validation/test subset sizes, EVAL_SIZES)
    finetune: dict[str, Any] = field(default_factory=dict)
    c_grid: list[float] | None = None  #: TF-IDF and vectors-logreg baselines
    vectors: str | None = None  #: vectors-logreg: a word2vec model folder or word2vec text file
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


#: fine-tuning settings a baseline shares with the transformer rows: the validation and test
#: subsets every row is scored on (fixed subsets, the same for every method and seed)
EVAL_SIZES = ("validation_size", "test_size")


def _eval_sizes(finetune: dict[str, Any]) -> dict[str, Any]:
    return {k: finetune[k] for k in EVAL_SIZES if finetune.get(k) is not None}


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
    """:func:`load_compare_config` for an already-read mapping.

    Args:
        raw: the comparison's mapping (the file's contents).
        base: resolves relative paths (default: the working directory).
        source: what ``raw`` came from, named in every error.
        out_dir: overrides ``raw["out_dir"]``.

    Returns:
        The :class:`CompareConfig` (paths made absolute).

    Raises:
        ConfigError: an unknown key, method, baseline or finetune setting; a bad size or seed
            list; a missing ``out_dir`` (each message names ``source`` and the field).
    """
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
        fixed = sorted(set(d) & set(CELL_FIELDS))
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
            if m in VECTOR_BASELINES:
                raise ConfigError(f"{where}: {ctx}: {m} needs its word vectors: write it as a mapping "
                                  f"{{baseline: {m}, vectors: DIR}} (a word2vec model folder)")
            models.append(MethodSpec(m, baseline=m, finetune=_eval_sizes(defaults)))
            continue
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: {ctx}: expected a baseline name or a mapping, got {m!r}")
        bad = sorted(set(m) - {"name", "model", "baseline", "from_scratch", "finetune", "c_grid", "min_steps",
                               "train_sizes", "vectors"})
        if bad:
            raise ConfigError(f"{where}: {ctx}: unknown key(s) {', '.join(bad)}; known: name, model, baseline, "
                              "from_scratch, finetune, c_grid, min_steps, train_sizes, vectors")
        own_sizes = _sizes(m["train_sizes"], where, f"{ctx}.train_sizes") if "train_sizes" in m else None
        if ("model" in m) == ("baseline" in m):
            raise ConfigError(f"{where}: {ctx}: give exactly one of model (a transformer) or baseline")
        if "baseline" in m:
            if m["baseline"] not in BASELINES:
                raise ConfigError(f"{where}: {ctx}: baseline {m['baseline']!r}: expected one of {', '.join(BASELINES)}")
            grid = m.get("c_grid")
            if grid is not None and (not isinstance(grid, list) or not all(isinstance(c, (int, float)) and c > 0 for c in grid)):
                raise ConfigError(f"{where}: {ctx}: c_grid must be a list of positive numbers")
            vectors = m.get("vectors")
            if (m["baseline"] in VECTOR_BASELINES) != (vectors is not None):
                raise ConfigError(f"{where}: {ctx}: vectors (a word2vec model folder) goes with baseline "
                                  f"{' or '.join(VECTOR_BASELINES)}, and that baseline needs it")
            if vectors is not None and not isinstance(vectors, str):
                raise ConfigError(f"{where}: {ctx}: vectors must be a path, got {vectors!r}")
            models.append(MethodSpec(str(m.get("name") or m["baseline"]), baseline=m["baseline"],
                                     c_grid=[float(c) for c in grid] if grid else None, train_sizes=own_sizes,
                                     vectors=resolve(vectors) if vectors else None, finetune=_eval_sizes(defaults)))
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
        # checkpoint cadence does not change a result (a resumed run is bit-identical): setting
        # it on a finished grid must not rerun it
        ft = {k: v for k, v in m.finetune.items() if k not in _CADENCE}
        spec = {"baseline": m.baseline, "c_grid": m.c_grid, "model": m.model, "from_scratch": m.from_scratch,
                "finetune": ft, "task": self.task.name, "task_files": self.task.files,
                "eval_on_test": self.eval_on_test}
        if m.vectors:  # only when set, so rows written before vectors-logreg keep their hash
            spec["vectors"] = m.vectors
        if m.min_steps and not m.baseline:  # only when it matters, so rows written without it keep their hash
            spec["min_steps"] = m.min_steps
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash((self.key, self.spec_hash))


def plan_cells(cfg: CompareConfig) -> list[Cell]:
    """Every cell of the grid, ordered task, train size, seed, method: the table fills up row by row.

    Args:
        cfg: the comparison.

    Returns:
        The cells (a method with its own ``train_sizes`` only at those sizes).
    """
    return [Cell(m, t, n, s, cfg.eval_on_test) for t in cfg.tasks for n in cfg.train_sizes for s in cfg.seeds
            for m in cfg.models if m.train_sizes is None or n in m.train_sizes]
