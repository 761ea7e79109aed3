"""Task types of fine-tuning, one module each, and their registry.

=====================  ======================  =================================================
task type              head                    inputs -> targets
=====================  ======================  =================================================
classification         classification          ``[CLS] A [SEP]`` -> class (cross-entropy)
pair-classification    classification          ``[CLS] A [SEP] B [SEP]`` + segment ids -> class
regression             classification (1)      text or pair -> standardised number (MSE)
tagging                token_classification    words -> BIO tag on each word's first sub-word
                                               (other sub-words -100); Viterbi BIO decoding
qa                     span                    ``[CLS] question [SEP] context window [SEP]`` ->
                                               start/end token, mapped back to characters
seq2seq                lm                      encoder-decoder: source -> target (teacher
                                               forcing); decoder-only: ``source + suffix`` ->
                                               completion, loss on the completion tokens only
=====================  ======================  =================================================

A new task type is one module: subclass :class:`TaskType` and call :func:`register_task_type`.
Modules dropped into this package register themselves on import (after the built-in ones, which
keep their order); code elsewhere registers its own types the same way.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    TASK_TYPES,
    TaskType,
    build_wiring,
    get_task_type,
    register_task_type,
    task_type_names,
)
from .classification import Classification, PairClassification  # noqa: E402  (registration order)
from .regression import Regression  # noqa: E402
from .tagging import Tagging  # noqa: E402
from .qa import QA  # noqa: E402
from .seq2seq import Seq2Seq  # noqa: E402

for _m in pkgutil.iter_modules(__path__):  # any other module here is a task type too
    importlib.import_module(f"{__name__}.{_m.name}")
del _m

__all__ = ["TASK_TYPES", "TaskType", "build_wiring", "get_task_type", "register_task_type", "task_type_names",
           "Classification", "PairClassification", "Regression", "Tagging", "QA", "Seq2Seq"]
