"""Checks every command shares: the device, the input length, the tokenizer that goes with a model.

* :func:`resolve_device` — re-exported from :mod:`transferlab.runtime`, where the device choice lives.
* :func:`cap_max_length` — inputs longer than the model's position table are cut to it (as
  ``finetune`` does) with one note, instead of an ``IndexError`` in the embedding lookup.
* :func:`check_tokenizer` — a tokenizer must fit the model it is used with: no id beyond the
  embedding table, and the special tokens the model was built with (pad/bos/eos recorded in its
  config) must be the tokenizer's own; and where the model folder's ``config.json`` records the
  tokenizer it was saved with (:func:`tokenizer_record`), it must be that one.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .runtime import DEVICES, resolve_device  # noqa: F401  (the device choice lives in runtime.py)


def position_limit(config: Any) -> int | None:
    """Longest input the model's position table covers (None: rotary/relative/none: no limit)."""
    from .finetune.inputs import position_limit as _limit

    return _limit(config)


_NOTED: set[tuple[int, int]] = set()


def cap_max_length(model: Any, max_length: int, what: str = "--max-length", quiet: bool = False) -> int:
    """``max_length`` cut to the model's positions, with one note on stderr per (limit, request)."""
    cfg = getattr(model, "config", None)
    limit = position_limit(cfg) if cfg is not None else None
    if limit is None or max_length <= limit:
        return max_length
    if not quiet and (limit, max_length) not in _NOTED:
        _NOTED.add((limit, max_length))
        print(f"note: {what} {max_length} is longer than the model's {limit} positions; inputs are cut to "
              f"{limit} tokens", file=sys.stderr)
    return limit


def check_tokenizer(model_config: Any, tok: Any, where: str = "the tokenizer", model_dir: Any = None) -> None:
    """Refuse a tokenizer that does not belong to a model.

    Two checks, both on what the model records: its ``vocab_size`` (no token id may fall outside
    the embedding table) and its special ids (``pad_token_id``, ``bos_token_id``,
    ``eos_token_id``: a tokenizer that has such a token must give it the model's id; a model
    pre-trained with a WordPiece tokenizer has pad 0 = ``[PAD]``, a byte-level BPE one has
    ``<|endoftext|>`` where the model's eos is). A tokenizer of another kind with a smaller
    vocabulary passes the size check but not this one. A third, on the folder: the tokenizer its
    ``config.json`` records (see :func:`check_tokenizer_record`).

    Args:
        model_config: the model's config (``vocab_size``, ``pad/bos/eos_token_id``).
        tok: the tokenizer to be used with it.
        where: what the messages name.
        model_dir: the model's folder; default: ``where`` when that is a folder (every command
            names the model folder it loaded there).

    Raises:
        ConfigError: naming ``where``, the model's and the tokenizer's values.
    """
    n = len(tok) if hasattr(tok, "__len__") else int(getattr(tok, "vocab_size"))
    vocab = int(model_config.vocab_size)
    if n > vocab:
        raise ConfigError(f"{where}: the tokenizer has {n} tokens but the model's embedding table only {vocab}; "
                          "use the tokenizer the model was trained with")
    kind = getattr(tok, "kind", "")
    for role in ("pad", "bos", "eos"):
        want = getattr(model_config, f"{role}_token_id", -1)
        have = getattr(tok, f"{role}_token_id", None)
        if want is None or want < 0 or have is None or have == want:
            continue
        # a model whose recorded id is a different token of this tokenizer: not its tokenizer
        raise ConfigError(
            f"{where}: {kind + ' ' if kind else ''}tokenizer's {role} token "
            f"{getattr(tok, f'{role}_token', None)!r} has id {have}, but the model was built with "
            f"{role}_token_id={want}; use the tokenizer the model was trained with")
    if model_dir is None and where and Path(str(where)).is_dir():
        model_dir = where
    if model_dir is not None:
        check_tokenizer_record(model_dir, tok, where)


