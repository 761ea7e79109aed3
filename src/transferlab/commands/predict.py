"""`transferlab predict`: predict with a fine-tuned folder on a file or on texts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .finetune import _Help, _columns


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..runtime import DTYPES  # the one --dtype spelling (config.DType)

    r = subparsers.add_parser(
        "predict",
        help="predict with a fine-tuned folder on a file or on texts",
        description="Predict with a folder written by `transferlab finetune`. Prints one line per input "
                    "(label and probability, tagged words and entities, an answer, or generated text); --out "
                    "writes JSONL with all fields.",
        formatter_class=_Help,
    )
    r.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE", help="inputs in the training format (labels not needed)")
    src.add_argument("--text", action="append", metavar="TEXT",
                     help="an input text (repeatable); tagging: whitespace-tokenised; qa: the context")
    r.add_argument("--pair", metavar="TEXT", help="pair-classification: the second text for every --text")
    r.add_argument("--question", metavar="TEXT", help="qa: the question for every --text context")
    _columns(r, label=False)
    r.add_argument("--out", metavar="FILE", help="write predictions as JSONL")
    r.add_argument("--force", action="store_true", help="overwrite --out even if it is not an earlier predictions file")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--dtype", default="auto", choices=DTYPES)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    r.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from ..finetune import predict
    from ..finetune.config import TaskSpec
    from ..finetune.task_types import get_task_type
    from ..outputs import Output, is_predictions_jsonl
    from ..utils import atomic_write_text

    if args.out:  # refuse before predicting, not after
        Output(args.out, file=True, owned=is_predictions_jsonl, force=args.force,
               inputs=[args.input, args.model]).check()
    spec = TaskSpec.load(args.model)
    kind = get_task_type(spec.task_type)
    inputs: object = args.input if args.input else kind.cli_inputs(args.text, args.pair, args.question)
    preds = predict(args.model, inputs, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                    text_column=args.text_column, pair_column=args.pair_column)
    for p in preds:
        print(kind.line(p))
    if args.out:
        with Output(args.out, file=True, owned=is_predictions_jsonl, force=args.force,
                    inputs=[args.input, args.model]):
            atomic_write_text(Path(args.out), "".join(json.dumps(p) + "\n" for p in preds))
        print(f"wrote {len(preds)} predictions to {args.out}")
    return 0
