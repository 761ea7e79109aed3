"""BERT, RoBERTa and GPT-2 layouts for :mod:`transferlab.hf`: key maps, configs, the classes.

See :mod:`transferlab.hf` for the row format and ops. GPT-2 also has
``GPT2ForSequenceClassification`` (last non-pad token, ``score`` without bias: ours is folded
into ``ln_f``'s bias).
"""

from __future__ import annotations

from typing import Any

import torch

from .config import Activation, Family, ModelConfig, Norm, Position
from .errors import CheckpointError, ConfigError
from .hf import _ACT_TO_HF, _BERT_REQ, _NON_GATED, CAT, CONV1D, COPY, Layout, Row, _act_from_hf, _common_out, _tok

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
    ("heads.classification.classifier.weight", "/score.weight", COPY),
    ("heads.classification.classifier.bias", "/score.bias", COPY),  # not in transformers: folded into ln_f
]


def _gpt2_check(model, layout: "Layout", arch: str) -> None:
    from .hf_llama import last_token_classifier_check

    last_token_classifier_check(model, layout, arch)


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
        export_check=_gpt2_check, finish_out=_gpt2_finish_out,
        zero_if_absent=frozenset({"heads.classification.classifier.bias"}),
    ),
}
