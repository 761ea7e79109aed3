"""transformers metadata of a saved tokenizer: which ``*TokenizerFast`` class rebuilds ours exactly
(``tokenizer_config.json``'s ``tokenizer_class`` and the settings it needs), and the facts of the
model folder it sits in (``model_type``, positions, token types).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, models, pre_tokenizers, processors

from .common import SPECIAL_ROLES

# the special-token roles transformers knows by name (all of ours)
_HF_ROLES = SPECIAL_ROLES
# texts the post-processor check encodes: single, pair, empty, and a special token inside
_PROBES = ("Hello, world!", "two words", "", "a b c d e")


def _state(obj: Any) -> Any:
    """A ``tokenizers`` component as JSON data (how it serialises inside tokenizer.json)."""
    return json.loads(obj.__getstate__())


def _same_post(tk: _Backend, post: Any) -> bool:
    """Whether ``post`` adds the same special tokens and type ids as ``tk``'s own post-processor
    (on probe singles and pairs): BertProcessing and an equivalent TemplateProcessing differ in
    JSON but not in what they produce."""
    other = _Backend.from_str(tk.to_str())
    other.post_processor = post
    for a in _PROBES:
        for b in (None, "second segment"):
            x = tk.encode(a, b, add_special_tokens=True) if b is not None else tk.encode(a, add_special_tokens=True)
            y = other.encode(a, b, add_special_tokens=True) if b is not None else other.encode(a, add_special_tokens=True)
            if (x.ids, x.type_ids, x.offsets) != (y.ids, y.type_ids, y.offsets):
                return False
    return True


def _model_rest(model: dict[str, Any], drop: tuple[str, ...] = ("vocab", "merges")) -> dict[str, Any]:
    """A model's settings without its vocabulary; an unset BPE prefix/suffix is the empty one."""
    rest = {k: v for k, v in model.items() if k not in drop}
    for k in ("continuing_subword_prefix", "end_of_word_suffix"):
        if rest.get(k) is None and k in rest:
            rest[k] = ""
    return rest


def _fit_bert(tok: Any, j: dict[str, Any]) -> dict[str, Any] | None:
    """transformers 5's BertTokenizer rebuilds the pipeline from vocab + do_lower_case etc.; it
    fits when ours is that pipeline (the settings are read off our normaliser)."""
    n, m = j.get("normalizer") or {}, j.get("model") or {}
    if tok.kind != "wordpiece" or n.get("type") != "BertNormalizer" or not n.get("clean_text"):
        return None
    if not (tok.cls_token and tok.sep_token and tok.unk_token):
        return None
    if (j.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return None
    if j.get("decoder") != _state(decoders.WordPiece(prefix="##")):
        return None
    if m.get("type") != "WordPiece" or m.get("unk_token") != tok.unk_token or m.get("continuing_subword_prefix") != "##" \
            or m.get("max_input_chars_per_word") != 100:
        return None
    post = processors.TemplateProcessing(
        single=f"{tok.cls_token}:0 $A:0 {tok.sep_token}:0", pair=f"{tok.cls_token}:0 $A:0 {tok.sep_token}:0 $B:1 {tok.sep_token}:1",
        special_tokens=[(tok.cls_token, tok.cls_token_id), (tok.sep_token, tok.sep_token_id)])
    if not _same_post(tok.backend, post):
        return None
    return {"do_lower_case": bool(n.get("lowercase")), "strip_accents": n.get("strip_accents"),
            "tokenize_chinese_chars": bool(n.get("handle_chinese_chars")), "do_basic_tokenize": True}


def _byte_level_prefix(tok: Any, j: dict[str, Any]) -> bool | None:
    """``add_prefix_space`` of a GPT-2 style byte-level BPE pipeline, or None when ours is not one
    (a normaliser, other splitting, or BPE settings GPT2Tokenizer does not rebuild)."""
    pre, m = j.get("pre_tokenizer") or {}, j.get("model") or {}
    if tok.kind != "bpe" or j.get("normalizer") is not None or pre.get("type") != "ByteLevel":
        return None
    aps = bool(pre.get("add_prefix_space"))
    if pre != _state(pre_tokenizers.ByteLevel(add_prefix_space=aps)):
        return None
    if (j.get("decoder") or {}).get("type") != "ByteLevel":  # its settings do not change decoding
        return None
    want = _model_rest(_state(models.BPE(vocab={}, merges=[], dropout=None, continuing_subword_prefix="",
                                         end_of_word_suffix="", fuse_unk=False)), ("vocab", "merges", "unk_token"))
    return aps if _model_rest(m, ("vocab", "merges", "unk_token")) == want else None


def _fit_gpt2(tok: Any, j: dict[str, Any]) -> dict[str, Any] | None:
    # GPT2Tokenizer keeps tokenizer.json's post-processor (nothing, for ours)
    aps = _byte_level_prefix(tok, j)
    return None if aps is None else {"add_prefix_space": aps, "errors": "replace"}


def _fit_roberta(tok: Any, j: dict[str, Any]) -> dict[str, Any] | None:
    aps = _byte_level_prefix(tok, j)
    if aps is None or not (tok.cls_token and tok.sep_token):
        return None
    post = processors.RobertaProcessing((tok.sep_token, tok.sep_token_id), (tok.cls_token, tok.cls_token_id), True, aps)
    if not _same_post(tok.backend, post):
        return None
    return {"add_prefix_space": aps, "trim_offsets": True, "errors": "replace"}


def _fit_t5(tok: Any, j: dict[str, Any]) -> dict[str, Any] | None:
    """T5Tokenizer rebuilds: (precompiled charsmap normaliser), whitespace split + metaspace,
    unk at id 2, ``</s>`` appended. Our own unigram pipeline (NFKC) is not that one."""
    n, m = j.get("normalizer"), j.get("model") or {}
    if tok.kind != "unigram" or not (n is None or n.get("type") == "Precompiled"):
        return None
    meta = dict(replacement="\u2581", prepend_scheme="always", split=True)
    pre = _state(pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**meta)]))
    if j.get("pre_tokenizer") != pre or j.get("decoder") != _state(decoders.Metaspace(**meta)):
        return None
    if m.get("type") != "Unigram" or m.get("unk_id") != 2 or m.get("byte_fallback"):
        return None
    if tok.eos_token is None or tok.unk_token_id != 2:
        return None
    post = processors.TemplateProcessing(single=["$A", tok.eos_token], pair=["$A", tok.eos_token, "$B", tok.eos_token],
                                         special_tokens=[(tok.eos_token, tok.eos_token_id)])
    if not _same_post(tok.backend, post):
        return None
    return {"extra_ids": len(tok.sentinel_tokens)}


