"""``transferlab tokenizer train|encode``: train a WordPiece/BPE/Unigram tokenizer, inspect one."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from ..data.corpus import DOC_SEPS, FORMATS


@dataclass
class TrainTokenizerSettings:
    """What ``tokenizer train`` reads: the kind and size of the vocabulary, the corpus, the output."""

    input: list[str] = field(metadata={"metavar": "PATH"})
    """a file, a folder or builtin:NAME (builtin:reviews+news, builtin:ptb); repeatable"""
    out: str = field(metadata={"metavar": "DIR"})
    """folder to save the tokenizer in (replaced whole; an existing folder must be an earlier tokenizer, see
    docs/outputs.md)"""
    kind: str = field(default="wordpiece", metadata={"choices": ("wordpiece", "bpe", "unigram")})
    """wordpiece: BERT [PAD] [UNK] [CLS] [SEP] [MASK]; bpe: GPT-2 byte level, <|endoftext|>; unigram:
    T5/SentencePiece with <extra_id_N> sentinels"""
    vocab_size: int = 8000
    """vocabulary size incl. special tokens"""
    force: bool = False
    """replace --out even if it holds something else (a model folder, other files)"""
    lowercase: bool | None = None
    """lower-case text (default: yes for wordpiece, no for bpe/unigram)"""
    min_frequency: int = 2
    """minimum merge frequency"""
    sentinels: int = 100
    """unigram sentinel tokens"""
    format: str | None = field(default=None, metadata={"choices": FORMATS})
    """input format (default: from the file suffix)"""
    text_column: str = "text"
    """JSONL field / CSV column with the text"""
    doc_sep: str = field(default="blank", metadata={"choices": DOC_SEPS})
    """text files: documents separated by blank lines, one per line, or one per file"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import GRAMMAR_EPILOG, add_config_arguments

    p = subparsers.add_parser(
        "tokenizer", help="train a tokenizer or encode text with one",
        description="Train a tokenizer (Hugging Face `tokenizers`) or show how one encodes text.",
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    t = sub.add_parser(
        "train", help="train a tokenizer from files or a built-in corpus",
        description="Train a WordPiece (BERT), byte-level BPE (GPT-2) or Unigram (T5) tokenizer and save "
        "it as a folder (tokenizer.json + tokenizer_config.json).",
        epilog=GRAMMAR_EPILOG + "\n\nexample: transferlab tokenizer train --kind wordpiece --vocab-size 8000 "
        "--input builtin:reviews+news --out runs/tok",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(t, TrainTokenizerSettings)
    t.set_defaults(func=_train)

    e = sub.add_parser("encode", help="print the tokens and ids of some text",
                       description="Encode each TEXT and print its tokens and ids.")
    e.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a saved tokenizer folder, vocab.txt, tokenizer.json, builtin:gpt2 or builtin:minilm")
    e.add_argument("--no-special-tokens", action="store_true", help="do not add [CLS]/[SEP] or </s>")
    e.add_argument("text", nargs="+", help="text(s) to encode")
    e.set_defaults(func=_encode)


def _train(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli import config_from_args
    from ..data.corpus import BUILTIN_PREFIX, resolve_inputs
    from ..outputs import Output
    from ..tokenizer import Tokenizer
    from ..utils import atomic_dir

    args = config_from_args(ns, TrainTokenizerSettings, "tokenizer train")
    # --input names corpora only: a missing path is an error here, never training text (the
    # Python API also takes literal strings, and took `--input corpus_typo` for one)
    resolve_inputs(args.input, args.format, flag="--input")
    inputs = [s if s.startswith(BUILTIN_PREFIX) else Path(s) for s in args.input]
    t0 = time.perf_counter()
    # a model folder (or anything else) is refused: replacing its tokenizer would silently break it
    with Output(args.out, "tokenizer", force=args.force, inputs=args.input, inside_ok=False):
        tok = Tokenizer.train(
            inputs, kind=args.kind, vocab_size=args.vocab_size, lowercase=args.lowercase,
            min_frequency=args.min_frequency, n_sentinels=args.sentinels,
            show_progress=sys.stderr.isatty(),  # the Rust bars print blank lines when not on a terminal
            format=args.format, text_column=args.text_column, doc_sep=args.doc_sep,
        )
        with atomic_dir(args.out) as tmp:  # tokenizer.json and its config land together or not at all
            tok.save(tmp)
    specials = " ".join(t for t in tok.special_tokens.values() if t)
    extra = f", {len(tok.sentinel_tokens)} sentinels" if tok.sentinel_tokens else ""
    print(f"trained {tok.kind} tokenizer: vocab {tok.vocab_size}{extra}, special tokens {specials}, "
          f"lowercase={tok.lowercase}, {time.perf_counter() - t0:.1f}s -> {args.out}")
    print(f"fingerprint {tok.fingerprint[:16]}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from ..tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    for text in args.text:
        enc = tok(text, add_special_tokens=not args.no_special_tokens)
        ids = enc["input_ids"]
        print(f"text:   {text}")
        print(f"tokens: {' '.join(tok.convert_ids_to_tokens(ids))}")
        print(f"ids:    {' '.join(map(str, ids))}")
    return 0
