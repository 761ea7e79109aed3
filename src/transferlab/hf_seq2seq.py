"""BART and T5 layouts for :mod:`transferlab.hf` (encoder-decoders): key maps and configs.

BART: post-norm, learned positions shifted by 2, ``final_logits_bias`` as our LM bias. T5:
pre-norm RMSNorm, one relative-position table per stack in block 0, no biases, no attention
scale; v1.0 (relu, tied and scaled logits) vs v1.1 (gated-gelu, untied).
"""

from __future__ import annotations

from typing import Any

from .config import Activation, Family, ModelConfig, Norm, Position
from .errors import CheckpointError
from .hf import _ACT_TO_HF, _NON_GATED, CAT, COPY, ROW, Layout, Row, _act_from_hf, _common_out, _tok


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


LAYOUTS: dict[str, Layout] = {
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
