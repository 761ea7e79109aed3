"""``transferlab objectives list|preview``: the pre-training objectives, their settings, and what
their batches look like on your prepared data.

``preview``'s own settings are the typed :class:`PreviewSettings` in the grammar of every command
(generated flags, ``--config FILE.yaml``, ``preview.KEY=VALUE`` overrides); plain ``KEY=VALUE``
items are the objective's settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class PreviewSettings:
    """What ``objectives preview`` reads: the prepared data, the objective and the batch to show."""

    data: str = field(metadata={"metavar": "DIR"})
    """a folder written by `transferlab prepare`"""
    objective: str = field(metadata={"metavar": "NAME"})
    """mlm, nsp (mlm+nsp), electra, clm, denoise, span-corruption, plm, mtlm, mass"""
    split: str = "train"
    """split to read"""
    seq_len: int = field(default=64, metadata={"metavar": "N"})
    """sequence length"""
    examples: int = field(default=2, metadata={"metavar": "N"})
    """examples to show"""
    seed: int = 0
    """seed of the masking/noise generator"""
    settings: list[str] = field(default_factory=list, metadata={"cli": False})
    """the objective's settings as KEY=VALUE items (positional on the command line)"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    p = subparsers.add_parser(
        "objectives", help="list pre-training objectives or preview their batches",
        description="The pre-training objectives (mlm, nsp, electra, clm, denoise, span-corruption, plm, mtlm, mass): "
        "their settings, and what one of their batches looks like on prepared data.",
    )
    sub = p.add_subparsers(dest="objectives_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    ls = sub.add_parser("list", help="objectives with their model family, heads and settings",
                        description="Every objective with the model it needs and its settings (defaults and meaning).")
    ls.add_argument("name", nargs="?", help="show only this objective")
    ls.set_defaults(func=_list)

    pv = sub.add_parser(
        "preview", help="show a collated batch decoded to tokens",
        description="Build the objective on prepared shards (their tokenizer included), collate a few "
        "examples and print inputs and targets as tokens: see your masking / noise before training.",
        epilog=GRAMMAR_EPILOG + "\n\nexample:\n  transferlab objectives preview --data runs/data --objective mlm "
        "whole_word=true",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(pv, PreviewSettings, overrides=False)
    pv.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                    help="objective settings, e.g. mask_prob=0.2; preview.KEY=VALUE overrides a setting above")
    pv.set_defaults(func=_preview)


def _list(args: argparse.Namespace) -> int:
    import typing

    from ..objectives import objective_class, objective_names
    from ..objectives.base import describe_settings

    names = [args.name] if args.name else objective_names()
    for name in names:
        cls = objective_class(name)  # ConfigError for an unknown name
        hints = typing.get_type_hints(cls.__init__)
        cfg_cls = next(a for a in typing.get_args(hints["config"]) if a is not type(None))
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{cls.name}: {doc}")
        print(f"  model: {cls.family.value} with head(s) {', '.join(cls.heads)}")
        for key, _, default, help_ in describe_settings(cfg_cls):
            print(f"  {key + '=' + repr(default):<30} {help_}")
        print()
    return 0


def _preview(ns: argparse.Namespace) -> int:
    import numpy as np

    from ..cli import config_from_args
    from ..config import _split

    items = ns.settings or []
    ns.overrides = [i.removeprefix("preview.") for i in items if i.startswith("preview.")]
    ns.settings = [i for i in items if not i.startswith("preview.")] or None  # none: the --config file's
    args = config_from_args(ns, PreviewSettings, "objectives preview")
    from ..data import TokenShards
    from ..objectives import build_objective

    shards = TokenShards(args.data, args.split)
    tok = shards.tokenizer
    settings = dict(_split(s) for s in args.settings)
    ob = build_objective(args.objective, tok, **settings)
    ds = ob.dataset(shards, args.seq_len)
    batch = ob.collate([ds[i] for i in range(min(args.examples, len(ds)))], np.random.default_rng(args.seed))

    def show(ids) -> str:
        return " ".join(tok.convert_ids_to_tokens([int(i) for i in ids]))

    for r in range(batch["input_ids"].shape[0]):
        am = batch["attention_mask"][r].bool() if "attention_mask" in batch else slice(None)
        ids = batch["input_ids"][r][am]
        labels = batch["labels"][r]
        print(f"--- example {r}")
        print(f"input:   {show(ids)}")
        if "target_index" in batch:  # plm: targets in factorisation order, at their content positions
            tgt = batch["target_index"][r]
            slots = (tgt >= 0).nonzero().flatten().tolist()
            T = batch["input_ids"].shape[1] - len(tgt)
            print("order:   " + " -> ".join(
                f"{int(tgt[s])}:{tok.convert_ids_to_tokens(int(labels[T + s]))}" for s in slots))
        elif "decoder_input_ids" in batch or ob.name == "clm":  # sequence targets
            print(f"target:  {show(labels[labels != -100])}")
        else:  # masked positions: position:original
            pos = (labels != -100).nonzero().flatten().tolist()
            print("targets: " + " ".join(f"{p}:{tok.convert_ids_to_tokens(int(labels[p]))}" for p in pos))
        if "mtlm_mode" in batch and r == 0:
            from ..objectives.mtlm import MODES

            print(f"attention mode (this batch): {MODES[int(batch['mtlm_mode'])]}")
        if "next_sentence_label" in batch:
            print(f"next sentence: {'random (1)' if int(batch['next_sentence_label'][r]) else 'is next (0)'}")
    print(f"n_targets {int(batch['n_targets'])}, batch keys: {', '.join(batch)}")
    return 0
