"""``transferlab curves``: the validation loss of several pre-training runs in one plot and table.

Its settings are the typed :class:`CurvesSettings`, in the grammar of every command: generated flags,
``--config FILE.yaml`` and ``key=value`` overrides (:func:`transferlab.cli.add_config_arguments`); the
run folders are positional and the overrides follow them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

from ..errors import ConfigError


X_AXES = ("tokens", "step", "minutes")


@dataclass
class CurvesSettings:
    """What ``curves`` reads: the runs, how to label and plot them, where the plot goes."""

    runs: list[str] = field(default_factory=list, metadata={"cli": False})
    """run folders (or metrics.jsonl files)"""
    label: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """legend label for each run, in order (repeatable; default: the folder name)"""
    reference: list[str] = field(default_factory=list, metadata={"metavar": "NAME=LOSS"})
    """a horizontal reference line, e.g. unigram=6.739 (repeatable)"""
    x: str = field(default="tokens", metadata={"choices": X_AXES})
    """x axis"""
    title: str = ""
    """plot title"""
    out: str | None = field(default=None, metadata={"metavar": "PNG"})
    """where to write the plot (default: no plot, table only)"""
    force: bool = False
    """overwrite --out even if it is not an earlier plot"""

    def validate(self) -> CurvesSettings:
        """ConfigError unless a run is named, the labels match the runs and ``x`` is an axis."""
        if self.x not in X_AXES:  # a --config value or an override (argparse checks the flag)
            raise ConfigError(f"curves.x: expected one of {', '.join(X_AXES)}, got {self.x!r}")
        if not self.runs:
            raise ConfigError("curves: give at least one RUN folder (or runs: in --config)")
        if self.label and len(self.label) != len(self.runs):
            raise ConfigError(f"--label: got {len(self.label)} label(s) for {len(self.runs)} run(s); "
                              "give one per run or none")
        return self


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    p = subparsers.add_parser(
        "curves", help="compare pre-training runs: validation loss curves in one plot, and a table",
        description="Read the metrics.jsonl of each run folder (written by `transferlab pretrain --out`), "
        "draw every run's validation loss against tokens, steps or minutes in one PNG, and print each "
        "run's last evaluation as a markdown table (with its distance to each --reference line).",
        epilog=GRAMMAR_EPILOG + "\n\nexample:\n  transferlab curves runs/bert runs/bert-rope --label learned "
        "--label rotary --reference unigram=6.739 --out curves.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run folders (or metrics.jsonl files), then key=value overrides, e.g. x=step")
    add_config_arguments(p, CurvesSettings, overrides=False)
    p.set_defaults(func=_run)


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """``(runs, overrides)``: an item ``KEY=VALUE`` (or ``curves.KEY=VALUE``) whose KEY is a setting
    is an override, anything else a run folder."""
    names = {f.name for f in dataclasses.fields(CurvesSettings)}
    runs, overrides = [], []
    for item in items:
        m = re.match(r"^(?:curves\.)?([a-z_]+)=", item)
        (overrides if m and m.group(1) in names else runs).append(item)
    return runs, overrides


def _run(ns: argparse.Namespace) -> int:
    from ..cli import config_from_args
    from ..outputs import Output, is_matplotlib_png
    from ..training.curves import plot_runs, read_run, summary_table

    runs, ns.overrides = _split_overrides(ns.runs or [])
    ns.runs = runs or None  # none given: the --config file's runs
    args = config_from_args(ns, CurvesSettings, "curves")
    out = Output(args.out, file=True, owned=is_matplotlib_png, force=args.force, inputs=args.runs) if args.out else None
    if out is not None:
        out.check()

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
