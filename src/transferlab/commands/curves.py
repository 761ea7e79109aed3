"""``transferlab curves``: the validation loss of several pre-training runs in one plot and table."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curves", help="compare pre-training runs: validation loss curves in one plot, and a table",
        description="Read the metrics.jsonl of each run folder (written by `transferlab pretrain --out`), "
        "draw every run's validation loss against tokens, steps or minutes in one PNG, and print each "
        "run's last evaluation as a markdown table (with its distance to each --reference line).",
        epilog="example: transferlab curves runs/bert runs/bert-rope --label learned --label rotary "
        "--reference unigram=6.739 --out curves.png",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or metrics.jsonl files)")
    p.add_argument("--label", action="append", default=[], metavar="NAME",
                   help="legend label for each run, in order (repeatable; default: the folder name)")
    p.add_argument("--reference", action="append", default=[], metavar="NAME=LOSS",
                   help="a horizontal reference line, e.g. unigram=6.739 (repeatable)")
    p.add_argument("--x", choices=["tokens", "step", "minutes"], default="tokens", help="x axis (default: %(default)s)")
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--out", metavar="PNG", help="where to write the plot (default: no plot, table only)")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not an earlier plot")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..outputs import Output, is_matplotlib_png
    from ..training.curves import plot_runs, read_run, summary_table

    out = Output(args.out, file=True, owned=is_matplotlib_png, force=args.force, inputs=args.runs) if args.out else None
    if out is not None:
        out.check()

    if args.label and len(args.label) != len(args.runs):
        raise ConfigError(f"--label: got {len(args.label)} label(s) for {len(args.runs)} run(s); give one per run or none")
    refs: dict[str, float] = {}
    for r in args.reference:
        name, sep, value = r.partition("=")
        try:
            refs[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--reference {r!r}: expected NAME=LOSS, e.g. unigram=6.739") from None
        if not sep or not name.strip() or refs[name.strip()] != refs[name.strip()] or abs(refs[name.strip()]) == float("inf"):
            raise ConfigError(f"--reference {r!r}: expected NAME=LOSS, e.g. unigram=6.739")
    curves = [read_run(run, label) for run, label in zip(args.runs, args.label or [None] * len(args.runs))]
    print(summary_table(curves, refs))
    if out is not None:
        with out:
            png = plot_runs(curves, args.out, x=args.x, references=refs, title=args.title)
        print(f"plot: {png}")
    return 0
