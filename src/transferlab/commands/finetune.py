"""``transferlab finetune`` / ``evaluate`` / ``predict``: thin wrappers over :mod:`transferlab.finetune`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

_EPILOG = """\
configuration (the same grammar as `transferlab pretrain`):
  --config FILE.yaml   a YAML/JSON file with a `finetune:` section of FinetuneConfig fields, e.g.
                         finetune: {model: "builtin:minilm", task: imdb, lr: 1.0e-4, grad_accum: 4}
  finetune.KEY=VALUE   dotted overrides of any FinetuneConfig field, after the flags, e.g.
                         finetune.lr=1e-4 finetune.grad_accum=4 finetune.lora_r=8 finetune.lora_targets=qkv,out
  precedence: built-in defaults < --config file < flags given on the command line < finetune.KEY=VALUE

examples:
  transferlab finetune --model builtin:minilm --task rotten-tomatoes --out runs/ft --epochs 2
  transferlab finetune --config ft.yaml --out runs/ft finetune.lr=1e-4 finetune.seed=1
"""

#: flag dest -> FinetuneConfig field, where the names differ (every other field flag has the field's name)
_FLAG_FIELDS = {"train": "train_file", "validation": "validation_file", "test": "test_file", "out": "out_dir"}
#: the defaults the finetune flags show in --help (they are FinetuneConfig's; a test checks they agree)
FLAG_DEFAULTS: dict[str, object] = {}
#: dests of the flags that set a FinetuneConfig field
FIELD_DESTS: list[str] = []


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones and where the help text already states them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


class _HelpWithEpilog(_Help, argparse.RawDescriptionHelpFormatter):
    """:class:`_Help` that keeps the epilog's line breaks (the config grammar and examples)."""


def _field_of(dest: str) -> str:
    return _FLAG_FIELDS.get(dest, dest)


def defaults_to_help(p: argparse.ArgumentParser, config_cls: type, flag_fields: dict[str, str],
                     dests: list[str], defaults: dict[str, object]) -> None:
    """Move the defaults of the flags that set ``config_cls`` fields into their help text and make
    the parsed default None, so that :func:`resolve_section_config` can tell a flag given on the
    command line (which beats --config) from one left alone (which does not).

    Args:
        p: the subcommand's parser, all flags added.
        config_cls: the typed config dataclass whose fields the flags set.
        flag_fields: flag dest -> field name where they differ.
        dests: filled with the dests of the flags that set a field.
        defaults: filled with those flags' defaults (a test checks they equal the dataclass's).
    """
    from dataclasses import fields

    names = {f.name for f in fields(config_cls)}
    dests.clear()  # build_parser may run more than once in a process
    defaults.clear()
    for action in p._actions:
        if not action.option_strings or flag_fields.get(action.dest, action.dest) not in names:
            continue
        dests.append(action.dest)
        d = action.default
        if d is not None and d is not argparse.SUPPRESS:
            defaults[action.dest] = d
            if d is not False:
                text = (action.help or "").replace("%(default)s", str(d))
                action.help = text if "default" in text else f"{text} (default: {str(d).replace('%', '%%')})"
        action.default = None


def _defaults_to_help(p: argparse.ArgumentParser) -> None:
    from ..finetune import FinetuneConfig

    defaults_to_help(p, FinetuneConfig, _FLAG_FIELDS, FIELD_DESTS, FLAG_DEFAULTS)


