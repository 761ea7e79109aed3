"""LLaMA-family layouts: pre-norm RMSNorm / SwiGLU / rotary decoders.

============  ==========================================  ======================================
model_type    transformers class                          transferlab heads
============  ==========================================  ======================================
llama         LlamaModel / LlamaForCausalLM /             {} / {"lm"} / {"classification"} /
              LlamaForSequenceClassification /            {"token_classification"}
              LlamaForTokenClassification
mistral       MistralModel / MistralForCausalLM /         (import only; exports as llama)
              MistralForSequenceClassification /
              MistralForTokenClassification
qwen2         Qwen2Model / Qwen2ForCausalLM / ...         (import only; exports as llama with
                                                          attention_bias = mlp_bias = true)
============  ==========================================  ======================================

Rotary convention: transformers' LLaMA rotates the two *halves* of each head
(``rotate_half``), exactly as our :func:`~transferlab.models.blocks.apply_rotary` does, so q/k
weights map unchanged (no Meta-style interleave permutation; RoFormer needs one, see
:mod:`transferlab.interop.hf.encoders`). Our fused ``qkv`` is ``[q_proj; k_proj; v_proj]`` and the gated
``fc1`` is ``[gate_proj; up_proj]`` (``down_proj(silu(gate) * up)``).

Not representable, refused on import with the field named: grouped-query attention
(``num_key_value_heads < num_attention_heads``: our attention has one key/value head per query
head), rope scaling other than ``default``, ``attention_bias != mlp_bias`` (we have one ``bias``
switch), activations other than SiLU, and a Mistral/Qwen2 ``sliding_window`` shorter than the
context. Qwen2 has q/k/v biases but none on o_proj and the MLP: those load as zero biases (same
outputs; they become trainable).

Sequence classification in transformers takes the logits at the last token that is not
``pad_token_id`` (our ``pooling="last"`` uses the attention mask: the same token with right or
left padding as long as the text itself holds no pad id) through a ``score`` layer without bias;
LLaMA's final RMSNorm has no bias to fold ours into, so only a classifier whose bias is zero
exports (an imported one always is).
"""

from __future__ import annotations

from typing import Any

import torch

from ...config import Activation, Family, ModelConfig, Norm, Position
from ...errors import CheckpointError, ConfigError
from .table import COPY, Layout, Row, _canonical_heads, _common_out, _tok, block_rows

__all__ = ["LLAMA_ROWS", "LAYOUTS", "last_token_classifier_check"]

_B = "backbone.decoder.blocks.{i}."
LLAMA_ROWS: list[Row] = [
    ("backbone.embed_tokens.weight", "embed_tokens.weight", COPY),
    *block_rows(_B, "layers.{i}.", {
        "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "attn.out": "self_attn.o_proj",
        "attn_norm": "input_layernorm", "mlp.fc1": ("mlp.gate_proj", "mlp.up_proj"), "mlp.fc2": "mlp.down_proj",
        "mlp_norm": "post_attention_layernorm"}),
    ("backbone.decoder.final_norm.weight", "norm.weight", COPY),
    ("heads.lm.weight", "/lm_head.weight", COPY),  # only when untied
    ("heads.classification.classifier.weight", "/score.weight", COPY),
    ("heads.classification.classifier.bias", "/score.bias", COPY),  # never in transformers: zeros
    ("heads.token_classification.classifier.{p}", "/score.{p}", COPY),
]


def _llama_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    mt = raw.get("model_type")
    nh = int(raw["num_attention_heads"])
    nkv = int(raw.get("num_key_value_heads") or nh)
    if nkv != nh:
        raise CheckpointError(
            f"{where}: num_key_value_heads={nkv} < num_attention_heads={nh} (grouped-query attention) is not "
            "supported: transferlab's attention has one key/value head per query head")
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{where}: hidden_act={act!r} is not supported for {mt} (only silu: SwiGLU)")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{where}: rope_parameters must be an object, got {rope!r}")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"{where}: rope_type={kind!r} (rope scaling) is not supported; only 'default'")
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    attn_bias, mlp_bias = bool(raw.get("attention_bias", False)), bool(raw.get("mlp_bias", False))
    if mt == "qwen2":  # q/k/v biases always; o_proj and the MLP have none (they load as zero biases)
        attn_bias = mlp_bias = True
    if attn_bias != mlp_bias:
        raise CheckpointError(f"{where}: attention_bias={attn_bias} with mlp_bias={mlp_bias} is not supported "
                              "(transferlab has one bias switch for every linear)")
    n_pos = int(raw.get("max_position_embeddings", 2048))
    window = raw.get("sliding_window")
    if mt == "mistral" and window is not None and raw.get("use_sliding_window", True) and int(window) < n_pos:
        raise CheckpointError(f"{where}: sliding_window={window} < max_position_embeddings={n_pos} is not "
                              "supported (transferlab attends to the whole context)")
    sliding = [i for i, t in enumerate(raw.get("layer_types") or []) if t == "sliding_attention"]
    if mt == "qwen2" and sliding and raw.get("sliding_window") is not None and int(raw["sliding_window"]) < n_pos:
        raise CheckpointError(f"{where}: sliding-window attention in layers {sliding[:4]} (sliding_window="
                              f"{raw['sliding_window']} < max_position_embeddings={n_pos}) is not supported")
    d = int(raw["hidden_size"])
    head_dim = int(raw.get("head_dim") or d // nh)
    eos = _tok(raw.get("eos_token_id", 2))
    pad = _tok(raw.get("pad_token_id"))
    return ModelConfig(
        family=Family.DECODER, vocab_size=int(raw["vocab_size"]), d_model=d,
        n_layers=int(raw["num_hidden_layers"]), n_heads=nh,
        d_head=0 if d % nh == 0 and head_dim == d // nh else head_dim, d_ff=int(raw["intermediate_size"]),
        max_positions=n_pos, norm=Norm.RMSNORM, norm_eps=float(raw.get("rms_norm_eps", 1e-6)), prenorm=True,
        embedding_norm=False, final_norm=True, activation=Activation.SWIGLU, position=Position.ROTARY,
        rotary_base=theta, bias=attn_bias, tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        # LLaMA has no residual or embedding dropout; only attention_dropout (0 in released models)
        dropout=0.0, attention_dropout=float(raw.get("attention_dropout") or 0.0),
        init_std=float(raw.get("initializer_range", 0.02)),
        pad_token_id=pad if pad >= 0 else max(eos, 0), bos_token_id=_tok(raw.get("bos_token_id", 1)), eos_token_id=eos,
    )


def _llama_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base},
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.attention_dropout,
        "initializer_range": cfg.init_std, "pretraining_tp": 1,
    }


