"""``transferlab report DIR``: rebuild report.md / report.html of a study or comparison folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand.

    Args:
        subparsers: the ``transferlab`` parser's subcommands (see :func:`transferlab.cli.build_parser`).
    """
    p = subparsers.add_parser(
        "report", help="rebuild report.md and the self-contained report.html of a study or compare folder",
        description="Read DIR/results.jsonl (and DIR/study.json for a study) and write DIR/report.md and "
        "DIR/report.html (tables, learning/loss curves, cost-vs-score plot, commands, versions; one file, "
        "images inlined, no network).",
    )
    p.add_argument("folder", metavar="DIR", help="a `transferlab study` or `transferlab compare` output folder")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    for f in write_report(args.folder):
        print(f"wrote {f}")
    return 0