def _columns(p: argparse.ArgumentParser, label: bool = True) -> None:
    g = p.add_argument_group("columns of user files (defaults per task type)")
    g.add_argument("--text-column", metavar="C",
                   help="input text field (default: text; seq2seq source; qa context; tagging JSONL tokens)")
    g.add_argument("--pair-column", metavar="C",
                   help="second text for sentence pairs (makes the task pair-classification); qa: the question field")
    if label:
        g.add_argument("--label-column", metavar="C",
                       help="label field (default: label; seq2seq target; qa answer; tagging JSONL tags)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..runtime import DTYPES  # the one --dtype spelling (config.DType)

    # ---------------------------------------------------------------- finetune
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a task (classification, pairs, regression, tagging, QA, seq2seq)",
        description=(
            "Fine-tune a pre-trained model (or train the same architecture from scratch) on a built-in "
            "task or your files, keep the best checkpoint by validation score, and score the test split. "
            "The output folder holds the model, its tokenizer and task.json, so `transferlab evaluate` "
            "and `transferlab predict` work from it alone."
        ),
        formatter_class=_HelpWithEpilog, epilog=_EPILOG,
    )
    p.add_argument("--config", metavar="FILE",
                   help="YAML/JSON with a `finetune:` section of FinetuneConfig fields (flags and finetune.KEY=VALUE win)")
    p.add_argument("--model", metavar="DIR|builtin:minilm|PRESET",
                   help="pre-trained model folder (ours or a converted transformers folder), builtin:minilm, "
                        "or a preset name (bert-mini, gpt-mini, bart-mini, t5-mini, ...) with --from-scratch")
    src = p.add_mutually_exclusive_group()  # or task/train_file from --config
    src.add_argument("--task", metavar="NAME",
                     help="built-in task: imdb, rotten-tomatoes, bbc-topic, twitter-ner, bbc-headlines, or a "
                          "derived one: bbc-pairs, bbc-qa")
    src.add_argument("--train", metavar="FILE", help="training file: .csv/.tsv/.jsonl, or CoNLL token<TAB>tag for tagging")
    p.add_argument("--validation", metavar="FILE", help="validation file (default: 10%% of --train held out)")
    p.add_argument("--test", metavar="FILE", help="test file, scored once with the best checkpoint")
    _columns(p)
    from ..finetune.task_types import task_type_names

    p.add_argument("--task-type", choices=task_type_names(),
                   help="task type (default: inferred: string labels -> classification, floats -> regression, "
                        "tokens/tags -> tagging, context/question/answer -> qa, source/target -> seq2seq)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder for the best checkpoint (replaced whole; an existing one must be an "
                        "earlier fine-tune with nothing else in it)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it holds something else (evaluation files, notes, another model)")
    g = p.add_argument_group("model and data")
    g.add_argument("--from-scratch", action="store_true",
                   help="re-initialise all weights (the no-pre-training control, same architecture)")
    g.add_argument("--tokenizer", metavar="DIR",
                   help="tokenizer folder; default: the model folder's; with a preset: trained in-process on the "
                        "task's training text")
    g.add_argument("--tokenizer-vocab-size", type=int, default=8000, metavar="N",
                   help="vocabulary of a tokenizer trained in-process")
    g.add_argument("--train-size", type=int, metavar="N",
                   help="keep N training examples (stratified by label, deterministic by --seed)")
    g.add_argument("--validation-size", type=int, metavar="N", help="score early stopping on at most N validation examples")
    g.add_argument("--test-size", type=int, metavar="N",
                   help="report test metrics on at most N test examples (a fixed subset, the same for every seed)")
    g.add_argument("--max-length", type=int, metavar="N",
                   help="input length limit in tokens (default per task: 256 imdb/bbc, 128 tweets/pairs)")
    g.add_argument("--max-target-length", type=int, metavar="N", help="seq2seq target/generation limit (default 32 headlines, else 64)")
    g.add_argument("--doc-stride", type=int, default=128, metavar="N", help="qa: overlap of context windows in tokens")
    g.add_argument("--max-answer-length", type=int, default=30, metavar="N", help="qa: longest answer in tokens")
    g.add_argument("--pooling", default="auto", choices=("auto", "cls", "mean", "last"),
                   help="classification pooling (auto: cls for encoders, last token otherwise)")
    g.add_argument("--truncation", default="head", choices=("head", "tail", "head+tail"),
                   help="classification: which tokens of a text longer than --max-length to read: the first, the "
                        "last, or head+tail (first quarter of the budget + the rest from the end; best on long "
                        "reviews, Sun et al. 2019) (default: %(default)s)")
    g.add_argument("--head-dropout", type=float, metavar="P", help="dropout before the classifier (default: the model's)")
    g.add_argument("--dropout", type=float, metavar="P", help="backbone hidden dropout (default: the model's)")
    g.add_argument("--attention-dropout", type=float, metavar="P",
                   help="dropout on attention probabilities (default: the model's); 0 makes CPU steps ~1.85x "
                        "faster (SDPA's fused kernel instead of a random mask per attention matrix)")
    g.add_argument("--prompt-suffix", default="\nTL;DR:", metavar="TEXT",
                   help="seq2seq on a decoder: text between the source and the completion")
    g.add_argument("--num-beams", type=int, default=1, metavar="B", help="seq2seq: beam width for evaluation")
    g.add_argument("--bio-decoding", default="viterbi", choices=("viterbi", "argmax"),
                   help="tagging: best valid BIO path, or the best tag per word")
    o = p.add_argument_group("optimisation (ULMFiT-style options included)")
    o.add_argument("--epochs", type=float, default=3.0, help="passes over the training set")
    o.add_argument("--batch-size", type=int, default=16,
                   help="examples per micro-batch and process (a step sees batch-size x grad-accum x processes)")
    o.add_argument("--grad-accum", type=int, default=1, metavar="N",
                   help="micro-batches per optimiser step; the loss is normalised over the whole accumulated "
                        "batch, so 4 x 8 is the same step as 32 (exact up to float rounding; dropout masks are "
                        "drawn per micro-batch)")
    o.add_argument("--eval-batch-size", type=int, default=32, help="batch size for evaluation")
    o.add_argument("--lr", type=float, default=5e-5, help="peak learning rate")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices")
    o.add_argument("--warmup", type=float, default=0.1, help="fraction of the run spent warming up")
    o.add_argument("--schedule", default="linear", choices=("linear", "cosine", "slanted", "constant"),
                   help="learning-rate schedule; slanted = ULMFiT slanted triangular")
    o.add_argument("--layer-lr-decay", type=float, default=1.0, metavar="D",
                   help="discriminative learning rates: each block below the top gets D times the one above")
    o.add_argument("--gradual-unfreeze", type=float, nargs="?", const=0.5, default=0.0, metavar="FRAC",
                   help="unfreeze layer groups from the top, one at a time, over this fraction of the run "
                        "(flag alone: 0.5)")
    o.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    o.add_argument("--patience", type=int, metavar="N", help="stop after N evaluations without improvement")
    o.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="evaluate every N steps (0 = each epoch)")
    o.add_argument("--max-minutes", type=float, metavar="M", help="wall-clock budget; the schedule is stretched over it")
    o.add_argument("--seed", type=int, default=0, help="seed for new weights, shuffling, dropout and --train-size")
    o.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="bf16 autocast, fp16 autocast with loss scaling (GPUs without bf16), or fp32; auto: bf16 "
                   "where the hardware has native bf16, else fp32 (default: %(default)s)")
    o.add_argument("--gradient-checkpointing", action="store_true",
                   help="activation checkpointing: recompute each block in backward (less memory, ~1 more "
                        "forward per step)")
    lo = p.add_argument_group("LoRA (low-rank adapters; the output holds the merged model and the adapter)")
    lo.add_argument("--lora-r", type=int, metavar="R", help="train rank-R adapters instead of every weight (e.g. 8)")
    lo.add_argument("--lora-alpha", type=float, default=16.0, metavar="A", help="adapter scale numerator (x A / R)")
    lo.add_argument("--lora-dropout", type=float, default=0.0, metavar="P", help="dropout on the adapters' input")
    lo.add_argument("--lora-targets", default="qkv,q,kv,out,fc1,fc2", metavar="NAMES",
                    help="comma-separated block linears to adapt")
    o.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model (FSDP2) instead of DDP")
    c = p.add_argument_group("checkpoints and resume")
    c.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="checkpoint every N steps as well as after each evaluation (0 = only then)")
    c.add_argument("--keep-last", type=int, default=2, metavar="K", help="checkpoints kept under OUT/checkpoints")
    c.add_argument("--keep-checkpoints", action="store_true",
                   help="keep OUT/checkpoints in the finished folder (default: dropped at the end)")
    c.add_argument("--resume", action="store_true",
                   help="continue a killed run from the latest checkpoint in OUT/checkpoints (same command)")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    o.add_argument("--attn-impl", choices=("sdpa", "math"), help="attention kernel override (math is faster for short bf16 CPU sequences)")
    o.add_argument("--no-test", action="store_true", help="do not score the test split")
    o.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    from ..cost import add_cost_arguments

    add_cost_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="finetune.KEY=VALUE",
                   help="dotted overrides of FinetuneConfig fields: finetune.lr=1e-4 finetune.grad_accum=4")
    _defaults_to_help(p)
    p.set_defaults(func=_finetune)

    # ---------------------------------------------------------------- evaluate
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

    # ---------------------------------------------------------------- predict
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


