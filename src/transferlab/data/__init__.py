"""Data: corpus reading, sentence splitting, tokenize-once shards, datasets and built-ins.

* :func:`read_documents` streams :class:`Document` s from text/JSONL/CSV/TSV files, folders and
  ``builtin:`` corpora, with errors that name the file and line;
* :func:`split_sentences` is a fast rule-based sentence splitter;
* :func:`prepare_corpus` tokenizes a corpus once into memory-mapped shards;
* :class:`TokenShards` reads them back in O(1) memory;
* :func:`load_task` (in :mod:`.builtin`) gives the labelled built-in tasks.
"""

from __future__ import annotations

from .builtin import TaskSplits, list_corpora, list_tasks, load_task
from .corpus import read_documents
from .documents import Document
from .dataset import TokenShards
from .prepare import prepare_corpus
from .sentences import split_sentences

__all__ = [
    "Document",
    "TaskSplits",
    "TokenShards",
    "list_corpora",
    "list_tasks",
    "load_task",
    "prepare_corpus",
    "read_documents",
    "split_sentences",
]
