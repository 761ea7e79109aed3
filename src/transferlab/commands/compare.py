"""``transferlab compare CONFIG.yaml``: the multi-seed grid of methods, tables and plots."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="run a grid of models/baselines x tasks x train sizes x seeds; tables and plots",
        description="Run every unfinished cell of a comparison (methods x tasks x train sizes x seeds), appending "
        "one row per finished cell to OUT/results.jsonl (a rerun skips finished cells), then write OUT/summary.md "
        "and OUT/summary.csv (mean ± std over seeds with training time and cost) and OUT/plots/ (learning curves, "
        "score vs cost with the Pareto front). The config format is in docs/evaluation.md.",
        epilog="examples:\n  transferlab compare examples/compare_quick.yaml\n"
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
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from ..evaluation.compare import load_compare_config, plan_cells, read_results, run_compare

    from ..outputs import Output

    cfg = load_compare_config(args.config, args.out_dir)
    if args.dry_run:
        return _report(args, cfg, run_compare, plan_cells, read_results)
    # one writer per out_dir (two would run the same cells and append the same rows twice)
    with Output(cfg.out_dir, "compare", force=args.force, flag="out_dir", inputs=[args.config]):
        return _report(args, cfg, run_compare, plan_cells, read_results)


def _report(args: argparse.Namespace, cfg, run_compare, plan_cells, read_results) -> int:
    if args.dry_run:
        rows = read_results(cfg.out_dir / "results.jsonl")
        done = {(r["method"], r["task"], str(r["train_size"]), int(r["seed"]), r["spec"]) for r in rows}
        cells = plan_cells(cfg)
        for c in cells:
            if args.only and c.method.name not in args.only:
                continue
            state = "done" if (*c.key, c.spec_hash) in done else "todo"
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