def _finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from ..cost import cost_config_from_args
    from ..finetune import FinetuneConfig, finetune

    cost = {k: v for k, v in dataclasses.asdict(cost_config_from_args(args)).items() if v is not None}
    if not getattr(args, "no_energy", False):
        cost.pop("track_energy", None)  # the default: leave a --config file's cost.track_energy alone

    cfg = resolve_config(args, cost)
    from ..training.distributed import cleanup_distributed, init_distributed

    import torch.distributed as dist

    info, owner = None, False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: join the group (gloo on CPUs)
        owner = not dist.is_initialized()  # leave it at the end only if this command joined it
        info = init_distributed(None if cfg.device == "auto" else cfg.device)
    from ..outputs import Output

    try:
        # the one output rule (docs/outputs.md); under torchrun rank 0 holds the lock for the job
        with Output(cfg.out_dir, "finetune", force=cfg.force, locked=info is None or info.is_main,
                    inputs=[cfg.model, cfg.tokenizer, cfg.train_file, cfg.validation_file, cfg.test_file]):
            res = finetune(cfg, info=info)
    except BaseException:
        if owner:
            cleanup_distributed(wait=False)  # peers may never arrive at a barrier
        raise
    if owner:
        cleanup_distributed()
    if info is not None and not info.is_main:
        return 0
    print(f"trained {res.steps} steps on {res.n_train} examples in {res.train_seconds:.1f}s "
          f"({res.train_tokens / max(res.train_seconds, 1e-9):,.0f} tokens/s); best epoch {res.best_epoch}; "
          f"stopped: {res.stopped}")
    for split, m in (("validation", res.validation), ("test", res.test)):
        for k, v in m.items():
            print(f"{split} {k}: {v:.4f}")
    print(f"saved to {res.out_dir}")
    return 0


