"""``transferlab compare CONFIG.yaml``: the multi-seed grid of methods, tables and plots."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand.

    Args:
        subparsers: the ``transferlab`` parser's subcommands (see :func:`transferlab.cli.build_parser`).
    """
    p = subparsers.add_parser(
        "compare", help="run a grid of models/baselines x tasks x train sizes x seeds; tables and plots",
        description="Run every unfinished cell of a comparison (methods x tasks x train sizes x seeds), appending "
        "one row per finished cell to OUT/results.jsonl (a rerun skips finished cells, and a fine-tuning cell killed "
        "midway resumes from its checkpoints under OUT/cells/), then write OUT/summary.md "
        "and OUT/summary.csv (mean ± std over seeds with training time and cost) and OUT/plots/ (learning curves, "
        "score vs cost with the Pareto front). The config format is in docs/evaluation.md.",
        epilog="overrides (right after CONFIG, before the flags; the grammar of `transferlab finetune`):\n"
        "  finetune.KEY=VALUE  a FinetuneConfig field for every transformer entry, beating the file's finetune:\n"
        "                      sections (global and per model); changed settings make their cells rerun\n\n"
        "examples:\n  transferlab compare examples/compare_quick.yaml\n"
        "  transferlab compare examples/compare_quick.yaml finetune.lr=1e-4 finetune.epochs=2\n"
        "  transferlab compare examples/compare_imdb.yaml --only tfidf-logreg --only majority\n"
        "  transferlab compare examples/compare_imdb.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG", help="comparison file (.yaml or .json)")
    p.add_argument("--out-dir", metavar="DIR", help="override the config's out_dir")
    p.add_argument("--only", action="append", metavar="METHOD",
                   help="run only this method (repeatable); the tables still include every finished cell")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are finished; run nothing")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="write into out_dir even if it holds files that are not an earlier comparison's")
    p.add_argument("overrides", nargs="*", metavar="finetune.KEY=VALUE",
                   help="finetune settings for every transformer entry, e.g. finetune.lr=1e-4 finetune.epochs=2")
    p.set_defaults(func=_compare)


def apply_finetune_overrides(raw: dict, items: list[str]) -> dict:
    """``raw`` (a comparison file's mapping) with ``finetune.KEY=VALUE`` items set in its global
    ``finetune:`` section and in every transformer entry's own one (an override beats both).
    Values are parsed and range-checked as FinetuneConfig fields before anything runs.

    Args:
        raw: the comparison file's mapping (not changed).
        items: ``finetune.KEY=VALUE`` strings.

    Returns:
        A copy of ``raw`` with the overrides applied (``raw`` itself without items).

    Raises:
        ConfigError: an unknown key or a bad value, or a key the comparison sets per cell.
    """
    from ..config import apply_overrides
    from ..errors import ConfigError
    from ..experiments.config import CELL_FIELDS
    from ..finetune import FinetuneConfig
    from .finetune import finetune_overrides

    parsed = finetune_overrides(items)
    if not parsed:
        return raw
    names = [k.split(".", 1)[1] for k in parsed]
    fixed = sorted(set(names) & set(CELL_FIELDS))
    if fixed:
        raise ConfigError(f"override finetune.{fixed[0]}: set per cell by the comparison; use the config's "
                          "tasks/train_sizes/seeds/models entries instead")
    probe = apply_overrides(FinetuneConfig(model="builtin:minilm", task="imdb"), parsed, prefix="finetune")
    values = {n: getattr(probe, n) for n in names}
    values = {n: (v.value if hasattr(v, "value") else v) for n, v in values.items()}  # enums as plain strings
    raw = dict(raw)
    if raw.get("finetune") is not None and not isinstance(raw["finetune"], dict):
        return raw  # the config's own check names this mistake
    raw["finetune"] = {**(raw.get("finetune") or {}), **values}
    models = raw.get("models")
    if isinstance(models, list):
        raw["models"] = [({**m, "finetune": {**m["finetune"], **values}}
                          if isinstance(m, dict) and isinstance(m.get("finetune"), dict) else m) for m in models]
    return raw


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_config_file
    from ..experiments.config import load_compare_config, parse_compare_config, plan_cells
    from ..experiments.grid import read_results, resumes, run_compare
    from ..outputs import Output

    if args.overrides:
        raw = apply_finetune_overrides(load_config_file(args.config), args.overrides)
        cfg = parse_compare_config(raw, Path.cwd(), str(args.config), args.out_dir)
    else:
        cfg = load_compare_config(args.config, args.out_dir)
    if args.dry_run:
        return _report(args, cfg, run_compare, plan_cells, read_results, resumes)
    # one writer per out_dir (two would run the same cells and append the same rows twice)
    with Output(cfg.out_dir, "compare", force=args.force, flag="out_dir", inputs=[args.config]):
        return _report(args, cfg, run_compare, plan_cells, read_results, resumes)


def _report(args: argparse.Namespace, cfg, run_compare, plan_cells, read_results, resumes) -> int:
    if args.dry_run:
        rows = read_results(cfg.out_dir / "results.jsonl")
        done = {(r["method"], r["task"], str(r["train_size"]), int(r["seed"]), r["spec"]) for r in rows}
        cells = plan_cells(cfg)
        for c in cells:
            if args.only and c.method.name not in args.only:
                continue
            # part: a killed run of the cell left checkpoints, the next run continues from them
            state = "done" if (*c.key, c.spec_hash) in done else "part" if (
                not c.method.baseline and resumes(cfg.out_dir, c)) else "todo"
            print(f"{state}  {c.method.name:<24} {c.task.name:<16} n={c.size_label:<6} seed {c.seed}")
    rep = run_compare(cfg, progress=not args.quiet, only=args.only, dry_run=args.dry_run, plots=not args.no_plots)
    print(f"\n{rep.n_cells} cells: {rep.n_skipped} already finished, {rep.n_run} run now"
          + (f", {len(rep.failures)} failed (see {rep.out_dir / 'errors.log'})" if rep.failures else "")
          + (f"; {rep.n_stale} rows from earlier settings ignored" if rep.n_stale else ""))
    print()
    print(rep.table)
    for f in rep.files:
        print(f"wrote {f}")
    for fail in rep.failures:
        print(f"failed: {fail['cell']}: {fail['error']}")
    return 1 if rep.failures else 0
