"""``transferlab icl``: zero/one/few-shot classification accuracy of a decoder (no training).

Its settings are the typed :class:`IclSettings`, in the grammar of every command: generated
flags, ``--config FILE.yaml`` and ``key=value`` overrides (:func:`transferlab.cli.add_config_arguments`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DType


@dataclass
class IclSettings:
    """What ``icl`` reads: the model, the task and its sampling, the runtime, the output."""

    model: str | None = field(default=None, metadata={"metavar": "DIR"})
    """decoder model directory with its tokenizer"""
    task: str = "imdb"
    """classification task: imdb, rotten-tomatoes, bbc-topic"""
    shots: str = "0,1,4,8"
    """comma-separated numbers of demonstrations"""
    seed: int = 0
    """seed for the test sample and demonstrations"""
    n_test: int = field(default=200, metadata={"metavar": "N"})
    """test examples"""
    split: str = field(default="test", metadata={"choices": ("test", "validation")})
    """evaluation split"""
    max_length: int | None = field(default=None, metadata={"metavar": "N"})
    """context in tokens (default: the pre-training window from <run>/config.json if present, else the
    model's max_positions)"""
    max_text_words: int | None = field(default=None, metadata={"metavar": "N"})
    """clip every review/article to its first N words so more demonstrations fit"""
    batch_size: int = field(default=8, metadata={"metavar": "N"})
    """(prompt, label) pairs per forward pass"""
    dtype: DType = DType.FP32
    """weights dtype"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps (auto: cuda if available)"""
    output: str | None = field(default=None, metadata={"metavar": "FILE"})
    """write the results as JSON (atomically)"""
    force: bool = False
    """overwrite --output even if it is not an earlier icl result"""
    json: bool = False
    """print the JSON instead of the table"""
    no_progress: bool = False
    """hide progress bars"""

    def validate(self) -> IclSettings:
        """ConfigError unless a model is named."""
        from ..errors import ConfigError

        if not self.model:
            raise ConfigError("icl: give --model DIR (or model: in --config, or model=DIR)")
        return self


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    q = subparsers.add_parser(
        "icl", help="zero/one/few-shot accuracy of a decoder on a classification task (no training)",
        description="In-context learning: for each k in --shots, prompt the model with a task description, k "
        "demonstrations drawn with --seed from the train split and the test text, then predict the label "
        "whose verbalisation (e.g. ' positive') has the highest sum of token log-probabilities. Prints "
        "accuracy per k next to the majority-class rate; --output writes JSON. Prompts longer than the "
        "context lose their oldest tokens (reported as 'truncated'). See docs/generation.md.",
        epilog=GRAMMAR_EPILOG + "\n\nexample:\n  transferlab icl --model runs/gpt/model --task imdb --shots 0,1,4,8 "
        "--n-test 200 --max-text-words 40 --output runs/gpt/icl-imdb.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(q, IclSettings)
    q.set_defaults(func=_icl)


def _icl(ns: argparse.Namespace) -> int:
    from ..cli import config_from_args
    from ..errors import ConfigError
    from ..evaluation.icl import evaluate_icl, trained_context
    from ..outputs import Output, is_json_with
    from ..utils import atomic_write_text
    from .generate import load_for_inference

    args = config_from_args(ns, IclSettings, "icl")

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots: expected comma-separated integers like 0,1,4,8, got {args.shots!r}") from None
    out = (Output(args.output, file=True, owned=is_json_with("model", "task"), force=args.force, flag="--output",
                  inputs=[args.model]) if args.output else None)
    if out is not None:
        out.check()  # before the evaluation, not after
    model, tok = load_for_inference(args.model, args.dtype, args.device)
    max_length = args.max_length
    if max_length is None:
        window = trained_context(args.model)
        if window is not None and window < model.config.max_positions:
            max_length = window
            if not args.json:
                print(f"note: context limited to the pre-training window of {window} tokens "
                      "(<run>/config.json train.seq_len); override with --max-length", file=sys.stderr)
    res = evaluate_icl(model, tok, args.task, shots=shots, n_test=args.n_test, seed=args.seed, split=args.split,
                       max_length=max_length, max_text_words=args.max_text_words, batch_size=args.batch_size,
                       progress=not args.no_progress)
    data = res.to_dict()
    data["model"] = str(args.model)
    if out is not None:
        with out:
            atomic_write_text(Path(args.output), json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2) if args.json else res.table())
    if args.output and not args.json:
        print(f"-> {args.output}")
    return 0
