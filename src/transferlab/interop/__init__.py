"""Everything that lets tools other than transferlab read our models, and us read theirs.

* :mod:`~transferlab.interop.hf`: the weights, one key-map module per architecture family.
* :mod:`~transferlab.interop.loading`: the one loader for our folders, transformers folders and
  ``builtin:`` names.
* the metadata around the weights, so clients nobody here wrote read an exported folder correctly
  with default arguments: label names (:mod:`.labels`), the tokenizer files
  (:mod:`.tokenizer_files`) and sentence-transformers' modules (:mod:`.sentence_transformers`).

The tensors of an exported model are checked against ``transformers`` in
``tests/parity/test_hf_parity.py``; this package's ``__init__`` stays free of torch so that importing
the metadata helpers is cheap.
"""

from __future__ import annotations

from .labels import LABEL_HEADS, label_config, labels_of
from .sentence_transformers import ST_FILES, copy_sentence_transformers, write_sentence_transformers
from .tokenizer_files import HF_TOKENIZER_FILES, export_tokenizer

__all__ = ["label_config", "labels_of", "copy_sentence_transformers", "write_sentence_transformers",
           "export_tokenizer", "ST_FILES", "LABEL_HEADS", "HF_TOKENIZER_FILES"]
