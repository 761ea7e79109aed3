"""The backbone contract: what every consumer may ask of a model's body, for any family.

Generation, FLOPs, optimiser layer groups (discriminative learning rates, gradual unfreezing),
weight init, ``torch.compile``, ELECTRA's embedding sharing, feature extraction and fine-tuning's
dropout/attention settings ask the backbone through these members instead of reaching into
``.blocks``, ``.encoder``/``.decoder`` or ``Attention`` modules. A new family (an LSTM language
model, say) subclasses :class:`Backbone`, implements the abstract members and the ones it
supports, and calls :func:`register_family`; nothing else in the library changes.

The three transformer families (:mod:`~transferlab.models.families`) implement it on one
:class:`~transferlab.models.blocks.Stack`; ``tests/models/test_backbone_contract.py`` registers a
GRU language model with its own settings (``register_family(name, cls, options)``) as the example
to copy for a new family.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch
import torch.nn as nn

from ..config import Family, register_family_spec, resolve_family
from ..errors import ConfigError


class DecodeState(Protocol):
    """What generation needs of a family's incremental state (a KV cache, an RNN's hidden state)."""

    @property
    def seq_len(self) -> int:
        """Positions already consumed (the next token's position)."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (B',) in this order (beam search's surviving hypotheses)."""


class Backbone(nn.Module, ABC):
    """A model body of one family: token ids in, hidden states out (a ``BackboneOutput``).

    Subclasses set the class attributes, implement :meth:`forward`, :meth:`layer_groups`,
    :meth:`get_input_embeddings` and :meth:`estimate_flops`, and whichever optional members they
    support (the defaults refuse with a one-line :class:`ConfigError` or do nothing where that is
    right for every family).
    """

    #: registry name (``ModelConfig.family``); set by :func:`register_family`
    family: ClassVar[str] = ""
    #: whether :meth:`decode` continues text (decoders, encoder-decoders)
    can_generate: ClassVar[bool] = False
    #: whether :meth:`encode` gives a memory the decoder attends to
    is_encoder_decoder: ClassVar[bool] = False
    #: classification's ``pooling=auto`` for this family: ``last`` (causal), ``mean``, ``cls``
    default_pooling: ClassVar[str] = "last"

    # ------------------------------------------------------------------ forward and shape facts
    @abstractmethod
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **kwargs: Any) -> Any:
        """Hidden states of ``input_ids`` (B, T): a ``BackboneOutput``."""

    @property
    @abstractmethod
    def num_hidden_states(self) -> int:
        """``len(hidden_states)`` of the main stack with ``output_hidden_states=True`` (embeddings +
        one per layer; the encoder's for encoder-decoders): what feature extraction mixes."""

    @property
    def hidden_size(self) -> int:
        """Width C of ``last_hidden_state`` (what heads read). Heads are built from
        ``config.d_model``, so a family keeps this equal to it."""
        return int(self.config.d_model)

    @abstractmethod
    def get_input_embeddings(self) -> nn.Embedding:
        """The token table (V, E)."""

    def share_input_embeddings(self, table: nn.Embedding) -> None:
        """Read tokens through ``table``, owned (registered) by another module, and drop this
        backbone's own table (ELECTRA's generator reads the discriminator's embeddings)."""
        raise ConfigError(f"family {self.family!r} cannot share its input embeddings")

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The position ids (B, T) the main stack gives ``input_ids`` (B, T) by default.

        Permuted LM's query stream reuses its targets' positions, so it asks for the model's own
        numbering (0.., or RoBERTa's pad-aware one). Default: refuse (a family without positions).

        Args:
            input_ids: token ids (B, T).
            attention_mask: (B, T) 1 = real token, or None.

        Returns:
            Position ids (B, T).
        """
        raise ConfigError(f"family {self.family!r} has no token positions")

    def input_embeddings(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The main stack's embedding output (B, T, E) before dropout: what ELECTRA's generator
        reads when it shares the discriminator's embeddings. Default: refuse.

        Args:
            input_ids: token ids (B, T).
            token_type_ids: segment ids (B, T), or None (all 0).
            attention_mask: (B, T) 1 = real token, or None (for pad-aware positions).

        Returns:
            Embeddings (B, T, E), E = ``config.emb_dim``.
        """
        raise ConfigError(f"family {self.family!r} cannot share its embedding output")

    # ------------------------------------------------------------------ training
    @abstractmethod
    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters bottom-up: ``[embeddings, layer 1, ..., layer L, top]`` (``top``: final norm,
        pooler; may be empty). Every parameter appears once. Discriminative learning rates decay
        by depth in this list (heads sit above ``top``); gradual unfreezing thaws it top-down."""

    def compile_units(self) -> list[nn.Module]:
        """Modules ``torch.compile`` wraps one by one when the whole model is not compiled as one
        graph (FSDP shards the same units). Default: the backbone as one unit."""
        return [self]

    def fsdp_units(self) -> list[nn.Module]:
        """Modules FSDP wraps (shards) separately before the root. Default: :meth:`compile_units`."""
        return self.compile_units()

    def adapter_units(self) -> list[nn.Module]:
        """Modules whose ``nn.Linear`` layers LoRA may wrap (matched by their own last name, e.g.
        ``q_proj``), so adapters never touch embeddings, heads or poolers. Default:
        :meth:`compile_units` (a transformer's blocks)."""
        return self.compile_units()

    def init_weights(self) -> None:
        """Family-specific initialisation after the generic per-module one (e.g. GPT-2's scaled
        residual projections). Default: nothing."""

    def set_dropout(self, hidden: float | None = None, attention: float | None = None) -> None:
        """Override dropout rates in place (fine-tuning settings). Default: every ``nn.Dropout``
        gets ``hidden``; a family with attention dropout overrides this for ``attention``."""
        if hidden is not None:
            for m in self.modules():
                if isinstance(m, nn.Dropout):
                    m.p = hidden
        if attention is not None:
            raise ConfigError(f"family {self.family!r} has no attention dropout")

    def set_attention(self, impl: str) -> None:
        """Choose the attention implementation (``sdpa``/``eager``/...). Default: refuse."""
        raise ConfigError(f"family {self.family!r} has no attention implementation to choose")

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute activations in backward (per layer). Default: refuse."""
        if on:
            raise ConfigError(f"family {self.family!r} does not support gradient checkpointing")

    @classmethod
    @abstractmethod
    def estimate_flops(cls, cfg: Any, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        """Analytic matmul FLOPs of ONE sequence, heads included (see ``cost.estimate_flops``)."""

    # ------------------------------------------------------------------ decoding
    #: last position the model can embed + 1 (learned tables), None = unlimited
    @property
    def position_limit(self) -> int | None:
        return None

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device,
                  zeros: bool = False) -> DecodeState:
        """Empty incremental state for ``batch`` rows with room for ``capacity`` positions."""
        raise ConfigError(self._no_generate())

    def decode(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None,
               cache: DecodeState | None, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) of the causal stack for ``ids`` (B, T) after what ``cache``
        holds (``mask`` (B, past + T) 1 = real token), extending ``cache`` in place."""
        raise ConfigError(self._no_generate())

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder memory (B, S, C) for encoder-decoders."""
        raise ConfigError(f"family {self.family!r} has no encoder memory")

    def fast_decode_step(self, head: nn.Module, rows: int, compiled: bool = False, pack: bool = True) -> Any:
        """An accelerated one-token step (see ``models/decode_step.py``) or None: generation then
        calls :meth:`decode`. Default: None."""
        return None

    def decode_context(self, compiled: bool) -> contextlib.AbstractContextManager:
        """Held around a whole ``generate`` call (e.g. compiler settings the fast step needs).
        Default: nothing."""
        return contextlib.nullcontext()

    def _no_generate(self) -> str:
        return (f"generate needs a decoder or encoder-decoder model; this one is family={self.family!r}, "
                "which does not continue text")


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FamilyInfo:
    """A registered family: its backbone class and, optionally, a dataclass of its own settings
    (``ModelConfig.family_options``)."""

    name: str
    backbone: type[Backbone]
    options: type | None = None


FAMILIES: dict[str, FamilyInfo] = {}


def register_family(name: str, backbone: type[Backbone], options: type | None = None,
                    replace: bool = False) -> type[Backbone]:
    """Make ``name`` a valid ``ModelConfig.family`` built by ``backbone(cfg)``.

    Args:
        name: the family's name in configs (``encoder``, ``decoder``, ``gru-lm`` ...).
        backbone: a :class:`Backbone` subclass taking a ``ModelConfig``.
        options: optional dataclass of the family's own settings: ``cfg.family_options`` is an
            instance of it (defaults when config.json has none), checked against its field types
            (and its ``RANGES`` / ``validate()`` when it has them), saved in config.json.
        replace: allow re-registering a name with another class (tests).

    Returns:
        ``backbone`` (so it can be used as a decorator helper).
    """
    if not (isinstance(backbone, type) and issubclass(backbone, Backbone)):
        raise TypeError(f"register_family({name!r}): {backbone!r} is not a Backbone subclass")
    if name in FAMILIES and not replace and FAMILIES[name].backbone is not backbone:
        raise ConfigError(f"family {name!r} is already registered ({FAMILIES[name].backbone.__name__})")
    if name in Family._value2member_map_ and options is not None:
        raise ConfigError(f"family {name!r} is built in: its settings are ModelConfig fields, not options")
    register_family_spec(name, options, causal=backbone.can_generate and not backbone.is_encoder_decoder,
                         encoder_decoder=backbone.is_encoder_decoder, pooling=backbone.default_pooling)
    backbone.family = name
    FAMILIES[name] = FamilyInfo(name, backbone, options)
    return backbone


def family_info(name: str) -> FamilyInfo:
    """The registered family ``name``; a one-line error listing the known ones otherwise.
    (The built-in families register when ``transferlab.models`` is imported.)"""
    info = FAMILIES.get(str(name))
    if info is None:
        resolve_family(name)  # imports a family of config.FAMILY_MODULES; raises for names nobody registered
        info = FAMILIES.get(str(name))
    if info is None:
        raise ConfigError(f"model.family: {str(name)!r} has settings but no backbone; register it with "
                          "models.backbone.register_family")
    return info


def build_backbone(cfg: Any) -> Backbone:
    """The backbone of ``cfg.family``."""
    return family_info(cfg.family).backbone(cfg)


def backbone_of(model: nn.Module) -> Backbone:
    """``model.backbone`` for a TransferModel (or the model itself when it is a Backbone)."""
    b = model if isinstance(model, Backbone) else getattr(model, "backbone", None)
    if not isinstance(b, Backbone):
        raise TypeError(f"{type(model).__name__} has no Backbone")
    return b


Factory = Callable[[Any], Backbone]
