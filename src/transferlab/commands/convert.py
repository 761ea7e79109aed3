"""``transferlab convert`` (to and from transformers directories) and ``transferlab info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a transformers checkpoint to ours, or ours to a transformers directory",
        description="Convert between transferlab model directories (config.json + model.safetensors) and "
        "transformers directories (BERT, RoBERTa, GPT-2, BART, T5, LLaMA, RoFormer, ELECTRA, DistilBERT and Mistral "
        "(import); see docs/models.md for the key maps). "
        "Weights are read from safetensors only; pickled pytorch_model.bin files are refused. Standard "
        "tokenizer files (tokenizer.json, vocab.txt, merges.txt, ...) found beside the weights are carried "
        "along (on --to-hf re-saved so that transformers' AutoTokenizer encodes as transferlab does), so are "
        "label names (id2label/label2id, or task.json's labels) and sentence-transformers files "
        "(modules.json, 1_Pooling/, sentence_bert_config.json); plain encoders exported without them get a "
        "mean-pooling sentence-transformers config.",
        epilog="examples:\n  transferlab convert --from-hf builtin:minilm --out runs/minilm\n"
        "  transferlab convert --to-hf runs/pretrain/final --out runs/hf-export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="a directory written by transformers save_pretrained, or builtin:minilm")
    src.add_argument("--to-hf", metavar="DIR", help="one of our model directories (save_pretrained output)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (replaced whole; an existing one must be an earlier convert output)")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds something else")
    p.set_defaults(func=_convert)

    q = subparsers.add_parser(
        "info", help="print a model's architecture, parameter counts and config",
        description="Describe a model directory (ours or transformers), a built-in (builtin:minilm) or a "
        "preset name (bert-base, gpt-small, ...): family and layout, sizes, heads, parameter counts "
        "(total and non-embedding) and the full config. Directories are checked against their config "
        "(tensor names and shapes) without loading the weights into memory.",
        epilog="examples:\n  transferlab info bert-base\n  transferlab info runs/pretrain/final --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("model", metavar="DIR|PRESET", help="model directory, builtin:NAME, or preset name")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    q.set_defaults(func=_info)


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    import shutil

    from ..hf import HF_TOKENIZER_FILES

    copied = []
    for name in HF_TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _tokenizer_record(d: Path) -> dict:
    """config.json's record of the tokenizer in ``d`` (none when there is none we can read)."""
    from ..checks import tokenizer_record
    from ..errors import ConfigError, DataError
    from ..tokenizer import Tokenizer

    try:
        return tokenizer_record(Tokenizer.from_pretrained(d))
    except (DataError, ConfigError):  # no tokenizer of ours to check against later: record nothing
        return {}


def _convert(args: argparse.Namespace) -> int:
    from ..hf import resolve_builtin
    from ..outputs import Output

    src = resolve_builtin(args.from_hf or args.to_hf)
    # never replace the source, a folder holding it, or anything that is not an earlier export
    with Output(args.out, "convert-from-hf" if args.from_hf else "convert-to-hf", force=args.force, inputs=[src]):
        return _convert_locked(args)


def _convert_locked(args: argparse.Namespace) -> int:
    from .. import interop
    from ..errors import ConfigError
    from ..hf import export_hf, from_hf, resolve_builtin
    from ..models.model import from_pretrained, read_config
    from ..utils import atomic_dir

    out = Path(args.out)
    if args.from_hf:
        src = resolve_builtin(args.from_hf)
        raw = read_config(src)
        if "model_type" not in raw or "transferlab_version" in raw:
            raise ConfigError(f"{src}: not a transformers directory (config.json has no model_type); "
                              "use --to-hf for our directories")
        model = from_hf(src)
        # label names stay with the weights (transformers' LABEL_0 ... placeholders add nothing)
        labels = interop.labels_of(src) if any(k in interop.LABEL_HEADS for k in _head_kinds(model)) else None
        extra = interop.label_config(labels) if labels and not all(
            lab == f"LABEL_{i}" for i, lab in enumerate(labels)) else {}
        with atomic_dir(out) as tmp:
            copied = _copy_tokenizer_files(src, tmp) + interop.copy_sentence_transformers(src, tmp)
            extra = {**extra, **_tokenizer_record(tmp)}  # the copied tokenizer, as config.json's record of it
            model.save_pretrained(tmp, extra_config=extra)
        what = f"{model.hf_source['model_type']} {model.hf_source['architecture']}"
    else:
        src = resolve_builtin(args.to_hf)
        raw = read_config(src)
        if "transferlab_version" not in raw:
            raise ConfigError(f"{src}: not a transferlab model directory (no transferlab_version in "
                              "config.json); use --from-hf for transformers directories")
        model = from_pretrained(src)
        export_hf(model, out, tokenizer_from=src)
        copied = [n for n in (*_tokenizer_names(), *interop.ST_FILES) if (out / n).is_file()]
        if (out / "config.json").is_file() and "id2label" in json.loads((out / "config.json").read_text()):
            copied.append("labels " + ", ".join(json.loads((out / "config.json").read_text())["id2label"].values()))
        hf_cfg = json.loads((out / "config.json").read_text())
        what = f"-> {hf_cfg['model_type']} {hf_cfg['architectures'][0]}"
    heads = ", ".join(model.config.heads) or "none"
    print(f"{src} ({what}): {model.config.family} with heads {heads}, "
          f"{model.num_parameters():,} parameters -> {out}"
          + (f" (+ {', '.join(copied)})" if copied else ""))
    return 0


