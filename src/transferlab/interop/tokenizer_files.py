"""Tokenizer files beside an exported model, re-saved with that model's metadata.

:meth:`transferlab.tokenizer.Tokenizer.save` writes the exported model's ``model_type``,
positions and token-type use, so transformers' ``AutoTokenizer`` reads the folder with default
arguments; vocabulary files are copied as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["export_tokenizer", "HF_TOKENIZER_FILES"]

# every tokenizer file a transformers folder may hold
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                      "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
# tokenizer files that are copied unchanged (tokenizer.json + its configs are re-written)
_VOCAB_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")

def export_tokenizer(src: str | Path, dst: str | Path, model_type: str | None, max_positions: int | None,
                     token_type_ids: bool | None) -> list[str]:
    """Re-save the tokenizer of ``src`` into ``dst`` with the metadata of the exported model
    (see :meth:`~transferlab.tokenizer.Tokenizer.save`); vocabulary files are copied as they are.

    Returns:
        The tokenizer file names in ``dst`` (empty when ``src`` has no tokenizer).
    """
    from ..tokenizer import Tokenizer

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
