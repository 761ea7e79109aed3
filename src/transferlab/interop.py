"""Metadata that tools other than transferlab read beside the weights: label names, tokenizer
settings and sentence-transformers modules.

The tensors of an exported model are checked against ``transformers`` elsewhere (``hf.py``,
``tests/test_hf_parity.py``); this module carries what sits *around* them, so that clients nobody
here wrote read the folder correctly with default arguments:

* ``id2label`` / ``label2id`` (from the fine-tuning task): ``pipeline("text-classification")``
  prints ``positive`` instead of ``LABEL_1``, and ``token-classification`` with
  ``aggregation_strategy="simple"`` can group ``B-``/``I-`` tags into entities.
* the tokenizer files, re-saved by :meth:`transferlab.tokenizer.Tokenizer.save` with the
  exported model's ``model_type``, positions and token-type use (see there).
* sentence-transformers' ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/`` (and
  ``2_Normalize/``): copied from the source folder when it has them (all-MiniLM-L6-v2 keeps its
  256-token limit and normalised output), else written for plain encoders as mean pooling.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError
from .utils import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["label_config", "labels_of", "copy_sentence_transformers", "write_sentence_transformers",
           "export_tokenizer", "ST_FILES", "LABEL_HEADS"]

# heads whose outputs are named classes (the rest: spans, tokens of the vocabulary, numbers)
LABEL_HEADS = ("classification", "token_classification")
# sentence-transformers' own files at the top of a model folder (module folders come from modules.json)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# tokenizer files that are copied unchanged (tokenizer.json + its configs are re-written)
_VOCAB_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")


def label_config(labels: Sequence[str] | None) -> dict[str, Any]:
    """``{"id2label": {"0": name, ...}, "label2id": {name: 0, ...}}`` as transformers writes them.

    Args:
        labels: class names or BIO tags, index = logit; empty or None for tasks without names.

    Returns:
        The two maps, or ``{}`` when there are no (distinct) names.
    """
    labels = [str(x) for x in (labels or [])]
    if not labels or len(set(labels)) != len(labels):
        return {}
    return {"id2label": {str(i): lab for i, lab in enumerate(labels)}, "label2id": {lab: i for i, lab in enumerate(labels)}}


def labels_of(directory: str | Path | None) -> list[str] | None:
    """Label names of a model folder: ``id2label`` in its ``config.json``, else ``task.json``'s
    labels (folders fine-tuned before config.json carried them). None when it has neither."""
    if directory is None:
        return None
    d = Path(directory)
    for name, pick in (("config.json", _from_id2label), ("task.json", _from_task)):
        p = d / name
        if not p.is_file():
            continue
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        labels = pick(raw) if isinstance(raw, dict) else None
        if labels:
            return labels
    return None


def _from_id2label(raw: dict[str, Any]) -> list[str] | None:
    m = raw.get("id2label")
    if not isinstance(m, dict) or not m:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in m.items())
    except (TypeError, ValueError):
        return None
    if [i for i, _ in items] != list(range(len(items))):
        return None
    return [v for _, v in items]


def _from_task(raw: dict[str, Any]) -> list[str] | None:
    labels = raw.get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) and labels else None


# ---------------------------------------------------------------------------------- sentence-transformers
def _st_modules(src: Path) -> list[dict[str, Any]] | None:
    p = src / "modules.json"
    if not p.is_file():
        return None
    try:
        mods = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(mods, list) or not all(isinstance(m, dict) for m in mods):
        raise DataError(f"{p}: expected a list of modules (objects with idx, name, path, type)")
    return mods


def copy_sentence_transformers(src: str | Path, dst: str | Path) -> list[str]:
    """Copy sentence-transformers' files (``modules.json`` and the module folders it names, e.g.
    ``1_Pooling/``, ``2_Normalize/``) from ``src`` to ``dst``.

    Module paths must stay inside the folder: ``../x`` or absolute paths are refused.

    Returns:
        The names copied (empty when ``src`` is not a sentence-transformers folder).
    """
    src, dst = Path(src), Path(dst)
    mods = _st_modules(src)
    if mods is None:
        return []
    copied = []
    for name in ST_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    root = src.resolve()
    for m in mods:
        rel = str(m.get("path") or "")
        if not rel:
            continue  # the Transformer module lives in the folder itself
        p = (src / rel).resolve()
        if rel.startswith("/") or root not in p.parents:
            raise DataError(f"{src / 'modules.json'}: module path {rel!r} leaves the model folder")
        if p.is_dir():
            shutil.copytree(p, dst / rel, dirs_exist_ok=True)
            copied.append(rel + "/")
    return copied


def write_sentence_transformers(dst: str | Path, d_model: int, max_seq_length: int, normalize: bool = False) -> list[str]:
    """Write a sentence-transformers config for a plain encoder: the transformer, mean pooling over
    real tokens (what ``transferlab features --pooling mean`` computes) and optionally L2
    normalisation.

    Returns:
        The names written.
    """
    dst = Path(dst)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {"word_embedding_dimension": int(d_model), "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    (dst / "1_Pooling").mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst / "modules.json", json.dumps(mods, indent=2) + "\n")
    atomic_write_text(dst / "1_Pooling" / "config.json", json.dumps(pooling, indent=2) + "\n")
    atomic_write_text(dst / "sentence_bert_config.json",
                      json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2) + "\n")
    written = ["modules.json", "1_Pooling/", "sentence_bert_config.json"]
    if normalize:
        (dst / "2_Normalize").mkdir(exist_ok=True)
        written.append("2_Normalize/")
    return written


# ---------------------------------------------------------------------------------- tokenizer
def export_tokenizer(src: str | Path, dst: str | Path, model_type: str | None, max_positions: int | None,
                     token_type_ids: bool | None) -> list[str]:
    """Re-save the tokenizer of ``src`` into ``dst`` with the metadata of the exported model
    (see :meth:`~transferlab.tokenizer.Tokenizer.save`); vocabulary files are copied as they are.

    Returns:
        The tokenizer file names in ``dst`` (empty when ``src`` has no tokenizer).
    """
    from .tokenizer import Tokenizer

    src, dst = Path(src), Path(dst)
    names = []
    for name in _VOCAB_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            names.append(name)
    has_tok = (src / "tokenizer.json").is_file() or (src / "vocab.txt").is_file() or \
        any((src / a).is_file() and (src / b).is_file() for a, b in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")))
    if not has_tok:
        return names
    tok = Tokenizer.from_pretrained(src)
    tok.save(dst, model_type=model_type, model_max_length=max_positions, token_type_ids=token_type_ids)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] + names
