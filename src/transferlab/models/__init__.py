"""Models: one block (blocks.py), three families (families.py), heads (heads.py), and the
user-facing TransferModel (model.py)."""

from .blocks import KVCache
from .families import BackboneOutput, shift_tokens_right
from .model import ModelOutput, TransferModel, build_model, from_pretrained

__all__ = ["KVCache", "BackboneOutput", "ModelOutput", "TransferModel", "build_model", "from_pretrained", "shift_tokens_right"]
