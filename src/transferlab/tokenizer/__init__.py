"""Tokenizers: a thin, explicit wrapper around Hugging Face ``tokenizers`` (Rust).

Three kinds, each trained from files, ``builtin:`` corpora or an iterator of strings:

* ``wordpiece``: BERT. ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4 when trained), BERT
  normalisation (optionally lower-casing and accent stripping), ``[CLS] A [SEP] B [SEP]`` with
  token type ids 0/1.
* ``bpe``: GPT-2 byte-level BPE. ``<|endoftext|>`` is both bos and eos; trained vocabularies also
  get ``<pad>`` and ``<mask>`` (the GPT-2 vocabulary itself has no pad token: set
  ``pad_token="<|endoftext|>"`` to pad). No special tokens are added around sequences.
* ``unigram``: T5/SentencePiece style. ``<pad>`` (0), ``</s>`` (1, eos, appended to every
  sequence), ``<unk>`` (2), and ``n_sentinels`` sentinel tokens ``<extra_id_0>`` ... at the top
  of the vocabulary (``<extra_id_0>`` has the highest id, as in T5).

Existing vocabularies load with :meth:`Tokenizer.from_pretrained`: a folder saved by
:meth:`Tokenizer.save`, a BERT ``vocab.txt``, any ``tokenizer.json``, GPT-2 ``encoder.json`` +
``vocab.bpe``, and the real ones shipped in pip packages: ``builtin:gpt2`` and ``builtin:minilm``.

Calling the tokenizer (``tok(texts, padding=True, ...)``) mirrors the ``transformers`` API and is
checked against it token for token in ``tests/tokenizer/test_tokenizer.py``.

The package, by job: :mod:`.wrapper` (the :class:`Tokenizer` and its encode/decode/save/load),
:mod:`.training` (pipelines of the three kinds and training inputs), :mod:`.metadata` (the
transformers class and settings a saved tokenizer is read back with), :mod:`.common` (kinds,
roles, default special tokens).
"""

from __future__ import annotations

from .common import FORMAT_VERSION, KINDS, SPECIAL_ROLES
from .wrapper import BatchEncoding, Tokenizer

__all__ = ["Tokenizer", "BatchEncoding", "KINDS", "SPECIAL_ROLES", "FORMAT_VERSION"]