def _head_kinds(model) -> list[str]:
    return [(settings or {}).get("type", name) for name, settings in model.config.heads.items()]


def _tokenizer_names() -> tuple[str, ...]:
    from ..hf import HF_TOKENIZER_FILES

    return HF_TOKENIZER_FILES


def describe(name_or_dir: str) -> dict:
    """A JSON-able description: source, family, layout, sizes, heads, parameter counts, config.

    Presets and directories are built on the meta device, so even bert-large costs no memory;
    directories are checked tensor by tensor (names and shapes) against their config.
    """
    import torch

    from ..config import PRESETS, get_preset
    from ..errors import CheckpointError
    from ..hf import from_hf, resolve_builtin
    from ..models.model import WEIGHTS_NAME, TransferModel, check_state_dict, read_config

    source: str
    p = Path(name_or_dir)
    if name_or_dir in PRESETS and not p.exists():
        cfg = get_preset(name_or_dir)
        with torch.device("meta"):
            model = TransferModel(cfg)
        source = f"preset {name_or_dir}"
    else:
        if not str(name_or_dir).startswith("builtin:") and not p.exists():
            import difflib

            close = difflib.get_close_matches(str(name_or_dir), list(PRESETS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CheckpointError(f"{name_or_dir}: no such directory and not a preset{hint}; "
                                  f"presets: {', '.join(PRESETS)}")
        d = resolve_builtin(name_or_dir)
        raw = read_config(d)
        if "model_type" in raw and "transferlab_version" not in raw:
            model = from_hf(d, meta=True)
            source = f"transformers {model.hf_source['model_type']} ({model.hf_source['architecture']}) in {d}"
        else:
            from ..config import ModelConfig

            known = set(ModelConfig.__dataclass_fields__)
            from ..config import in_file

            with in_file(d / "config.json"):
                cfg = ModelConfig.from_dict({k: v for k, v in raw.items() if k in known})
            with torch.device("meta"):
                model = TransferModel(cfg)
            check_state_dict(model, _meta_state(d / WEIGHTS_NAME), str(d / WEIGHTS_NAME))
            source = f"transferlab directory {d}"
    cfg = model.config
    total = model.num_parameters()
    non_emb = model.num_parameters(exclude_embeddings=True)
    return {
        "source": source, "family": str(cfg.family), "layout": _layout(cfg),
        "n_layers": cfg.n_layers, "n_decoder_layers": cfg.decoder_layers if cfg.is_encoder_decoder else 0,
        "d_model": cfg.d_model, "n_heads": cfg.n_heads, "head_dim": cfg.head_dim, "d_ff": cfg.d_ff,
        "vocab_size": cfg.vocab_size, "heads": list(cfg.heads), "parameters": total,
        "non_embedding_parameters": non_emb, "hf_export": _hf_export(model), "config": cfg.to_dict(),
    }


def _hf_export(model) -> str:
    """The transformers class ``convert --to-hf`` would write, or why there is none."""
    from ..errors import TransferlabError
    from ..hf import export_target

    try:
        layout, arch = export_target(model)
    except TransferlabError as e:
        return f"none ({e})"
    return f"{arch} ({layout.model_type})"


def _meta_state(file: Path) -> dict:
    """Tensor names and shapes of a safetensors file as meta tensors (reads only the header)."""
    import torch
    from safetensors import safe_open

    from ..errors import CheckpointError

    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # truncated / corrupt header
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _layout(cfg) -> str:
    parts = [
        "pre-norm" if cfg.prenorm else "post-norm", str(cfg.norm), f"{cfg.position} positions",
        str(cfg.activation), "bias" if cfg.bias else "no bias",
        "tied embeddings" if cfg.tie_embeddings else "untied output matrix",
    ]
    if cfg.pooler and cfg.family == "encoder":
        parts.append("[CLS] pooler")
    return ", ".join(parts)


def _info(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    layers = f"{info['n_layers']}" + (f" encoder + {info['n_decoder_layers']} decoder" if info["n_decoder_layers"] else "")
    print(f"source        {info['source']}")
    print(f"architecture  {info['family']}: {info['layout']}")
    print(f"size          layers {layers}, d_model {info['d_model']}, heads {info['n_heads']} x {info['head_dim']}, "
          f"d_ff {info['d_ff']}, vocab {info['vocab_size']:,}")
    print(f"heads         {', '.join(info['heads']) or 'none (backbone only)'}")
    print(f"parameters    {info['parameters']:,} total, {info['non_embedding_parameters']:,} non-embedding")
    print(f"to-hf         {info['hf_export']}")
    import textwrap

    items = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in info["config"].items())
    print(textwrap.fill(items, width=100, initial_indent="config        ", subsequent_indent=" " * 14,
                        break_on_hyphens=False))
    return 0
