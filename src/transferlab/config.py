"""Typed, serialisable configuration.

One :class:`ModelConfig` describes every family: an encoder (BERT/RoBERTa/ELECTRA), a decoder
(GPT) or an encoder-decoder (BART/T5) are the same stack of blocks with different switches.
Every architecture modification that papers compare (norm type and position, activation,
positions, bias, tying) is a field here, so variants can be compared in one shared setting.

Configs round-trip through JSON/YAML (``to_dict``/``from_dict``) and accept dotted overrides
``model.n_layers=4`` via :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fields import (  # noqa: F401  (re-exported: the configs and commands import them from here)
    COUNT, FINITE, FLAG_RANGES, FRACTION, NONNEG, NONNEG_INT, POSITIVE, SPECIAL_ID, UNIT, Range, check_fields,
    in_file, read_json,
)


class StrEnum(str, Enum):
    """A string enum whose values serialise as plain strings."""

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value



# ---------------------------------------------------------------------------- run-wide choices
class DType(StrEnum):
    """The one ``--dtype`` spelling of every command (``auto|bf16|fp16|fp32``).

    Training and fine-tuning use it for autocast (fp32 master weights); inference commands
    (``generate``, ``icl``) for the weights themselves. Resolved by
    :func:`transferlab.runtime.resolve_dtype`.
    """

    AUTO = "auto"  #: bf16 where the hardware has native bf16 matmuls (avx512_bf16/AMX, Ampere+), else fp32
    BF16 = "bf16"  #: bf16 (autocast when training: fp32 master weights and optimizer state)
    FP16 = "fp16"  #: fp16 (autocast with loss scaling when training), for GPUs without bf16
    FP32 = "fp32"  #: full precision everywhere


class Schedule(StrEnum):
    """Learning-rate schedules: every one starts with a linear warm-up."""

    LINEAR = "linear"  #: linear warm-up, then linear decay (to ``min_lr_ratio`` in pre-training; BERT, RoBERTa)
    COSINE = "cosine"  #: linear warm-up, then cosine decay (GPT-3, nanoGPT)
    CONSTANT = "constant"  #: linear warm-up, then constant
    SLANTED = "slanted"  #: ULMFiT slanted triangular: short rise, long linear fall to lr/32 (fine-tuning)


class Family(StrEnum):
    """The built-in (transformer) families; others are registered names (:data:`FAMILY_SPECS`)."""

    ENCODER = "encoder"  #: bidirectional stack (BERT, RoBERTa, ELECTRA)
    DECODER = "decoder"  #: causal stack (GPT)
    ENCODER_DECODER = "encoder-decoder"  #: encoder + causal decoder with cross-attention (BART, T5)


@dataclass(frozen=True)
class FamilySpec:
    """What a config knows of a registered family (the rest is its ``Backbone``'s)."""

    options: type | None = None
    """Dataclass of the family's own settings (``ModelConfig.family_options``), or None."""
    causal: bool = False
    """Decoder-only: a causal language model (``ModelConfig.is_causal``)."""
    encoder_decoder: bool = False
    """An encoder and a decoder attending to it (``ModelConfig.is_encoder_decoder``)."""
    pooling: str = "last"
    """What classification's ``pooling=auto`` means for it (``cls``, ``mean``, ``last``)."""


#: Every registered family by name (``models.backbone.register_family`` adds to it). Kept here,
#: not beside the backbones, so that validating a config does not import the models.
FAMILY_SPECS: dict[str, FamilySpec] = {
    Family.ENCODER.value: FamilySpec(pooling="cls"),
    Family.DECODER.value: FamilySpec(causal=True),
    Family.ENCODER_DECODER.value: FamilySpec(encoder_decoder=True),
}


def register_family_spec(name: str, options: type | None = None, causal: bool = False,
                         encoder_decoder: bool = False, pooling: str = "last") -> None:
    """Make ``name`` a valid ``ModelConfig.family`` (see ``models.backbone.register_family``).

    Args:
        name: the family's name.
        options: a dataclass (its fields are the family's settings, checked like any config
            section; an optional ``validate()`` method runs after), or None.
        causal: decoder-only (a causal LM).
        encoder_decoder: an encoder-decoder.
        pooling: classification's ``auto`` pooling for the family (``last`` suits a causal
            model, whose last token has read the whole text; ``mean`` a bag of vectors or a
            bidirectional model without a summary token).
    """
    if options is not None and not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"register_family({name!r}): options must be a dataclass, got {options!r}")
    if pooling not in ("cls", "mean", "last"):
        raise ValueError(f"register_family({name!r}): pooling must be cls, mean or last, got {pooling!r}")
    FAMILY_SPECS[name] = FamilySpec(options, bool(causal), bool(encoder_decoder), pooling)


