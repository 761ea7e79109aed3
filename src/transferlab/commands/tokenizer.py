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
    language_alpha: float | None = None
    """train on text sampled by language as pre-training samples it (q_l = p_l^alpha / sum p_k^alpha, p_l the
    language's share of the bytes; XLM: 0.3): small languages repeated, large ones cut; needs inputs with
    languages (builtin:multilingual, --language, a lang field)"""
    sample_mb: float = 0.0
    """with --language-alpha: megabytes of sampled text to train on (default: as much as the inputs hold)"""
    language: list[str] = field(default_factory=list, metadata={"metavar": "CODE"})
    """language of the documents of each --input, in order (or one for all), as for `prepare --language`"""


@dataclass
class FertilitySettings:
    """What ``tokenizer fertility`` reads: tokenizers to compare and language-tagged text."""

    tokenizer: list[str] = field(metadata={"metavar": "DIR"})
    """a tokenizer folder (repeatable: one column each)"""
    input: list[str] = field(metadata={"metavar": "PATH"})
    """text with languages: builtin:multilingual, files with --language or a lang field; repeatable"""
    language: list[str] = field(default_factory=list, metadata={"metavar": "CODE"})
    """language of the documents of each --input, in order (or one for all)"""
    label: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """a column name per --tokenizer (default: the folder names)"""
    format: str | None = field(default=None, metadata={"choices": FORMATS})
    """input format (default: from the file suffix)"""
    text_column: str = "text"
    """JSONL field / CSV column with the text"""


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

    f = sub.add_parser(
        "fertility", help="tokens per word and per character of each language, for one or more tokenizers",
        description="Encode language-tagged text with each tokenizer and print a table of tokens per word "
        "(whitespace words) and tokens per character per language: a multilingual tokenizer's fairness.",
        epilog=GRAMMAR_EPILOG + "\n\nexample: transferlab tokenizer fertility --tokenizer runs/tok-a1 --tokenizer "
        "runs/tok-a03 --input builtin:multilingual",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(f, FertilitySettings)
    f.set_defaults(func=_fertility)

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
    sampled = ""
    if args.sample_mb < 0 or (args.sample_mb and args.language_alpha is None):
        from ..errors import ConfigError

        raise ConfigError(f"--sample-mb: expected a number >= 0 used with --language-alpha, got {args.sample_mb}")
    if args.language_alpha is not None:
        from ..data.multilingual import sample_by_language

        inputs, stats = sample_by_language(_language_documents(args.input, args.language, args.format,
                                                               args.text_column, args.doc_sep),
                                           args.language_alpha, int(args.sample_mb * 1e6))
        top = sorted(stats.items(), key=lambda kv: -kv[1]["q"])
        sampled = (f"sampled {sum(v['bytes'] for v in stats.values()) / 1e6:.1f} MB at alpha={args.language_alpha}: "
                   + ", ".join(f"{c} {100 * v['q']:.1f}% (p {100 * v['p']:.1f}%)" for c, v in top[:8])
                   + (f", ... {len(top) - 8} more" if len(top) > 8 else ""))
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
    if sampled:
        print(sampled)
    print(f"fingerprint {tok.fingerprint[:16]}")
    return 0


def _language_documents(inputs: list[str], languages: list[str], format: str | None, text_column: str,
                        doc_sep: str = "blank"):
    """The documents of ``inputs`` with their languages (``--language`` per input as in prepare)."""
    from ..data.corpus import iter_documents, resolve_inputs
    from ..data.multilingual import input_languages

    sources = resolve_inputs(inputs, format, flag="--input")
    return iter_documents(sources, text_column=text_column, doc_sep=doc_sep,
                          languages=input_languages(inputs, languages or None))


def _fertility(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli import config_from_args
    from ..data.multilingual import LANGUAGES, fertility
    from ..errors import ConfigError
    from ..tokenizer import Tokenizer

    args = config_from_args(ns, FertilitySettings, "tokenizer fertility")
    labels = args.label or [Path(t).name for t in args.tokenizer]
    if len(labels) != len(args.tokenizer):
        raise ConfigError(f"--label: give one per --tokenizer ({len(args.tokenizer)}), got {len(labels)}")
    docs = list(_language_documents(args.input, args.language, args.format, args.text_column))
    tables = [fertility(Tokenizer.from_pretrained(t), docs) for t in args.tokenizer]
    codes = sorted(tables[0], key=lambda c: -tables[0][c]["chars"])
    head = " | ".join(f"{lab} tok/word | {lab} tok/char" for lab in labels)
    print(f"| language | docs | words | {head} |")
    print("|---|---:|---:|" + "---:|---:|" * len(labels))
    for c in codes:
        row = tables[0][c]
        cells = " | ".join(f"{t[c]['tokens_per_word']:.2f} | {t[c]['tokens_per_char']:.3f}" for t in tables)
        name = LANGUAGES.get(c, (c,))[0]
        print(f"| {c} ({name}) | {row['docs']:,} | {row['words']:,} | {cells} |")
    for lab, t in zip(labels, tables):
        unk = sum(v["unk"] for v in t.values())
        words = sum(v["words"] for v in t.values())
        print(f"{lab}: {sum(v['tokens'] for v in t.values()) / max(words, 1):.3f} tokens per word overall, {unk} unknown tokens")
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
