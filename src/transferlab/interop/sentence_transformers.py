"""sentence-transformers' modules beside an exported encoder.

``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/`` (and ``2_Normalize/``) are copied
from the source folder when it has them (all-MiniLM-L6-v2 keeps its 256-token limit and
normalised output), else written for plain encoders as mean pooling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..utils import atomic_write_text

__all__ = ["copy_sentence_transformers", "write_sentence_transformers", "ST_FILES"]

# sentence-transformers' own files at the top of a model folder (module folders come from modules.json)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")

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