#: Families that live in modules of their own, imported the first time their name is resolved (a
#: preset, a config file, a saved model folder), so that nothing imports every family up front and
#: a new family is its module plus one line here. ``name -> module``.
FAMILY_MODULES: dict[str, str] = {
    "elmo": "transferlab.models.elmo",
    "word2vec": "transferlab.models.word2vec",
    "awd-lstm": "transferlab.models.awd_lstm",
}


def resolve_family(value: Any) -> "Family | str":
    """``value`` as a :class:`Family` (built-in) or a registered family name.

    Args:
        value: a name or a :class:`Family`.

    Returns:
        The :class:`Family` member, or the registered name (a str).
    """
    name = value.value if isinstance(value, Enum) else value
    if isinstance(name, str) and name in Family._value2member_map_:
        return Family(name)
    if isinstance(name, str) and name not in FAMILY_SPECS and name in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[name])  # registers the family (models.backbone.register_family)
    if isinstance(name, str) and name in FAMILY_SPECS:
        return name
    known = list(FAMILY_SPECS) + [n for n in FAMILY_MODULES if n not in FAMILY_SPECS]
    raise ConfigError(f"model.family: {value!r} is not one of: {', '.join(known)} (the registered families)")


class Norm(StrEnum):
    LAYERNORM = "layernorm"  #: LayerNorm with bias (BERT, GPT-2, BART)
    RMSNORM = "rmsnorm"  #: RMSNorm, scale only, no mean subtraction (T5, LLaMA)


class Activation(StrEnum):
    GELU = "gelu"  #: exact erf GELU (BERT, BART)
    GELU_TANH = "gelu_tanh"  #: tanh approximation (GPT-2 "gelu_new")
    RELU = "relu"  #: original Transformer, T5 v1.0
    SWIGLU = "swiglu"  #: gated SiLU (PaLM, LLaMA)
    GEGLU = "geglu"  #: gated GELU (T5 v1.1)


class Position(StrEnum):
    LEARNED = "learned"  #: learned absolute position embeddings (BERT, GPT-2, BART)
    SINUSOIDAL = "sinusoidal"  #: fixed sinusoids (Vaswani et al.)
    ROTARY = "rotary"  #: rotary embeddings applied to queries and keys (RoFormer)
    RELATIVE = "relative"  #: T5 bucketed relative position bias, shared across layers
    NONE = "none"  #: no positional information