def section_overrides(items: list[str], section: str, example: str, list_fields: tuple[str, ...] = ()) -> dict[str, str]:
    """``SECTION.KEY=VALUE`` items as ``{"SECTION.KEY": VALUE}`` (a comma list for a field of
    ``list_fields`` becomes JSON), refusing any other section.

    Args:
        items: the command line's override items.
        section: the one section the command takes (``finetune``, ``features``).
        example: an override shown in the error message.
        list_fields: fields that take a comma list.

    Returns:
        The overrides for :func:`~transferlab.config.apply_overrides`.
    """
    from ..config import _split
    from ..errors import ConfigError

    out: dict[str, str] = {}
    for item in items:
        key, value = _split(item)
        head, _, rest = key.partition(".")
        if head != section or not rest:
            raise ConfigError(f"override {item!r}: expected {section}.KEY=VALUE (a {section.capitalize()}Config field, "
                              f"e.g. {example})")
        if rest in list_fields and not value.startswith("["):
            value = json.dumps([t.strip() for t in value.split(",") if t.strip()])
        out[key] = value
    return out


def finetune_overrides(items: list[str]) -> dict[str, str]:
    """``finetune.KEY=VALUE`` items as ``{"finetune.KEY": VALUE}`` (a comma list for ``lora_targets``
    becomes JSON), refusing any other section: the one grammar of ``finetune`` and ``compare``."""
    return section_overrides(items, "finetune", "finetune.lr=1e-4", ("lora_targets",))


