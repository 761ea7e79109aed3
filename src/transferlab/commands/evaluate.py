"""`transferlab evaluate`: score a fine-tuned folder on a task split or a labelled file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .finetune import _Help, _columns


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..runtime import DTYPES  # the one --dtype spelling (config.DType)

    e = subparsers.add_parser(
        "evaluate",
        help="score a fine-tuned folder on a task split or a labelled file",
        description="Score a folder written by `transferlab finetune`: prints each metric as `name: value` and "
                    "writes them as JSON. Without --task/--test it uses the task the model was fine-tuned on.",
        formatter_class=_Help,
    )
    e.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder (holds task.json)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--task", metavar="NAME", help="built-in task (default: the model's own)")
    src.add_argument("--test", metavar="FILE", help="labelled file to score")
    e.add_argument("--split", default="test", choices=("test", "validation", "train"), help="split of the task")
    _columns(e)
    e.add_argument("--out", metavar="FILE", help="JSON file for the metrics (default: DIR/eval-<task>-<split>.json)")
    e.add_argument("--force", action="store_true", help="overwrite --out even if it is not an earlier metrics file")
    e.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    e.add_argument("--dtype", default="auto", choices=DTYPES)
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ..finetune import evaluate
    from ..finetune.config import TaskSpec
    from ..outputs import Output, is_metrics_json
    from ..utils import atomic_write_text

    if args.out:  # check before the (long) evaluation, not after
        Output(args.out, file=True, owned=is_metrics_json, force=args.force, inputs=[args.test]).check()
    metrics = evaluate(args.model, task=args.task, test_file=args.test, split=args.split,
                       text_column=args.text_column, pair_column=args.pair_column, label_column=args.label_column,
                       batch_size=args.batch_size, dtype=args.dtype, device=args.device, quiet=args.quiet)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    if args.out:
        out = Path(args.out)
    else:
        name = Path(args.test).stem if args.test else (args.task or TaskSpec.load(args.model).name or "task")
        out = Path(args.model) / f"eval-{name}-{args.split}.json"
    with Output(out, file=True, owned=is_metrics_json, force=args.force, inputs=[args.test]):
        atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