@dataclass
class ModelConfig:
    """Architecture of a transformer of any family.

    Sizes follow the usual names: ``d_model`` (hidden), ``n_heads``, ``d_ff`` (MLP inner size).
    For encoder-decoders ``n_layers`` is the encoder depth and ``n_decoder_layers`` the decoder
    depth (defaults to ``n_layers``).
    """

    # str first: a command-line override parses as the name, validate() makes it a Family
    family: str | Family = Family.ENCODER
    """encoder, decoder, encoder-decoder, or the name of a family registered with
    ``models.backbone.register_family``."""
    vocab_size: int = 8192
    """Number of token embeddings (set from the tokenizer when pre-training)."""
    d_model: int = 256
    """Hidden size."""
    embedding_size: int | None = None
    """Width of the token/position/segment embeddings and their norm when it differs from d_model
    (ELECTRA-Small's ``embedding_size=128, hidden_size=256``): a Linear(embedding_size, d_model)
    maps them into the stack and a tied MLM head maps back (its transform is d_model ->
    embedding_size). None (or d_model) = no projection. Encoders only."""
    n_layers: int = 4
    """Number of blocks (encoder blocks for encoder-decoders)."""
    n_decoder_layers: int = 0
    """Decoder blocks of an encoder-decoder; 0 means the same as n_layers."""
    n_heads: int = 4
    """Attention heads; d_model must be divisible by it unless d_head is set."""
    d_head: int = 0
    """Per-head size; 0 means d_model // n_heads (T5 sets it explicitly)."""
    d_ff: int = 1024
    """MLP inner size (for gated activations: the size of each of the two branches)."""
    max_positions: int = 512
    """Longest sequence the learned/sinusoidal position table covers."""
    position_offset: int = 0
    """Learned-position index offset (BART stores positions shifted by 2)."""
    type_vocab_size: int = 0
    """Segment (token type) embeddings; 2 for BERT sentence pairs, 0 for none."""
    norm: Norm = Norm.LAYERNORM
    """LayerNorm or RMSNorm."""
    norm_eps: float = 1e-12
    """Epsilon of every norm."""
    prenorm: bool = False
    """Pre-norm (GPT-2, T5: x + f(norm(x))) instead of post-norm (BERT, BART: norm(x + f(x)))."""
    embedding_norm: bool = True
    """Norm after the embedding sum (BERT LayerNorm, BART layernorm_embedding)."""
    final_norm: bool = False
    """Norm after the last block (GPT-2 ln_f, T5 final_layer_norm); usual with pre-norm."""
    activation: Activation = Activation.GELU
    """MLP activation; swiglu/geglu are gated."""
    position: Position = Position.LEARNED
    """How positions enter the model."""
    rotary_base: float = 10000.0
    """Base of the rotary frequencies."""
    relative_buckets: int = 32
    """T5 relative-attention buckets."""
    relative_max_distance: int = 128
    """T5 relative-attention max distance."""
    bias: bool = True
    """Biases in attention/MLP linears (False for T5)."""
    attn_scale: bool = True
    """Scale scores by 1/sqrt(d_head); T5 folds the scale into its initialisation instead."""
    scale_embeddings: bool = False
    """Multiply token embeddings by sqrt(d_model) (BART scale_embedding, Vaswani et al.)."""
    tie_embeddings: bool = True
    """Tie the LM head's output matrix to the input embeddings."""
    lm_head_transform: bool = False
    """BERT-style dense + activation + norm before the vocabulary projection."""
    lm_head_bias: bool = False
    """Output bias on the vocabulary projection (BERT bias, BART final_logits_bias)."""
    scale_logits: bool = False
    """Multiply the hidden state by d_model**-0.5 before a tied LM head (T5)."""
    pooler: bool = False
    """[CLS] pooler (dense + tanh) on encoders, used by NSP and sentence classification."""
    dropout: float = 0.1
    """Dropout on embeddings, residual branches and MLP."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    init_std: float = 0.02
    """Std of the normal initialisation of linears and embeddings."""
    pad_aware_positions: bool = False
    """RoBERTa numbering: positions count non-pad tokens, pads get pad_token_id."""
    attn_impl: str = "sdpa"
    """sdpa (torch's fused kernel) or math (plain matmuls, faster for short bf16 CPU sequences)."""
    pad_token_id: int = 0
    """Padding id (ignored in embeddings' gradient where relevant)."""
    bos_token_id: int = -1
    """Beginning-of-sequence id, -1 when the vocabulary has none."""
    eos_token_id: int = -1
    """End-of-sequence id, -1 when the vocabulary has none."""
    decoder_start_token_id: int = -1
    """First decoder input of encoder-decoders (BART: eos, T5: pad)."""
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Heads on top of the backbone, by name, with their settings: e.g. {"lm": {}},
    {"lm": {}, "nsp": {}}, {"classification": {"num_labels": 2}}. The first one produces
    ``.logits`` in the forward."""
    family_options: Any = None
    """The family's own settings: an instance of the dataclass given to ``register_family`` (a
    mapping in config.json); None for the built-in families."""

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def emb_dim(self) -> int:
        """Width of the embeddings: ``embedding_size`` or, when unset, ``d_model``."""
        return self.embedding_size or self.d_model

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def is_encoder_decoder(self) -> bool:
        """True for encoder-decoders (the built-in one, or a family registered as one)."""
        return FAMILY_SPECS.get(str(self.family), FamilySpec()).encoder_decoder

    @property
    def is_causal(self) -> bool:
        """True when the model's main stack is causal (decoder-only, e.g. GPT or a registered
        recurrent LM)."""
        return FAMILY_SPECS.get(str(self.family), FamilySpec()).causal

    #: allowed values of the numeric fields (types come from the annotations)
    RANGES: typing.ClassVar[dict[str, Range]] = {
        "vocab_size": COUNT, "d_model": COUNT, "embedding_size": COUNT, "n_layers": COUNT, "n_decoder_layers": NONNEG_INT, "n_heads": COUNT,
        "d_head": NONNEG_INT, "d_ff": COUNT, "max_positions": COUNT, "position_offset": NONNEG_INT,
        "type_vocab_size": NONNEG_INT, "norm_eps": POSITIVE, "rotary_base": Range(float, gt=1),
        "relative_buckets": COUNT, "relative_max_distance": COUNT, "dropout": FRACTION,
        "attention_dropout": FRACTION, "init_std": NONNEG, "pad_token_id": SPECIAL_ID, "bos_token_id": SPECIAL_ID,
        "eos_token_id": SPECIAL_ID, "decoder_start_token_id": SPECIAL_ID,
    }

    def validate(self) -> "ModelConfig":
        """Check the config is consistent; raise :class:`ConfigError` naming the field."""
        self.family = resolve_family(self.family)
        _coerce_enums(self)
        check_fields(self, "model", self.RANGES)
        self._validate_family_options()
        transformer = isinstance(self.family, Family)  # the rules below that name attention or stacks
        if transformer:
            self._validate_transformer()
        for p in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, p) < 1.0:
                raise ConfigError(f"model.{p} must be in [0, 1), got {getattr(self, p)}")
        if transformer and self.attn_impl not in ("sdpa", "math"):
            raise ConfigError(f"model.attn_impl must be sdpa or math, got {self.attn_impl!r}")
        if not isinstance(self.heads, dict) or not all(isinstance(v, dict) for v in self.heads.values()):
            raise ConfigError(f"model.heads: expected a mapping of head name to settings, e.g. {{\"lm\": {{}}}}, "
                              f"got {self.heads!r}")
        return self

    def _validate_transformer(self) -> None:
        """The rules of the built-in (transformer) families: heads, embedding projection, segments."""
        if not self.d_head and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.embedding_size == self.d_model:
            self.embedding_size = None  # same width: no projection, the plain model
        if self.embedding_size is not None and self.family != Family.ENCODER:
            raise ConfigError(f"model.embedding_size={self.embedding_size} (an embedding projection to "
                              f"d_model={self.d_model}) is only supported for encoders, not {self.family}")
        if self.position == Position.ROTARY and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_dim}")
        if self.type_vocab_size and self.family != Family.ENCODER:
            raise ConfigError("model.type_vocab_size > 0 is only supported for encoders")

    def _validate_family_options(self) -> None:
        """``family_options`` as the family's dataclass (from a mapping or defaults), checked."""
        cls = FAMILY_SPECS[str(self.family)].options
        opts = self.family_options
        if cls is None:
            if opts not in (None, {}):
                raise ConfigError(f"model.family_options: family {str(self.family)!r} has no settings of its own, "
                                  f"got {opts!r}")
            self.family_options = None
            return
        if opts is None:
            opts = cls()
        elif isinstance(opts, dict):
            opts = from_dict(cls, opts, where="model.family_options")
        elif not isinstance(opts, cls):
            raise ConfigError(f"model.family_options: expected a mapping of {cls.__name__} fields, got {opts!r}")
        check_fields(opts, "model.family_options", getattr(cls, "RANGES", None))
        if callable(getattr(opts, "validate", None)):
            opts.validate()
        self.family_options = opts

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return from_dict(cls, d).validate()

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw).validate()


