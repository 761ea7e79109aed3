"""``transferlab prepare``: tokenize a corpus once into memory-mapped shards."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data.corpus import DOC_SEPS, FORMATS

    p = subparsers.add_parser(
        "prepare", help="tokenize a corpus once into memory-mapped shards",
        description="Stream a corpus, tokenize it in worker processes and write train/validation token "
        "arrays (uint16/uint32 memmaps) with document and sentence offsets and a meta.json. "
        "Re-running on unchanged inputs is a no-op; an interrupted run leaves nothing that looks complete.",
        epilog="example: transferlab prepare --tokenizer runs/tok --input builtin:reviews+news --out runs/data",
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="tokenizer folder (from `transferlab tokenizer train`), vocab.txt, tokenizer.json, "
                   "builtin:gpt2 or builtin:minilm")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a file, a folder or builtin:NAME (builtin:reviews+news, builtin:ptb); repeatable")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--workers", type=int, default=2, help="tokenizer processes, 0 = in process (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="fraction of documents held out for validation (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic split (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from the file suffix)")
    p.add_argument("--text-column", default="text", help="JSONL field / CSV column with the text (default: %(default)s)")
    p.add_argument("--doc-sep", choices=DOC_SEPS, default="blank",
                   help="text files: documents separated by blank lines, one per line, or one per file")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if the output is up to date, and replace --out even if it is not a "
                   "prepared dataset (its files are lost)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_corpus
    from ..outputs import Output

    with Output(args.out, "prepare", force=args.force, inputs=[args.tokenizer, *args.input], inside_ok=False):
        s = prepare_corpus(
            args.input, args.tokenizer, args.out, val_fraction=args.val_fraction, seed=args.seed,
            workers=args.workers, format=args.format, text_column=args.text_column, doc_sep=args.doc_sep,
            force=args.force, progress=not args.no_progress,
        )
    if s["skipped"]:
        print(f"{args.out} is up to date (same inputs, tokenizer and options): nothing to do; --force rebuilds")
    splits = ", ".join(f"{k} {v['tokens']:,} tokens / {v['documents']:,} docs" for k, v in s["splits"].items())
    print(f"tokens {s['tokens']:,}  documents {s['documents']:,}  sentences {s['sentences']:,}  "
          f"text {s['bytes'] / 1e6:.1f} MB  dtype {s['dtype']}")
    print(f"splits: {splits}")
    if not s["skipped"]:
        print(f"{s['seconds']:.1f}s  {s['mb_per_s']:.2f} MB/s  {s['tokens_per_s'] / 1e3:,.0f}k tokens/s -> {s['out_dir']}")
    return 0