_HF_CLASSES = {"BertTokenizerFast": _fit_bert, "GPT2TokenizerFast": _fit_gpt2, "RobertaTokenizerFast": _fit_roberta,
               "BartTokenizerFast": _fit_roberta, "T5TokenizerFast": _fit_t5}


def _hf_tokenizer_class(tok: Any, model_type: str | None) -> tuple[str, dict[str, Any]]:
    """``(tokenizer_class, its settings)`` for tokenizer_config.json.

    transformers 5's named classes rebuild the tokenizer from the vocabulary with their own
    normaliser and splitting, ignoring ours: a class is named only when it rebuilds exactly our
    pipeline. Otherwise ``TokenizersBackend``, which loads tokenizer.json unchanged.
    """
    order = {"wordpiece": ["BertTokenizerFast"], "unigram": ["T5TokenizerFast"],
             "bpe": ["GPT2TokenizerFast", "RobertaTokenizerFast"]}[tok.kind]
    if model_type in ("roberta", "bart") and tok.kind == "bpe":
        order = [f"{model_type.capitalize()}TokenizerFast", "GPT2TokenizerFast"]
    j = json.loads(tok.backend.to_str())
    for name in order:
        init = _HF_CLASSES[name](tok, j)
        if init is not None:
            return name, init
    return "TokenizersBackend", {}


def _model_facts(config: Path) -> dict[str, Any]:
    """What a tokenizer saved beside a model should know of it: ``max_positions``, whether it reads
    ``token_type_ids``, and the transformers ``model_type`` (from our config.json or theirs)."""
    try:
        raw = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    facts: dict[str, Any] = {}
    if "transferlab_version" in raw:
        if isinstance(raw.get("max_positions"), int):
            facts["max_positions"] = raw["max_positions"]  # usable positions (an offset is not counted)
        tv = raw.get("type_vocab_size")
        facts["token_type_ids"] = bool(raw.get("family", "encoder") == "encoder" and isinstance(tv, int) and tv > 0)
        return facts
    mt = raw.get("model_type")
    if isinstance(mt, str):
        facts["model_type"] = mt
    n = raw.get("max_position_embeddings", raw.get("n_positions"))
    if isinstance(n, int):
        facts["max_positions"] = n - (int(raw.get("pad_token_id") or 1) + 1 if mt == "roberta" else 0)
    tv = raw.get("type_vocab_size")
    if mt in ("bert", "roformer", "electra", "distilbert", "roberta"):
        facts["token_type_ids"] = isinstance(tv, int) and tv > 1
    return facts