# ---------------------------------------------------------------------------- presets
def _bert(n_layers: int, d: int, h: int, vocab: int = 8192, max_pos: int = 512) -> ModelConfig:
    return ModelConfig(
        family=Family.ENCODER, vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=h,
        d_ff=4 * d, max_positions=max_pos, type_vocab_size=2, norm_eps=1e-12, prenorm=False,
        embedding_norm=True, activation=Activation.GELU, lm_head_transform=True,
        lm_head_bias=True, pooler=True, heads={"lm": {}},
    )


def _gpt(n_layers: int, d: int, h: int, vocab: int = 8192, max_pos: int = 1024) -> ModelConfig:
    return ModelConfig(
        family=Family.DECODER, vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=h,
        d_ff=4 * d, max_positions=max_pos, norm_eps=1e-5, prenorm=True, embedding_norm=False,
        final_norm=True, activation=Activation.GELU_TANH, heads={"lm": {}},
    )


def _bart(n_layers: int, d: int, h: int, vocab: int = 8192, max_pos: int = 1024) -> ModelConfig:
    return ModelConfig(
        family=Family.ENCODER_DECODER, vocab_size=vocab, d_model=d, n_layers=n_layers,
        n_heads=h, d_ff=4 * d, max_positions=max_pos, position_offset=2, norm_eps=1e-5,
        prenorm=False, embedding_norm=True, activation=Activation.GELU, lm_head_bias=True,
        heads={"lm": {}},
    )


