"""The GPT-2 layout: key map, config, the transformers classes.

See :mod:`transferlab.interop.hf.table` for the row format and ops. GPT-2 also has
``GPT2ForSequenceClassification`` (last non-pad token, ``score`` without bias: ours is folded
into ``ln_f``'s bias).
"""

from __future__ import annotations

from typing import Any

import torch

from ...config import Activation, Family, ModelConfig, Norm, Position
from ...errors import CheckpointError, ConfigError
from .llama import last_token_classifier_check
from .table import _ACT_TO_HF, _NON_GATED, CONV1D, COPY, Layout, Row, _act_from_hf, _common_out, _tok, block_rows

__all__ = ["GPT2_ROWS", "LAYOUTS"]

_LINEARS = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
GPT2_ROWS: list[Row] = [
    ("backbone.embed_tokens.weight", "wte.weight", COPY),
    ("backbone.decoder.pos_emb.weight", "wpe.weight", COPY),
    # c_attn is already fused [q; k; v]; every projection is a Conv1D
    *block_rows("backbone.decoder.blocks.{i}.", "h.{i}.", {**_LINEARS, "attn_norm": "ln_1", "mlp_norm": "ln_2"},
                {k: CONV1D for k in _LINEARS}),
    ("backbone.decoder.final_norm.{p}", "ln_f.{p}", COPY),
    ("heads.lm.weight", "/lm_head.weight", COPY),  # only when untied
    ("heads.token_classification.classifier.{p}", "/classifier.{p}", COPY),
    ("heads.classification.classifier.weight", "/score.weight", COPY),
    ("heads.classification.classifier.bias", "/score.bias", COPY),  # not in transformers: folded into ln_f
]


def _gpt2_finish_out(model, arch: str, state: dict[str, torch.Tensor], prefix: str) -> None:
    """GPT2ForSequenceClassification's ``score`` has no bias: fold ours into ``ln_f``'s.

    logits = W ln_f(h) + b = W (g * n(h) + beta) + b = W (g * n(h) + beta + delta) with
    W delta = b, delta the least-norm solution (W is (num_labels, C), num_labels <= C, so an
    exact one exists when W has full row rank). The logits are unchanged; transformers' last
    hidden state is shifted by the constant vector delta (nothing else reads it).
    """
    if arch != "GPT2ForSequenceClassification":
        return
    b = state.pop("score.bias")
    if not b.any():
        return
    w = state["score.weight"].double()  # (num_labels, C)
    delta = torch.linalg.pinv(w) @ b.double()  # (C,)
    if (w @ delta - b.double()).abs().max().item() > 1e-6 * max(1.0, b.abs().max().item()):
        raise ConfigError("GPT2ForSequenceClassification's score layer has no bias and this classifier's bias cannot "
                          "be folded into ln_f (more labels than hidden units, or a rank-deficient classifier)")
    key = prefix + "ln_f.bias"
    state[key] = (state[key].double() + delta).to(state[key].dtype)


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


def _gpt2_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff, "n_positions": cfg.max_positions,
        "activation_function": _ACT_TO_HF[Activation(cfg.activation)], "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std, "scale_attn_weights": True,
    }


LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout(
        "gpt2", "transformer.", "GPT2Model",
        {"GPT2Model": {}, "GPT2LMHeadModel": {"lm": {}}, "GPT2ForTokenClassification": {"token_classification": {}},
         "GPT2ForSequenceClassification": {"classification": {"pooling": "last"}}},
        lambda cfg: GPT2_ROWS, _gpt2_config, _gpt2_config_out,
        {"family": Family.DECODER, "norm": Norm.LAYERNORM, "prenorm": True, "embedding_norm": False,
         "final_norm": True, "position": Position.LEARNED, "bias": True, "attn_scale": True,
         "scale_embeddings": False, "activation": _NON_GATED, "position_offset": 0,
         "pad_aware_positions": False, "lm_head_transform": False, "lm_head_bias": False,
         "d_head": (0, "d_model // n_heads"), "scale_logits": False},
        ignore=(r"h\.\d+\.attn\.(masked_)?bias$",),  # causal-mask buffers of old GPT-2 files
        signatures=(("lm_head.weight", "GPT2LMHeadModel"), ("score.weight", "GPT2ForSequenceClassification")),
        export_check=last_token_classifier_check, finish_out=_gpt2_finish_out,
        zero_if_absent=frozenset({"heads.classification.classifier.bias"}),
    ),
}