def resolve_section_config(args: argparse.Namespace, config_cls: type, section: str, dests: list[str],
                           flag_fields: dict[str, str], list_fields: tuple[str, ...] = ()) -> Any:
    """A typed config from the parsed command line before its overrides, by precedence: the
    dataclass defaults, then the ``SECTION:`` mapping of ``--config``, then the flags given on the
    command line. The caller applies the ``SECTION.KEY=VALUE`` overrides and validates once
    (:func:`finish_section_config`).

    Args:
        args: the parsed command line (``args.config``: the file or None).
        config_cls: the dataclass (with ``RANGES`` and ``validate()``).
        section: the file's section and the overrides' prefix.
        dests: the dests of the flags that set fields (see :func:`defaults_to_help`).
        flag_fields: flag dest -> field name where they differ.
        list_fields: fields whose flag takes a comma list.

    Returns:
        The config (not validated yet).

    Raises:
        ConfigError: one line naming the file and/or the key (unknown field, wrong type, out of range).
    """
    from ..config import check_fields, from_dict, in_file, load_config_file
    from ..errors import ConfigError

    cfg = config_cls()
    if args.config:
        data = load_config_file(args.config)
        with in_file(args.config):
            unknown = sorted(set(data) - {section})
            if unknown:
                raise ConfigError(f"unknown section(s) {', '.join(unknown)}; expected a `{section}:` section "
                                  f"of {config_cls.__name__} fields")
            cfg = from_dict(config_cls, data.get(section) or {}, where=section)
            check_fields(cfg, section, config_cls.RANGES)
    for dest in dests:
        v = getattr(args, dest, None)
        if v is None:
            continue  # not given: the file's value or the default stands
        if dest in list_fields:
            v = [t.strip() for t in v.split(",") if t.strip()]
        setattr(cfg, flag_fields.get(dest, dest), v)
    return cfg


def finish_section_config(cfg: Any, section: str, items: dict[str, str]) -> Any:
    """Apply overrides ``items`` (from :func:`section_overrides`) and validate once; returns ``cfg``."""
    from ..config import apply_overrides

    if items:
        apply_overrides(cfg, items, prefix=section)  # validates
    else:
        cfg.validate()
    return cfg


def resolve_config(args: argparse.Namespace, cost: dict | None = None) -> "FinetuneConfig":
    """The run's :class:`FinetuneConfig` from the parsed command line, by precedence: the built-in
    defaults, then the ``finetune:`` section of ``--config``, then the flags given on the command
    line, then the ``finetune.KEY=VALUE`` overrides (validated once, at the end).

    Raises:
        ConfigError: one line naming the file and/or the key (unknown field, wrong type, out of range).
    """
    from ..errors import ConfigError
    from ..finetune import FinetuneConfig

    cfg = resolve_section_config(args, FinetuneConfig, "finetune", FIELD_DESTS, _FLAG_FIELDS, ("lora_targets",))
    if getattr(args, "no_test", None):
        cfg.eval_on_test = False
    if cost:
        cfg.cost = {**(cfg.cost if isinstance(cfg.cost, dict) else {}), **cost}
    finish_section_config(cfg, "finetune", finetune_overrides(getattr(args, "overrides", None) or []))
    if not cfg.out_dir:
        raise ConfigError("finetune: no output folder: pass --out DIR (or out_dir in the --config file)")
    return cfg


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
