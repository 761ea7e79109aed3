"""Models: one block (blocks.py), three families (families.py), heads (heads.py), and the
user-facing TransferModel (model.py).

``from_pretrained`` here is the one loader (:func:`transferlab.interop.loading.from_pretrained`:
our folders, ``transformers`` folders, ``builtin:NAME``), imported on first use so that this
package imports nothing of interop; :func:`transferlab.models.model.from_pretrained` reads our
own folders only.
"""

from typing import Any

from .blocks import KVCache
from .families import BackboneOutput, shift_tokens_right
from .model import ModelOutput, TransferModel, build_model

__all__ = ["KVCache", "BackboneOutput", "ModelOutput", "TransferModel", "build_model", "from_pretrained", "shift_tokens_right"]


def __getattr__(name: str) -> Any:
    if name == "from_pretrained":
        from ..interop.loading import from_pretrained

        return from_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