def check_same_tokenizer(model_dir: Any, tok: Any, where: str) -> None:
    """A tokenizer given for a model folder that has its own must be of the same kind, with the same
    special tokens at the same ids (the folder's own tokenizer is the model's record of it).

    A folder without a tokenizer of its own (a bare converted checkpoint) passes.
    """
    from pathlib import Path

    from .errors import DataError
    from .tokenizer import Tokenizer

    d = Path(str(model_dir))
    if not d.is_dir():
        return
    if not ((d / "tokenizer.json").is_file() or (d / "vocab.txt").is_file()):
        check_tokenizer_record(d, tok, where)
        return
    try:
        own = Tokenizer.from_pretrained(d)
    except (DataError, ConfigError):
        check_tokenizer_record(d, tok, where)
        return
    if own.kind != tok.kind:
        raise ConfigError(f"{where}: a {tok.kind} tokenizer, but the model in {d} was trained with a {own.kind} one "
                          f"(its tokenizer.json); drop --tokenizer or give that one")
    mine = {r: (t, own.convert_tokens_to_ids(t)) for r, t in own.special_tokens.items() if t}
    theirs = {r: (t, tok.convert_tokens_to_ids(t)) for r, t in tok.special_tokens.items() if t}
    if mine != theirs:
        diff = sorted(r for r in set(mine) | set(theirs) if mine.get(r) != theirs.get(r))
        raise ConfigError(f"{where}: its special tokens differ from those of the model's own tokenizer in {d} "
                          f"({', '.join(f'{r}: {theirs.get(r)} vs {mine.get(r)}' for r in diff[:3])}); "
                          "drop --tokenizer or give the model's tokenizer")
    check_tokenizer_record(d, tok, where)


# The key of config.json under which a model folder records the tokenizer saved with it.
TOKENIZER_RECORD = "transferlab_tokenizer"


def tokenizer_record(tok: Any) -> dict[str, Any]:
    """What a model's ``config.json`` records of the tokenizer saved beside it.

    The kind and a sha256 of the vocabulary (every token with its id, added tokens included): a
    tokenizer of another kind, or one trained again on other text, has the same special ids and
    no larger a vocabulary often enough that only this tells them apart. Pass the result as
    ``save_pretrained(..., extra_config=...)`` where a model is saved with its tokenizer.

    Args:
        tok: the tokenizer saved with the model.

    Returns:
        ``{"transferlab_tokenizer": {"kind", "vocab_size", "vocab_sha256"}}``.
    """
    vocab = sorted((int(i), str(t)) for t, i in tok.get_vocab().items())  # [(id, token)], id order
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return {TOKENIZER_RECORD: {"kind": str(getattr(tok, "kind", "")), "vocab_size": len(vocab),
                               "vocab_sha256": digest.hexdigest()}}


def check_tokenizer_record(model_dir: Any, tok: Any, where: str) -> None:
    """Refuse a tokenizer that is not the one a model folder's ``config.json`` records.

    Folders saved before the record existed (or converted without a tokenizer) have none and pass.

    Args:
        model_dir: the model folder.
        tok: the tokenizer to be used with it.
        where: what the message names.

    Raises:
        ConfigError: the tokenizer's kind or vocabulary differs from the record.
        CheckpointError: the record is there but not an object with ``kind`` and ``vocab_sha256``.
    """
    file = Path(str(model_dir)) / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no (readable) config.json: loading the model says so, this check has nothing to compare
    rec = raw.get(TOKENIZER_RECORD) if isinstance(raw, dict) else None
    if rec is None:
        return
    if not (isinstance(rec, dict) and isinstance(rec.get("kind"), str) and isinstance(rec.get("vocab_sha256"), str)):
        raise CheckpointError(f"{file}: {TOKENIZER_RECORD}: expected an object with string fields kind and "
                              f"vocab_sha256, got {json.dumps(rec)[:60]}")
    have = tokenizer_record(tok)[TOKENIZER_RECORD]
    if (have["kind"], have["vocab_sha256"]) == (rec["kind"], rec["vocab_sha256"]):
        return
    raise ConfigError(
        f"{where}: a {have['kind']} tokenizer of {have['vocab_size']} tokens (vocabulary sha256 "
        f"{have['vocab_sha256'][:12]}), but the model in {file.parent} was saved with a {rec['kind']} one of "
        f"{rec.get('vocab_size', '?')} tokens ({rec['vocab_sha256'][:12]}, config.json {TOKENIZER_RECORD}); "
        "use the tokenizer the model was trained with")