def last_token_classifier_check(model, layout: Layout, arch: str) -> None:
    """transformers' decoder classifiers read the last non-pad token: our ``pooling`` must be
    ``last`` (or ``auto``, which is ``last`` for decoders) with a plain linear classifier."""
    for name, kind in _canonical_heads(model.config).items():
        if kind != "classification":
            continue
        head = model.heads[name]
        pooling = getattr(head, "pooling", "auto")
        if pooling not in ("auto", "last") or getattr(head, "dense_act", None):
            raise ConfigError(f"{arch} classifies the last non-pad token with one linear layer: needs pooling "
                              f"auto/last and no dense_act, got pooling={pooling}")


def _llama_check(model, layout: Layout, arch: str) -> None:
    last_token_classifier_check(model, layout, arch)
    for name, kind in _canonical_heads(model.config).items():
        bias = model.heads[name].classifier.bias if kind == "classification" else None
        if bias is not None and bias.device.type != "meta" and bool(bias.detach().any()):  # meta: `info`
            raise ConfigError(f"{arch}'s score layer has no bias and LLaMA's final RMSNorm has none to fold it "
                              "into; this classifier's bias is non-zero (export as a decoder with layernorm, "
                              "i.e. GPT2ForSequenceClassification, or zero the bias)")


def _llama_finish_out(model, arch: str, state: dict[str, torch.Tensor], prefix: str) -> None:
    if arch.endswith("ForSequenceClassification"):
        del state["score.bias"]  # zero (checked): transformers' score layer has no bias


_LLAMA_REQ = {"family": Family.DECODER, "norm": Norm.RMSNORM, "prenorm": True, "embedding_norm": False,
              "final_norm": True, "position": Position.ROTARY, "activation": Activation.SWIGLU,
              "attn_scale": True, "scale_embeddings": False, "lm_head_transform": False, "lm_head_bias": False,
              "scale_logits": False, "pad_aware_positions": False}


_QWEN2_ZERO = frozenset({_B + "attn.out.bias", _B + "mlp.fc1.bias", _B + "mlp.fc2.bias"})


def _layout(mt: str, cls: str, exportable: bool, zero: frozenset[str] = frozenset()) -> Layout:
    return Layout(
        mt, "model.", f"{cls}Model",
        {f"{cls}Model": {}, f"{cls}ForCausalLM": {"lm": {}},
         f"{cls}ForSequenceClassification": {"classification": {"pooling": "last"}},
         f"{cls}ForTokenClassification": {"token_classification": {}}},
        lambda cfg: LLAMA_ROWS, _llama_config, _llama_config_out,
        _LLAMA_REQ, exportable=exportable,  # mistral is read only: ours are written as llama
        ignore=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", r"rotary_emb\.inv_freq$"),
        signatures=(("lm_head.weight", f"{cls}ForCausalLM"), ("score.bias", f"{cls}ForTokenClassification"),
                    ("score.weight", f"{cls}ForSequenceClassification")),
        required=("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
        export_check=_llama_check, finish_out=_llama_finish_out,
        zero_if_absent=frozenset({"heads.classification.classifier.bias",
                                  "heads.token_classification.classifier.bias"}) | zero,
    )


LAYOUTS = {"llama": _layout("llama", "Llama", True), "mistral": _layout("mistral", "Mistral", False),
           "qwen2": _layout("qwen2", "Qwen2", False, _QWEN2_ZERO)}
