"""Training and building vocabularies: the normalisation / pre-tokenisation pipelines of the three
kinds, reading ``tokenizer.json`` and guessing special tokens, and the text inputs training reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend

from ..errors import DataError
from .common import _BERT, _EOT, _TEXT_SUFFIXES, SPECIAL_ROLES, _token_content

def _wordpiece_pipeline(backend: _Backend, lowercase: bool, specials: dict[str, str | None] | None) -> None:
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    if specials and specials.get("cls") and specials.get("sep"):
        cls_t, sep_t = specials["cls"], specials["sep"]
        ids = [(cls_t, backend.token_to_id(cls_t)), (sep_t, backend.token_to_id(sep_t))]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_t} $A {sep_t}", pair=f"{cls_t} $A {sep_t} $B:1 {sep_t}:1", special_tokens=ids
        )


def _canonical_wordpiece(backend: _Backend, lowercase: bool, specials: list[str]) -> _Backend:
    """The WordPiece trainer numbers its vocabulary in hash-map order, which changes from run to
    run; renumber it (special tokens first, then by length and text) so that training on the same
    data gives the same tokenizer and the same fingerprint."""
    vocab = backend.get_vocab(with_added_tokens=False)
    rest = sorted((t for t in vocab if t not in specials), key=lambda t: (len(t.removeprefix("##")), t))
    ordered = {t: i for i, t in enumerate(specials + rest)}
    out = _Backend(models.WordPiece(ordered, unk_token=_BERT["unk"], max_input_chars_per_word=100))
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    _wordpiece_pipeline(out, lowercase, None)
    return out


def _canonical_unigram(backend: _Backend, lowercase: bool, specials: list[str]) -> _Backend:
    """The Unigram trainer's scores differ in the last bits between runs (parallel sums), tied
    pieces come in any order and required characters are appended in hash order: canonicalise
    (scores to 12 significant digits, ties by text, the appended tail sorted) so that training on
    the same data gives the same tokenizer and fingerprint."""
    pieces = json.loads(backend.to_str())["model"]["vocab"]
    head = [(t, float(sc)) for t, sc in pieces if t in specials]
    rest = sorted(((t, float(f"{sc:.12g}")) for t, sc in pieces if t not in specials), key=lambda p: (-p[1], p[0]))
    # characters the trainer must keep are appended last, below every real piece, in hash-set
    # order: give that tail's scores to its characters in sorted order
    floor = min((sc for t, sc in rest if len(t) > 1), default=float("-inf"))
    k = len(rest)
    while k > 0 and len(rest[k - 1][0]) == 1 and rest[k - 1][1] < floor:
        k -= 1
    if len(rest) - k > 1:
        tail = rest[k:]
        rest[k:] = list(zip(sorted(t for t, _ in tail), [sc for _, sc in tail]))
    vocab = head + rest
    out = _Backend(models.Unigram(vocab, unk_id=[t for t, _ in vocab].index("<unk>"), byte_fallback=False))
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    _unigram_pipeline(out, lowercase, None)
    return out


def _bpe_pipeline(backend: _Backend, lowercase: bool) -> None:
    backend.normalizer = normalizers.Lowercase() if lowercase else None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    # like transformers' GPT-2: nothing added around sequences; pairs are concatenated
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])


def _unigram_pipeline(backend: _Backend, lowercase: bool, specials: dict[str, str | None] | None) -> None:
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    if specials and specials.get("eos"):
        eos = specials["eos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, backend.token_to_id(eos))]
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read tokenizer config ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    ours = data.get("transferlab")
    if isinstance(ours, dict):  # our own section: every field has one shape
        for key, kinds, want in (("kind", (str,), "a string"), ("special_tokens", (dict,), "an object"),
                                 ("sentinel_tokens", (list,), "a list"), ("lowercase", (bool, type(None)), "true or false")):
            if key in ours and not isinstance(ours[key], kinds):
                raise DataError(f"{path}: transferlab.{key}: expected {want}, got {ours[key]!r}")
        if isinstance(ours.get("special_tokens"), dict) and not all(
                v is None or isinstance(v, str) for v in ours["special_tokens"].values()):
            raise DataError(f"{path}: transferlab.special_tokens: expected role -> token string, got {ours['special_tokens']!r}")
    elif ours is not None:
        raise DataError(f"{path}: transferlab: expected an object, got {ours!r}")
    return data


def _guess_specials(
    backend: _Backend, kind: str, cfg: dict[str, Any], smap: dict[str, Any]
) -> tuple[dict[str, str | None], list[str]]:
    """Special tokens of a foreign tokenizer.json: from transformers' config files, else by name."""
    specials: dict[str, str | None] = {}
    for role in SPECIAL_ROLES:
        tok = _token_content(smap.get(f"{role}_token")) or _token_content(cfg.get(f"{role}_token"))
        if tok is not None and backend.token_to_id(tok) is not None:
            specials[role] = tok
    vocab = backend.get_vocab(with_added_tokens=True)
    if not specials:
        if kind == "wordpiece":
            specials = {r: t for r, t in _BERT.items() if t in vocab}
        elif _EOT in vocab:
            specials = {"bos": _EOT, "eos": _EOT}
            specials.update({r: t for r, t in (("pad", "<pad>"), ("mask", "<mask>")) if t in vocab})
        else:
            names = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"}
            specials = {r: t for r, t in names.items() if t in vocab}
            if kind == "bpe" and "<s>" in vocab and "</s>" in vocab:  # RoBERTa / BART
                specials.update(cls="<s>", sep="</s>")
    sentinels = sorted((t for t in vocab if t.startswith("<extra_id_") and t.endswith(">") and t[10:-1].isdigit()),
                       key=lambda t: int(t[10:-1]))
    return specials, sentinels


# ---------------------------------------------------------------------------------- inputs
class _Counter:
    """Iterate texts and count them (to detect an empty training corpus)."""

    def __init__(self, texts: Iterator[str]) -> None:
        self.texts, self.n = texts, 0

    def __iter__(self) -> Iterator[str]:
        for t in self.texts:
            self.n += 1
            yield t


def _looks_like_path(s: str) -> bool:
    if s.startswith("builtin:"):
        return True
    if not s or len(s) > 4096 or "\n" in s:
        return False
    if os.path.exists(s):
        return True
    return not any(c.isspace() for c in s) and (os.sep in s or s.lower().endswith(_TEXT_SUFFIXES))


def _iter_texts(inputs: Any, format: str | None, text_column: str, doc_sep: str) -> Iterator[str]:
    from ..data.corpus import read_documents

    from ..data.documents import RawTexts

    if isinstance(inputs, RawTexts):
        yield from (t for t in inputs if t.strip())
        return
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, Path) or (isinstance(item, str) and _looks_like_path(item)):
            for doc in read_documents(item, format=format, text_column=text_column, doc_sep=doc_sep):
                yield doc.text
        elif isinstance(item, str):
            if item.strip():
                yield item
        else:
            raise DataError(f"training inputs must be paths, builtin: names or strings, got {type(item).__name__}")
