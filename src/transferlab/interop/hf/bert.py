"""BERT and RoBERTa layouts: key maps, configs, the transformers classes.

See :mod:`transferlab.interop.hf.table` for the row format and ops. Both share every backbone
name; only the MLM head's names differ. The BERT-like rows here (embeddings, block, heads) are
the base the other post-norm encoders (:mod:`.encoders`) build on.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...config import Activation, Family, ModelConfig, Norm, Position
from ...errors import CheckpointError
from .table import _ACT_TO_HF, _BERT_REQ, COPY, Layout, Op, Row, _act_from_hf, _common_out, _tok, block_rows, mlm_rows

__all__ = ["BERT_ROWS", "ROBERTA_ROWS", "LAYOUTS", "bert_embedding_rows", "bert_block_rows", "encoder_head_rows"]

# BERT's block names (relative to ``encoder.layer.{i}.``); RoFormer and ELECTRA reuse them
BERT_BLOCK = {"attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
              "attn.out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "mlp_norm": "output.LayerNorm"}


def bert_embedding_rows(positions: bool = True, types: bool = True) -> list[Row]:
    """Word (+ position, + token-type) embeddings and their LayerNorm under ``embeddings.``."""
    rows: list[Row] = [("backbone.embed_tokens.weight", "embeddings.word_embeddings.weight", COPY)]
    if positions:
        rows.append(("backbone.encoder.pos_emb.weight", "embeddings.position_embeddings.weight", COPY))
    if types:
        rows.append(("backbone.encoder.type_emb.weight", "embeddings.token_type_embeddings.weight", COPY))
    rows.append(("backbone.encoder.emb_norm.{p}", "embeddings.LayerNorm.{p}", COPY))
    return rows


def bert_block_rows(ops: Mapping[str, "str | Op"] | None = None) -> list[Row]:
    """BERT's encoder block rows; ``ops`` replaces a parameter's op (RoFormer's ``attn.qkv``)."""
    return block_rows("backbone.encoder.blocks.{i}.", "encoder.layer.{i}.", BERT_BLOCK, ops)


def encoder_head_rows(classifier: tuple[str, ...] = ("/classifier",)) -> list[Row]:
    """Sequence classification, token classification and QA heads of a transformers encoder.

    Args:
        classifier: the sequence classifier's layers: ``("/classifier",)`` (BERT, on the pooler)
            or ``(dense, out)`` for first-token classifiers with a dense layer of their own.

    Returns:
        The head rows (``/``: outside the base model).
    """
    rows: list[Row] = []
    if len(classifier) == 2:
        rows.append(("heads.classification.dense.{p}", classifier[0] + ".{p}", COPY))
    rows += [
        ("heads.classification.classifier.{p}", classifier[-1] + ".{p}", COPY),
        ("heads.token_classification.classifier.{p}", "/classifier.{p}", COPY),
        ("heads.span.qa_outputs.{p}", "/qa_outputs.{p}", COPY),
    ]
    return rows


def _bert_like_rows(lm_prefix: str, dense: str, norm: str) -> list[Row]:
    """BERT and RoBERTa share every backbone name; only the MLM head's names differ."""
    return [
        *bert_embedding_rows(),
        *bert_block_rows(),
        ("backbone.pooler.dense.{p}", "pooler.dense.{p}", COPY),
        # transformers 5 keeps decoder.bias as its own tensor when untied (and uses it); older
        # files hold both names with one value: read decoder.bias first, write both
        *mlm_rows(lm_prefix, dense, norm, "decoder"),
        ("heads.nsp.seq_relationship.{p}", "/cls.seq_relationship.{p}", COPY),
        *encoder_head_rows(),
    ]


BERT_ROWS = _bert_like_rows("/cls.predictions.", "transform.dense", "transform.LayerNorm")
ROBERTA_ROWS = _bert_like_rows("/lm_head.", "dense", "layer_norm")


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
}
