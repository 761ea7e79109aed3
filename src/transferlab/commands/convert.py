"""``transferlab convert``: to and from transformers directories (key maps in :mod:`transferlab.interop.hf`)."""

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


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    import shutil

    from ..interop import HF_TOKENIZER_FILES

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
    from ..hub import resolve_builtin
    from ..outputs import Output

    src = resolve_builtin(args.from_hf or args.to_hf)
    # never replace the source, a folder holding it, or anything that is not an earlier export
    with Output(args.out, "convert-from-hf" if args.from_hf else "convert-to-hf", force=args.force, inputs=[src]):
        return _convert_locked(args)


def _convert_locked(args: argparse.Namespace) -> int:
    from .. import interop
    from ..errors import ConfigError
    from ..interop.hf import export_hf, from_hf
    from ..hub import resolve_builtin
    from ..interop.loading import from_pretrained
    from ..models.model import read_config
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
        from ..interop.hf.convert import check_transformer_family

        check_transformer_family(raw.get("family", "encoder"), str(src))  # before loading any weights
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
    from ..interop import HF_TOKENIZER_FILES

    return HF_TOKENIZER_FILES
