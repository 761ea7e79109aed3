"""``transferlab finetune`` / ``evaluate`` / ``predict``: thin wrappers over :mod:`transferlab.finetune`."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..finetune import FinetuneConfig

_EPILOG = """\
configuration (the same grammar as `transferlab pretrain`):
  --config FILE.yaml   a YAML/JSON file with a `finetune:` section of FinetuneConfig fields, e.g.
                         finetune: {model: "builtin:minilm", task: imdb, lr: 1.0e-4, grad_accum: 4}
  finetune.KEY=VALUE   dotted overrides of any FinetuneConfig field, after the flags, e.g.
                         finetune.lr=1e-4 finetune.grad_accum=4 finetune.lora_r=8 finetune.lora_targets=qkv,out
  precedence: built-in defaults < --config file < flags given on the command line < finetune.KEY=VALUE
  the flags above are FinetuneConfig's fields; its `cost` mapping (CostConfig fields) is set by the
  cost accounting flags or a `cost:` mapping in the file's `finetune:` section

examples:
  transferlab finetune --model builtin:minilm --task rotten-tomatoes --out runs/ft --epochs 2
  transferlab finetune --config ft.yaml --out runs/ft finetune.lr=1e-4 finetune.seed=1
"""

#: the defaults the finetune flags show in --help (FinetuneConfig's; a test checks they agree)
FLAG_DEFAULTS: dict[str, object] = {}
#: dests of the flags that set a FinetuneConfig field (each flag's dest is its field's name)
FIELD_DESTS: list[str] = []

_DATA = "model and data"
_OPT = "optimisation (ULMFiT-style options included)"
_LORA = "LoRA (low-rank adapters; the output holds the merged model and the adapter)"
_CKPT = "checkpoints and resume"
_COLS = "columns of user files (defaults per task type)"


def _flag_options() -> dict[str, dict[str, Any]]:
    """FinetuneConfig field -> how its flag is spelled and grouped (help and defaults: the field's own).

    Returns:
        The ``options`` of :func:`transferlab.cli.add_config_arguments`.
    """
    from ..finetune.config import TRUNCATIONS
    from ..finetune.task_types import task_type_names

    return {
        "model": {"metavar": "DIR|builtin:minilm|PRESET"},
        "task": {"metavar": "NAME", "exclusive": "source"},
        "train_file": {"flag": "--train", "metavar": "FILE", "exclusive": "source"},
        "validation_file": {"flag": "--validation", "metavar": "FILE"},
        "test_file": {"flag": "--test", "metavar": "FILE"},
        "text_column": {"metavar": "C", "group": _COLS},
        "pair_column": {"metavar": "C", "group": _COLS},
        "label_column": {"metavar": "C", "group": _COLS},
        "task_type": {"choices": task_type_names()},
        "tokenizer": {"metavar": "DIR", "group": _DATA},
        "tokenizer_vocab_size": {"metavar": "N", "group": _DATA},
        "from_scratch": {"group": _DATA},
        "train_size": {"metavar": "N", "group": _DATA},
        "validation_size": {"metavar": "N", "group": _DATA},
        "test_size": {"metavar": "N", "group": _DATA},
        "max_length": {"metavar": "N", "group": _DATA},
        "max_target_length": {"metavar": "N", "group": _DATA},
        "doc_stride": {"metavar": "N", "group": _DATA},
        "max_answer_length": {"metavar": "N", "group": _DATA},
        "pooling": {"choices": ("auto", "cls", "mean", "last"), "group": _DATA},
        "truncation": {"choices": TRUNCATIONS, "group": _DATA},
        "head_dropout": {"metavar": "P", "group": _DATA},
        "dropout": {"metavar": "P", "group": _DATA},
        "attention_dropout": {"metavar": "P", "group": _DATA},
        "prompt_suffix": {"metavar": "TEXT", "group": _DATA},
        "num_beams": {"metavar": "B", "group": _DATA},
        "bio_decoding": {"choices": ("viterbi", "argmax"), "group": _DATA},
        **{k: {"group": _OPT} for k in ("epochs", "batch_size", "eval_batch_size", "lr", "weight_decay", "warmup",
                                        "schedule", "max_grad_norm", "seed", "dtype", "gradient_checkpointing",
                                        "fsdp", "device", "quiet")},
        "grad_accum": {"metavar": "N", "group": _OPT},
        "layer_lr_decay": {"metavar": "D", "group": _OPT},
        "gradual_unfreeze": {"metavar": "FRAC", "nargs": "?", "const": 0.5, "group": _OPT},
        "patience": {"metavar": "N", "group": _OPT},
        "eval_every": {"metavar": "STEPS", "group": _OPT},
        "max_minutes": {"metavar": "M", "group": _OPT},
        "attn_impl": {"choices": ("sdpa", "math"), "group": _OPT},
        "eval_on_test": {"flag": "--no-test", "const": False, "group": _OPT,
                         "help": "Do not score the test split (eval_on_test: false)."},
        "lora_r": {"metavar": "R", "group": _LORA},
        "lora_alpha": {"metavar": "A", "group": _LORA},
        "lora_dropout": {"metavar": "P", "group": _LORA},
        "lora_targets": {"metavar": "NAMES", "comma": True, "group": _LORA},
        "save_every": {"metavar": "STEPS", "group": _CKPT},
        "keep_last": {"metavar": "K", "group": _CKPT},
        "keep_checkpoints": {"group": _CKPT},
        "resume": {"group": _CKPT},
        "out_dir": {"flag": "--out", "metavar": "DIR"},
        "cost": {"cli": False},  # a mapping: its flags are the cost group's (add_cost_arguments)
    }


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
    """The FinetuneConfig field a flag's dest sets (the same name since the flags come from the fields)."""
    return dest


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
    from ..cli import add_config_arguments
    from ..finetune import FinetuneConfig

    # one flag per FinetuneConfig field: help and defaults come from the dataclass (its field docs)
    shown = add_config_arguments(p, FinetuneConfig, config=False, overrides=False, options=_flag_options())
    FIELD_DESTS[:] = list(shown)  # build_parser may run more than once in a process
    FLAG_DEFAULTS.clear()
    FLAG_DEFAULTS.update({k: v for k, v in shown.items() if v is not None})
    from ..cost import add_cost_arguments

    add_cost_arguments(p)  # the `cost` field's settings (finetune.cost.KEY=VALUE in a file)
    p.add_argument("overrides", nargs="*", metavar="finetune.KEY=VALUE",
                   help="dotted overrides of FinetuneConfig fields: finetune.lr=1e-4 finetune.grad_accum=4")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from ..cost import cost_config_from_args
    from ..finetune import finetune

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
    print(_summary(res, cfg))
    for split, m in (("validation", res.validation), ("test", res.test)):
        for k, v in m.items():
            print(f"{split} {k}: {v:.4f}")
    print(f"saved to {res.out_dir}")
    return 0


def _summary(res: Any, cfg: Any) -> str:
    """The one end-of-run line, in pre-training's words (:func:`~transferlab.training.runlog.summary_line`).

    Args:
        res: the run's :class:`~transferlab.finetune.config.FinetuneResult`.
        cfg: its :class:`~transferlab.finetune.config.FinetuneConfig`.

    Returns:
        One line: steps, tokens, time, throughput, dtype, why it stopped, then the examples and best epoch.
    """
    from ..runtime import resolve_device, resolve_dtype
    from ..training.runlog import summary_line

    line = summary_line({"steps": res.steps, "tokens": res.train_tokens, "train_seconds": res.train_seconds,
                         "tokens_per_s": res.train_tokens / max(res.train_seconds, 1e-9),
                         "dtype": resolve_dtype(cfg.dtype, resolve_device(cfg.device)), "stopped_by": res.stopped})
    return f"{line}; {res.n_train} training examples, best epoch {res.best_epoch}"


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

    cfg = resolve_section_config(args, FinetuneConfig, "finetune", FIELD_DESTS, {}, ("lora_targets",))
    if cost:
        cfg.cost = {**(cfg.cost if isinstance(cfg.cost, dict) else {}), **cost}
    finish_section_config(cfg, "finetune", finetune_overrides(getattr(args, "overrides", None) or []))
    if not cfg.out_dir:
        raise ConfigError("finetune: no output folder: pass --out DIR (or out_dir in the --config file)")
    return cfg