def _t5(n_layers: int, d: int, h: int, d_ff: int, vocab: int = 8192, d_head: int = 64) -> ModelConfig:
    return ModelConfig(
        family=Family.ENCODER_DECODER, vocab_size=vocab, d_model=d, n_layers=n_layers,
        n_heads=h, d_head=d_head, d_ff=d_ff, max_positions=512, norm=Norm.RMSNORM, norm_eps=1e-6,
        prenorm=True, embedding_norm=False, final_norm=True, activation=Activation.RELU,
        position=Position.RELATIVE, bias=False, attn_scale=False, scale_logits=True,
        attention_dropout=0.1, pad_token_id=0, decoder_start_token_id=0, heads={"lm": {}},
    )


def _elmo(d: int, cell: int, max_chars: int, filters: list[list[int]], **options: Any) -> ModelConfig:
    return ModelConfig(family="elmo", vocab_size=8192, d_model=d, n_layers=2, position=Position.NONE,
                       tie_embeddings=False, lm_head_bias=True, heads={"lm": {"type": "bilm_softmax"}},
                       family_options={"cell_size": cell, "token_input": "chars", "max_chars": max_chars,
                                       "filters": filters, **options})


def _word2vec(d: int) -> ModelConfig:
    return ModelConfig(family="word2vec", d_model=d, n_layers=1, heads={},
                       family_options={"init_range": 0.5, "features": "input"})


def _awd(d: int, hidden: int) -> ModelConfig:
    return ModelConfig(family="awd-lstm", vocab_size=8192, d_model=d, n_layers=3, max_positions=4096, dropout=0.1,
                       attention_dropout=0.0, lm_head_bias=True, heads={"lm": {}}, family_options={"hidden_size": hidden})


