"""``transferlab prepare``: tokenize a corpus once into memory-mapped shards."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..data.corpus import DOC_SEPS, FORMATS


@dataclass
class PrepareSettings:
    """What ``prepare`` reads: the tokenizer, the corpus, the output and the split."""

    tokenizer: str = field(metadata={"metavar": "DIR"})
    """tokenizer folder (from `transferlab tokenizer train`), vocab.txt, tokenizer.json, builtin:gpt2 or
    builtin:minilm"""
    input: list[str] = field(metadata={"metavar": "PATH"})
    """a file, a folder or builtin:NAME (builtin:reviews+news, builtin:ptb, builtin:multilingual,
    builtin:multilingual/es); repeatable"""
    out: str = field(metadata={"metavar": "DIR"})
    """output folder"""
    workers: int = 2
    """tokenizer processes, 0 = in process"""
    val_fraction: float = 0.01
    """fraction of documents held out for validation"""
    seed: int = 0
    """seed of the deterministic split"""
    format: str | None = field(default=None, metadata={"choices": FORMATS})
    """input format (default: from the file suffix)"""
    text_column: str = "text"
    """JSONL field / CSV column with the text"""
    language: list[str] = field(default_factory=list, metadata={"metavar": "CODE"})
    """language (ISO 639-1: en, es, zh ...) of the documents of each --input, in order (or one for all);
    a row's lang field/column and a built-in corpus's own language win; recorded per document"""
    lang_column: str = "lang"
    """JSONL field / CSV column with a row's language code, read when present"""
    doc_sep: str = field(default="blank", metadata={"choices": DOC_SEPS})
    """text files: documents separated by blank lines, one per line, or one per file"""
    force: bool = False
    """rebuild even if the output is up to date, and replace --out even if it is not a prepared dataset (its
    files are lost)"""
    no_progress: bool = False
    """hide the progress bar"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    p = subparsers.add_parser(
        "prepare", help="tokenize a corpus once into memory-mapped shards",
        description="Stream a corpus, tokenize it in worker processes and write train/validation token "
        "arrays (uint16/uint32 memmaps) with document and sentence offsets and a meta.json. "
        "Re-running on unchanged inputs is a no-op; an interrupted run leaves nothing that looks complete.",
        epilog=GRAMMAR_EPILOG + "\n\nexample: transferlab prepare --tokenizer runs/tok --input builtin:reviews+news "
        "--out runs/data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, PrepareSettings)
    p.set_defaults(func=_prepare)


def _prepare(ns: argparse.Namespace) -> int:
    from ..cli import config_from_args
    from ..data.prepare import prepare_corpus
    from ..outputs import Output

    args = config_from_args(ns, PrepareSettings, "prepare")

    with Output(args.out, "prepare", force=args.force, inputs=[args.tokenizer, *args.input], inside_ok=False):
        s = prepare_corpus(
            args.input, args.tokenizer, args.out, val_fraction=args.val_fraction, seed=args.seed,
            workers=args.workers, format=args.format, text_column=args.text_column, doc_sep=args.doc_sep,
            force=args.force, progress=not args.no_progress, languages=args.language or None,
            lang_column=args.lang_column,
        )
    if s["skipped"]:
        print(f"{args.out} is up to date (same inputs, tokenizer and options): nothing to do; --force rebuilds")
    splits = ", ".join(f"{k} {v['tokens']:,} tokens / {v['documents']:,} docs" for k, v in s["splits"].items())
    print(f"tokens {s['tokens']:,}  documents {s['documents']:,}  sentences {s['sentences']:,}  "
          f"text {s['bytes'] / 1e6:.1f} MB  dtype {s['dtype']}")
    print(f"splits: {splits}")
    langs = s["splits"].get("train", {}).get("languages")
    if langs:
        total = max(sum(v["tokens"] for v in langs.values()), 1)
        top = sorted(langs.items(), key=lambda kv: -kv[1]["tokens"])
        print(f"languages ({len(langs)}): " + ", ".join(f"{k} {100 * v['tokens'] / total:.2f}%" for k, v in top))
    if not s["skipped"]:
        print(f"{s['seconds']:.1f}s  {s['mb_per_s']:.2f} MB/s  {s['tokens_per_s'] / 1e3:,.0f}k tokens/s -> {s['out_dir']}")
    return 0
