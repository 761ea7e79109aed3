"""``transferlab features``: frozen vectors from any layer; ``probe`` and ``neighbours`` tools."""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..finetune.features import FeaturesConfig


def _layer(s: str) -> str:
    if s in ("mix", "all") or re.fullmatch(r"-?\d+", s):
        return s
    raise argparse.ArgumentTypeError(f"expected a layer number, 'mix' or 'all', got {s!r}")


#: dests of the extraction flags that set a FeaturesConfig field, and their defaults (shown in --help)
FIELD_DESTS: list[str] = []
FLAG_DEFAULTS: dict[str, object] = {}
#: the FeaturesConfig fields the extraction takes as flags, in --help order (the tools have their own)
_EXTRACT_FIELDS = ("model", "input", "task", "split", "text_column", "layer", "pooling", "mix_weights", "normalize",
                   "output", "limit", "max_length", "batch_size", "device", "dtype")


def _config_class() -> type:
    from ..finetune.features import FeaturesConfig

    return FeaturesConfig


class _ToolNames(dict):
    """The tools by name, where a ``KEY=VALUE`` word also passes argparse's choice check."""

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (isinstance(key, str) and "=" in key)


class _ToolOrOverrides(argparse._SubParsersAction):
    """The optional TOOL (``probe``, ``neighbours``) or, when the first word after the flags is a
    ``KEY=VALUE`` item, the extraction's ``features.KEY=VALUE`` overrides (flags may follow them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _ToolNames()

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        if values and not dict.__contains__(self._name_parser_map, values[0]) and "=" in values[0]:
            items = list(getattr(namespace, "overrides", None) or [])
            rest = list(values)
            while rest and not rest[0].startswith("-"):
                items.append(rest.pop(0))
            namespace.overrides = items
            if rest:  # flags after the overrides: parse them as the command's own
                parser.parse_args(rest, namespace)
            return
        super().__call__(parser, namespace, values, option_string)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features", help="extract frozen features; probe layers; contextual neighbours",
        description="Without a TOOL: extract frozen per-token or pooled vectors from any layer of a pre-trained model (or an "
        "ELMo-style scalar mix of all layers) and save them as .npy or .safetensors. Two tools: `features probe` "
        "(a linear probe per layer and on a learned scalar mix) and `features neighbours` (a word's contextual "
        "nearest neighbours next to its static-embedding ones).",
        epilog="examples:\n"
        "  transferlab features --model builtin:minilm --task rotten-tomatoes --split validation --layer 4 "
        "--pooling mean --output rt_val.npy\n"
        "  transferlab features --model builtin:minilm --input texts.txt --normalize --output emb.npy\n"
        "  transferlab features probe --model builtin:minilm --task rotten-tomatoes --train-size 1000\n"
        "  transferlab features neighbours --model builtin:minilm --word play --corpus builtin:reviews+news\n"
        "  transferlab features --config feats.yaml --output emb.npy features.layer=mix features.batch_size=64\n\n"
        "configuration (the grammar of `transferlab finetune`):\n"
        "  --config FILE.yaml   a YAML/JSON file with a `features:` section of FeaturesConfig fields, e.g.\n"
        "                         features: {model: \"builtin:minilm\", task: imdb, layer: \"4\", pooling: mean}\n"
        "  features.KEY=VALUE   dotted overrides of any FeaturesConfig field, after the flags\n"
        "  precedence: built-in defaults < --config file < flags given on the command line < features.KEY=VALUE",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE",
                   help="YAML/JSON with a `features:` section of FeaturesConfig fields (flags and features.KEY=VALUE win)")
    from ..cli import add_config_arguments
    from ..finetune.features import POOLINGS
    from ..runtime import DTYPES

    # the extraction's flags are FeaturesConfig fields: help and defaults from the dataclass
    shown = add_config_arguments(p, _config_class(), only=_EXTRACT_FIELDS, config=False, overrides=False, options={
        "model": {"metavar": "DIR"}, "input": {"metavar": "FILE", "exclusive": "source"},
        "task": {"metavar": "NAME", "exclusive": "source"}, "split": {"choices": ("train", "validation", "test")},
        "layer": {"type": _layer}, "pooling": {"choices": POOLINGS}, "mix_weights": {"metavar": "JSON"},
        "output": {"metavar": "FILE"}, "limit": {"metavar": "N"}, "max_length": {"metavar": "N"},
        "batch_size": {"metavar": "N"}, "dtype": {"choices": DTYPES}})
    p.add_argument("--force", action="store_true",
                   help="overwrite --output (and its NAME.json/.mask.npy/.ids.npy sidecars) even if they are not "
                   "earlier features")
    FIELD_DESTS[:] = list(shown)  # build_parser may run more than once in a process
    FLAG_DEFAULTS.clear()
    FLAG_DEFAULTS.update({k: v for k, v in shown.items() if v is not None})
    p.set_defaults(func=_extract, overrides=[])

    sub = p.add_subparsers(dest="features_command", metavar="TOOL", action=_ToolOrOverrides)
    pr = sub.add_parser(
        "probe", help="linear probe per layer and on a learned scalar mix",
        description="Freeze the model, pool each layer's vectors, and fit the same classifier (standardise + "
        "logistic regression, C tuned on validation) on every layer, on the average of all layers, and on an "
        "ELMo scalar mix learned jointly with a linear head. Prints accuracy per probe and the mix weights.",
    )
    pr.add_argument("--model", required=True, metavar="DIR", help="pre-trained model folder or builtin:minilm")
    pr.add_argument("--task", default="rotten-tomatoes", help="a classification task (default: %(default)s)")
    pr.add_argument("--train-size", type=int, default=1000, help="labelled examples, seeded subsample (default: %(default)s)")
    pr.add_argument("--seed", type=int, default=0, help="subsample and initialisation seed (default: %(default)s)")
    pr.add_argument("--pooling", choices=("cls", "mean", "last"), default="mean", help="(default: %(default)s)")
    pr.add_argument("--no-test", action="store_true", help="do not score the test split")
    pr.add_argument("--save-mix", metavar="JSON", help="save the learned scalar mix (for `features --layer mix`)")
    pr.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pr.add_argument("--force", action="store_true", help="overwrite --json/--save-mix files that are not earlier probe output")
    _common(pr, max_length=128)
    pr.set_defaults(func=_probe)

    nb = sub.add_parser(
        "neighbours", aliases=["neighbors"], help="contextual vs static nearest neighbours of a word",
        description="Sample corpus sentences containing WORD, embed each occurrence in context (sub-word vectors "
        "averaged), and for each query sentence print the corpus occurrences nearest by cosine; then the "
        "vocabulary tokens nearest to the word's static input embedding. Default queries for 'play' cover five "
        "senses (games, music, theatre, sport, 'play a part').",
    )
    nb.add_argument("--model", required=True, metavar="DIR", help="pre-trained model folder or builtin:minilm")
    nb.add_argument("--word", required=True, help="the word to look at (whole word, any case)")
    nb.add_argument("--corpus", default="builtin:reviews+news", help="builtin:NAME, a file or a folder (default: %(default)s)")
    nb.add_argument("--sample", type=int, default=2000, metavar="N", help="corpus sentences with the word to sample (default: %(default)s)")
    nb.add_argument("--sentence", action="append", metavar="TEXT", help="a query sentence containing the word; repeatable")
    nb.add_argument("--k", type=int, default=5, help="neighbours per query (default: %(default)s)")
    nb.add_argument("--layer", type=int, default=-1, help="hidden state to use (default: the last block)")
    nb.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    _common(nb, max_length=128, dtype=False)
    nb.set_defaults(func=_neighbours)


def _common(p: argparse.ArgumentParser, max_length: int = 256, dtype: bool = True) -> None:
    p.add_argument("--max-length", type=int, default=max_length, help="truncate inputs to N tokens (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    if dtype:
        from ..runtime import DTYPES

        p.add_argument("--dtype", choices=DTYPES, default="fp32",
                       help="bf16 autocast is ~4x faster on CPUs with avx512_bf16 (default: %(default)s)")


def _positive(args: argparse.Namespace, *names: str) -> None:
    from ..errors import ConfigError

    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise ConfigError(f"--{n.replace('_', '-')} must be positive, got {v}")


def resolve_config(args: argparse.Namespace) -> "FeaturesConfig":
    """The extraction's :class:`~transferlab.finetune.features.FeaturesConfig` from the parsed
    command line: defaults < ``--config`` < flags given < ``features.KEY=VALUE`` (finetune's code).

    Raises:
        ConfigError: one line naming the file and/or the key.
    """
    from .finetune import finish_section_config, resolve_section_config, section_overrides

    cfg = resolve_section_config(args, _config_class(), "features", FIELD_DESTS, {})
    cfg.progress = True  # the command always shows its bar
    items = section_overrides(getattr(args, "overrides", None) or [], "features", "features.layer=4")
    return finish_section_config(cfg, "features", items)


def _extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..finetune.features import ScalarMix, extract_features, load_model_and_tokenizer, save_features

    cfg = resolve_config(args)
    if not cfg.model or not cfg.output or not (cfg.input or cfg.task):
        raise ConfigError("features: --model, --output and one of --input/--task are required "
                          "(or use `features probe` / `features neighbours`)")
    if cfg.input and cfg.task:
        raise ConfigError("features: give either --input or --task, not both")
    if Path(cfg.output).suffix not in (".npy", ".safetensors"):
        raise ConfigError(f"--output {cfg.output}: expected a .npy or .safetensors file name")
    if cfg.mix_weights and cfg.layer != "mix":
        raise ConfigError("--mix-weights goes with --layer mix")
    if cfg.normalize and cfg.pooling == "none":
        raise ConfigError("--normalize works on pooled vectors: use --pooling cls, mean or last")
    out = _features_output(cfg, args.force)
    out.check()  # before the (long) extraction: a foreign file or sidecar (NAME.json) is refused
    if cfg.task:
        from ..finetune.task_types import get_task_type
        from ..finetune.tasks import load_builtin

        data = load_builtin(cfg.task)
        both = [get_task_type(data.task_type).feature_texts(e) for e in data[cfg.split]]  # (text, pair or None)
        texts = [a for a, _ in both]
        pairs = [b for _, b in both] if both and both[0][1] is not None else None
    else:
        from ..data.corpus import read_documents

        texts = [d.text for d in read_documents(cfg.input, doc_sep="line", text_column=cfg.text_column)]
        pairs = None
    if cfg.limit:
        texts = texts[: cfg.limit]
        pairs = pairs[: cfg.limit] if pairs else None
    model, tok = load_model_and_tokenizer(cfg.model, cfg.device)
    mix = ScalarMix.load(cfg.mix_weights) if cfg.mix_weights else None
    feats = extract_features(model, tok, texts, text_pairs=pairs, mix=mix, config=cfg)
    feats.meta["model"] = str(cfg.model)
    if cfg.normalize:
        feats.values = l2_normalize(feats.values)
        feats.meta["normalized"] = True
    with out:
        files = save_features(feats, Path(cfg.output))
    print(f"{len(texts)} texts -> features {tuple(feats.values.shape)} ({feats.meta['layer']}, {cfg.pooling} pooling)")
    for f in files:
        print(f"wrote {f}")
    return 0


def l2_normalize(values):
    """Unit-length vectors along the last axis (``(..., C)``), in float32 like the input; a zero
    vector stays zero (sentence-transformers clamps the norm the same way)."""
    import numpy as np

    norms = np.linalg.norm(values.astype(np.float64), axis=-1, keepdims=True)
    return (values / np.maximum(norms, 1e-12)).astype(np.float32)


def _features_output(cfg: "FeaturesConfig", force: bool):
    """The claim on ``--output`` and the sidecars ``save_features`` writes beside a ``.npy``."""
    from pathlib import Path

    from ..outputs import Output, is_json_with

    p = Path(cfg.output)
    side = p.with_suffix(".json")
    extra = [] if p.suffix == ".safetensors" else [side, p.with_name(p.stem + ".mask.npy"),
                                                    p.with_name(p.stem + ".ids.npy")]
    sidecar = is_json_with("shape", "layer", "pooling")

    def owned(q: Path) -> bool:
        if q == side:
            return sidecar(q)
        if q.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(q), framework="numpy") as f:
                    return "layer" in (f.metadata() or {}) and "features" in f.keys()
            except Exception:  # not a safetensors file
                return False
        return side.is_file() and sidecar(side)  # the arrays are ours when their sidecar is

    return Output(p, file=True, owned=owned, force=force, flag="--output", extra=extra,
                  inputs=[cfg.model, cfg.input, cfg.mix_weights])


def _probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..finetune.features import load_model_and_tokenizer
    from ..finetune.probes import probe
    from ..outputs import Output, is_json_with
    from ..utils import atomic_write_text

    outs = []
    if args.save_mix:
        outs.append(Output(args.save_mix, file=True, owned=is_json_with("n_layers", "weights", "gamma"),
                           force=args.force, flag="--save-mix", inputs=[args.model]))
    if args.json:
        outs.append(Output(args.json, file=True, owned=is_json_with("task", "rows"), force=args.force,
                           flag="--json", inputs=[args.model]))
    for o in outs:
        o.check()  # before the probes run
    _positive(args, "train_size", "max_length", "batch_size")
    model, tok = load_model_and_tokenizer(args.model, args.device)
    res = probe(model, tok, args.task, train_size=args.train_size, seed=args.seed, pooling=args.pooling,
                max_length=args.max_length, batch_size=args.batch_size, dtype=args.dtype,
                eval_on_test=not args.no_test, progress=True)
    print(f"{res.task}: linear probes on frozen {args.pooling}-pooled features of {args.model}, "
          f"{res.n_train} training examples (seed {args.seed})")
    print(res.table())
    if args.save_mix and res.mix is not None:
        with outs[0]:
            res.mix.save(args.save_mix, {"model": str(args.model), "task": res.task, "pooling": args.pooling})
        print(f"wrote {args.save_mix}")
    if args.json:
        with outs[-1]:
            atomic_write_text(Path(args.json), json.dumps({"model": str(args.model), **res.to_dict()}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _neighbours(args: argparse.Namespace) -> int:
    from ..finetune.features import load_model_and_tokenizer
    from ..finetune.probes import neighbours

    _positive(args, "sample", "k", "max_length", "batch_size")
    model, tok = load_model_and_tokenizer(args.model, args.device)
    rep = neighbours(model, tok, args.word, args.corpus, args.sentence, n_sentences=args.sample, k=args.k,
                     layer=args.layer, seed=args.seed, batch_size=args.batch_size, max_length=args.max_length)
    print(rep.format())
    return 0
