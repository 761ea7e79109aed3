"""``transferlab demo``: the end-to-end main job (see :mod:`transferlab.demo`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand.

    Args:
        subparsers: the ``transferlab`` parser's subcommands (see :func:`transferlab.cli.build_parser`).
    """
    p = subparsers.add_parser(
        "demo", help="the whole paradigm end to end on built-in data (about 15 min; --quick about 2)",
        description="Train a WordPiece tokenizer on the built-in corpus, prepare shards, pre-train bert-mini "
                    "with MLM, then on imdb compare it with the same architecture from scratch, the real "
                    "all-MiniLM-L6-v2 checkpoint, TF-IDF + logistic regression and the majority class over "
                    "several seeds; print one table (accuracy mean ± std, training time, energy, CO2e, price) "
                    "and write summary.md and plots into the run directory. Rerunning reuses finished steps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=None, help="run directory (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a ~2 minute version on a corpus sample with small sizes")
    p.add_argument("--pretrain-minutes", type=float, default=None, help="pre-training budget (default 4, quick 0.5)")
    p.add_argument("--train-sizes", default=None, help="comma-separated labelled set sizes (default 200,500)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--no-minilm", action="store_true", help="leave out the all-MiniLM-L6-v2 checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="use --out even if it holds files that are not a demo's")
    p.set_defaults(func=_run)


def _ints(text: str, flag: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig.quick_config() if args.quick else DemoConfig()
    if args.out:
        cfg.out_dir = args.out
    if args.pretrain_minutes is not None:
        cfg.pretrain_minutes = args.pretrain_minutes
    if args.train_sizes:
        cfg.train_sizes = _ints(args.train_sizes, "--train-sizes")
    if args.seeds:
        cfg.seeds = _ints(args.seeds, "--seeds")
    if args.no_minilm:
        cfg.minilm = False
    from ..outputs import Output

    with Output(cfg.out_dir, "demo", force=args.force):
        run_demo(cfg, progress=not args.no_progress)
    return 0