PRESETS: dict[str, ModelConfig] = {
    "bert-tiny": _bert(2, 128, 2),
    "bert-mini": _bert(4, 256, 4),
    "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8),
    "bert-base": _bert(12, 768, 12, vocab=30522),
    "bert-large": _bert(24, 1024, 16, vocab=30522),
    "gpt-mini": _gpt(4, 256, 4),
    "gpt-small": _gpt(12, 768, 12, vocab=50257),
    "gpt-medium": _gpt(24, 1024, 16, vocab=50257),
    "bart-mini": _bart(2, 256, 4),
    "bart-base": _bart(6, 768, 12, vocab=50265),
    "t5-mini": _t5(4, 256, 4, 1024, d_head=64),
    "t5-small": _t5(6, 512, 8, 2048, vocab=32128),
    # ELMo biLMs (models/elmo.py): d_model = [forward; backward], char CNN input, untied softmax
    "elmo-tiny": _elmo(128, 256, 20, [[1, 32], [2, 32], [3, 64], [4, 128]], highway_layers=1),
    "elmo-mini": _elmo(256, 1024, 30, [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256]]),
    "elmo-small": _elmo(512, 2048, 50, [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512]]),
    # global word vectors (skip-gram / CBOW): two (V, d) tables, no layers, no heads
    "word2vec-128": _word2vec(128),
    "word2vec-256": _word2vec(256),
    # ULMFiT's AWD-LSTM (models/awd_lstm.py): 3 weight-dropped layers E -> H -> H -> E, tied LM head
    "awd-lstm-tiny": _awd(128, 384),
    "awd-lstm-mini": _awd(256, 768),
}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A fresh copy of a named preset, with keyword overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    cfg = dataclasses.replace(PRESETS[name])
    cfg.heads = json.loads(json.dumps(cfg.heads))
    if isinstance(cfg.family_options, dict):  # a family's own settings, as a mapping until validated
        cfg.family_options = json.loads(json.dumps(cfg.family_options))
    return dataclasses.replace(cfg, **overrides).validate() if overrides else cfg.validate()


# ---------------------------------------------------------------------------- generic helpers
def _coerce_enums(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        tp = hints.get(f.name)
        v = getattr(obj, f.name)
        if isinstance(tp, type) and issubclass(tp, Enum) and not isinstance(v, tp):
            try:
                setattr(obj, f.name, tp(v))
            except (ValueError, TypeError):
                choices = ", ".join(m.value for m in tp)
                raise ConfigError(f"{f.name}: {v!r} is not one of: {choices}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able data (enums become their string values)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, Enum):
            v = v.value
        out[f.name] = v
    return out


def from_dict(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a clear message."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    kw = {}
    for k, v in d.items():
        tp = hints[k]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(v, dict):
            v = from_dict(tp, v, where=f"{where}.{k}" if where else k)
        kw[k] = v
    obj = cls(**kw)
    _coerce_enums(obj)
    return obj


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _parse_value(raw, args[0], key)
    try:
        if tp is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is str:
            return raw
        if isinstance(tp, type) and issubclass(tp, Enum):
            return tp(raw)
        return json.loads(raw)  # lists, dicts
    except (ValueError, json.JSONDecodeError):
        expected = (
            " | ".join(m.value for m in tp) if isinstance(tp, type) and issubclass(tp, Enum)
            else getattr(tp, "__name__", str(tp))
        )
        raise ConfigError(f"override {key}={raw!r}: expected {expected}") from None


def apply_overrides(obj: Any, overrides: list[str] | dict[str, str], prefix: str = "") -> Any:
    """Apply dotted ``key=value`` overrides in place, coercing each value to the field's type.

    ``obj`` is a dataclass whose fields may themselves be dataclasses, so ``model.n_layers=2``
    reaches ``obj.model.n_layers``. With ``prefix="model"`` the leading ``model.`` is optional.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, raw in items:
        parts = key.split(".")
        if prefix and parts[0] == prefix:
            parts = parts[1:]
        target = obj
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, p):
                raise ConfigError(f"override {key}: no section {p!r}")
            target = getattr(target, p)
        name = parts[-1]
        if not dataclasses.is_dataclass(target) or name not in {f.name for f in fields(target)}:
            known = ", ".join(sorted(f.name for f in fields(target))) if dataclasses.is_dataclass(target) else ""
            raise ConfigError(f"override {key}: unknown field {name!r}; known: {known}")
        tp = typing.get_type_hints(type(target))[name]
        setattr(target, name, _parse_value(str(raw), tp, key))
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. model.n_layers=4")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict with a clear error on failure."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml/json syntax errors carry line info in their message
        raise ConfigError(f"{p}: not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data
