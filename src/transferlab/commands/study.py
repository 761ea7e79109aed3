"""``transferlab study NAME``: rerun one of the lecture's tables in one shared setting."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand.

    Args:
        subparsers: the ``transferlab`` parser's subcommands (see :func:`transferlab.cli.build_parser`).
    """
    p = subparsers.add_parser(
        "study", help="rerun a paper's table (bert-size, objectives, nsp, modifications, ulmfit-curve)",
        description="Run one study (a paper's table: rows pre-trained and fine-tuned in one shared setting: "
        "tokenizer, data, pre-training budget, fine-tuning recipe, seeds), resumable cell by cell, writing "
        "OUT/results.jsonl, OUT/report.md and the self-contained OUT/report.html. Studies and their budgets are "
        "in docs/studies.md.",
        epilog="examples:\n  transferlab study --list\n  transferlab study nsp --quick --out runs/study-nsp-quick\n"
        "  transferlab study objectives --out runs/study-objectives   # ~1 hour on 2 cores",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the study (see --list)")
    p.add_argument("--list", action="store_true", help="name the studies and exit")
    p.add_argument("--out", metavar="DIR", help="results folder (a rerun resumes it)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="pre-training minutes per row and seed (default: the study's; --quick: a few steps)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default: the study's, see --list; --quick: 1)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="task columns instead of the study's")
    p.add_argument("--quick", action="store_true", help="tiny models, few steps, tiny data (minutes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..experiments.study import STUDIES, get_study, make_setting, run_study

    if args.list:
        for s in STUDIES.values():
            print(f"{s.name:<14} {s.title} ({s.paper}); {len(s.rows)} rows, tasks {', '.join(s.tasks)}; "
                  f"{s.budget_minutes:g} min pre-training per row and seed, {s.seeds} seed(s)")
        return 0
    if not args.name:
        raise ConfigError("study: name a study (see `transferlab study --list`)")
    study = get_study(args.name)
    if not args.out:
        raise ConfigError("study: --out DIR is required (where results and the report go)")
    setting = make_setting(study, quick=args.quick, budget_minutes=args.budget_minutes, seeds=args.seeds,
                           tasks=args.tasks)
    cmd = "transferlab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["study"] else \
        f"transferlab study {args.name} --out {args.out}"
    rep = run_study(study, setting, args.out, progress=not args.quiet, command=cmd)
    print(f"\n{rep.n_cells} cells: {rep.n_skipped} already finished, {rep.n_run} run now"
          + (f", {len(rep.failures)} failed (see {rep.out_dir / 'errors.log'})" if rep.failures else ""))
    md = rep.out_dir / "summary.md"
    if md.exists():
        print(md.read_text(encoding="utf-8"))
    for f in rep.files:
        print(f"wrote {f}")
    for fail in rep.failures:
        print(f"failed: {fail['cell']}: {fail['error']}")
    return 1 if rep.failures else 0
