"""transferlab: pre-train, then fine-tune.

Three transformer families (encoder, decoder, encoder-decoder) built from one block, every
pre-training objective of the paradigm as a collator + loss, fine-tuning with honest baselines,
and the cost of every run.
"""

from __future__ import annotations

from ._version import __version__  # noqa: F401
from .errors import TransferlabError, ConfigError, DataError, CheckpointError  # noqa: F401


def __getattr__(name: str):
    # Lazy imports keep `import transferlab` (and the CLI's --help) fast: torch loads on first use.
    if name == "from_pretrained":  # ours, transformers folders and builtin: (the one dispatch)
        from .interop.loading import from_pretrained

        return from_pretrained
    if name in ("TransferModel", "build_model"):
        from .models import model as _m

        return getattr(_m, name)
    if name in ("ModelConfig", "get_preset", "list_presets"):
        from . import config as _c

        return getattr(_c, name)
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
