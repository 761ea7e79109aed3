"""What every part of the tokenizer package shares: the kinds, the special-token roles and their
default spellings, and small helpers (no ``tokenizers`` import, so anything may import it)."""

from __future__ import annotations

from typing import Any

KINDS = ("wordpiece", "bpe", "unigram")
SPECIAL_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
FORMAT_VERSION = 1
_BERT = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_EOT = "<|endoftext|>"
_DEFAULT_LOWERCASE = {"wordpiece": True, "bpe": False, "unigram": False}
_TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".ndjson", ".csv", ".tsv", ".gz", ".md", ".raw", ".tokens")


def _as_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _token_content(tok: Any) -> str | None:
    if tok is None:
        return None
    if isinstance(tok, dict):
        return tok.get("content")
    return str(tok)

