"""More post-norm encoder layouts: RoFormer, ELECTRA, DistilBERT.

============  ===========================================  =======================================
model_type    transformers class                           transferlab heads
============  ===========================================  =======================================
roformer      RoFormerModel / RoFormerForMaskedLM /        {} / {"lm"} /
              RoFormerForSequenceClassification /          {"classification", dense_act=hidden_act} /
              RoFormerForTokenClassification /             {"token_classification"} / {"span"}
              RoFormerForQuestionAnswering
electra       ElectraModel / ElectraForPreTraining /       {} / {"rtd"} / {"lm"} /
              ElectraForMaskedLM /                         {"classification", dense_act=gelu} /
              ElectraForSequenceClassification /           {"token_classification"} / {"span"}
              ElectraForTokenClassification /
              ElectraForQuestionAnswering
distilbert    DistilBertModel / DistilBertForMaskedLM /    {} / {"lm"} /
              DistilBertForSequenceClassification /        {"classification", dense_act=relu} /
              DistilBertForTokenClassification /           {"token_classification"} / {"span"}
              DistilBertForQuestionAnswering
============  ===========================================  =======================================

All three are BERT's post-norm block under other names; what differs:

* **RoFormer** has no position table: rotary positions on q and k with base 10,000 over each
  head, but in *interleaved* pairs (channels 2j, 2j+1 rotate together) where ours rotate the
  two halves (j, j + hs/2) as LLaMA does. The dot product q.k is unchanged when q and k get the
  same channel permutation, so the query/key rows (weights and biases) are permuted per head on
  the way (:class:`RotaryInterleave`, the inverse of Meta's LLaMA -> HF conversion); values and
  everything else are untouched. RoFormer's frozen sinusoid table is written on export.
* **ELECTRA**'s discriminator head (``rtd``: dense, activation, one logit) and its generator MLM
  head (``lm`` with BERT's transform) map directly. An ``embedding_size`` other than
  ``hidden_size`` (ELECTRA-Small: an ``embeddings_project`` layer) is our ``embedding_size``:
  embeddings of that width, ``emb_proj`` into the stack, and the MLM transform mapping back
  (``generator_predictions.dense`` is hidden -> embedding_size, tied to the word embeddings).
* **DistilBERT** has no token types and no pooler; sinusoidal position tables
  (``sinusoidal_pos_embds``) are stored in the checkpoint like learned ones and load as our
  learned table (same values, so same outputs; they become trainable).
* Their sequence classifiers read the first token through ``dense`` + an activation (gelu for
  ELECTRA, RoFormer's hidden_act, relu for DistilBERT) instead of BERT's tanh pooler: our
  classification head's ``dense_act`` setting (:class:`~transferlab.models.heads.ClassificationHead`).
"""

from __future__ import annotations

from typing import Any

import torch

from ...config import Activation, Family, ModelConfig, Norm, Position
from ...errors import CheckpointError, ConfigError
from .bert import _bert_config, _bert_config_out, bert_block_rows, bert_embedding_rows, encoder_head_rows
from .table import (_ACT_TO_HF, _BERT_REQ, COPY, Layout, Op, Row, _act_from_hf, _canonical_heads, _common_out, _tok,
                    block_rows, mlm_rows)

__all__ = ["ROFORMER_ROWS", "ELECTRA_ROWS", "DISTILBERT_ROWS", "LAYOUTS", "RotaryInterleave", "roformer_table"]


# ---------------------------------------------------------------------------- RoFormer rotary pairs
def _to_pairs(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Rows of q or k, ours (halves) -> interleaved: out[2j + a] = x[a * hs/2 + j] in each head."""
    nh, hs = cfg.n_heads, cfg.head_dim
    return x.reshape(nh, 2, hs // 2, *x.shape[1:]).transpose(1, 2).reshape(x.shape)


def _to_halves(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Inverse of :func:`_to_pairs`: interleaved -> halves."""
    nh, hs = cfg.n_heads, cfg.head_dim
    return x.reshape(nh, hs // 2, 2, *x.shape[1:]).transpose(1, 2).reshape(x.shape)


class RotaryInterleave(Op):
    """Our fused ``qkv`` = [query; key; value] with the q and k rows of each head permuted from
    RoFormer's interleaved rotary pairs to our rotate-half order (weights (out, in) and biases)."""

    def to_ours(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
        q, k, v = tensors
        return torch.cat([_to_halves(q, cfg), _to_halves(k, cfg), v], dim=0)

    def to_hf(self, t: torch.Tensor, n: int, cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
        q, k, v = t.chunk(3, dim=0)
        return _to_pairs(q, cfg), _to_pairs(k, cfg), v


ROFORMER_ROWS: list[Row] = [
    *bert_embedding_rows(positions=False),  # rotary: no position table
    *bert_block_rows({"attn.qkv": RotaryInterleave()}),
    *mlm_rows("/cls.predictions.", "transform.dense", "transform.LayerNorm", "decoder"),
    *encoder_head_rows(("/classifier.dense", "/classifier.out_proj")),
]
def roformer_table(n_pos: int, dim: int) -> torch.Tensor:
    """RoFormer's frozen (n_pos, dim) table: sines in the first half, cosines in the second, of
    pos / 10000^(2i/dim), computed in float64 as transformers does (numpy)."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    ang = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                          2 * torch.arange(dim // 2, dtype=torch.float64) / dim)
    return torch.cat([ang.sin(), ang.cos()], dim=1).float()


def _roformer_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    emb = raw.get("embedding_size") or raw["hidden_size"]
    if int(emb) != int(raw["hidden_size"]):
        raise CheckpointError(f"{where}: embedding_size={emb} != hidden_size={raw['hidden_size']} (an embeddings_project "
                              "layer) is not supported")
    if raw.get("rotary_value"):
        raise CheckpointError(f"{where}: rotary_value=true (rotary on the values too) is not supported")
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise CheckpointError(f"{where}: is_decoder/add_cross_attention (causal RoFormer) is not supported")
    cfg = _bert_config({**raw, "position_embedding_type": "absolute"}, keys, roberta=False)
    cfg.position, cfg.rotary_base, cfg.pooler = Position.ROTARY, 10000.0, False
    cfg.max_positions = int(raw.get("max_position_embeddings", 1536))
    return cfg


def _roformer_config_out(cfg: ModelConfig) -> dict[str, Any]:
    out = _bert_config_out(cfg, roberta=False)
    out.pop("position_embedding_type")
    return {**out, "embedding_size": cfg.d_model, "rotary_value": False, "max_position_embeddings": cfg.max_positions}


def _first_token_classifier_check(act: str | None):
    """Sequence classifiers on the first token through dense + ``act`` (None: the model's own
    activation, RoFormer's hidden_act); there is no tanh pooler in these models."""

    def check(model, layout: Layout, arch: str) -> None:
        cfg: ModelConfig = model.config
        want = act or str(Activation(cfg.activation))
        for name, kind in _canonical_heads(cfg).items():
            if kind == "lm" and not cfg.lm_head_transform:
                raise ConfigError(f"{arch}'s MLM head has a dense+norm transform; set lm_head_transform=true")
            if kind == "rtd" and Activation(cfg.activation) != Activation.GELU:
                raise ConfigError(f"{arch}'s discriminator head uses the model's activation; ours uses gelu, "
                                  f"the model has activation={cfg.activation}")
            if kind == "lm" and layout.model_type == "electra" and Activation(cfg.activation) != Activation.GELU:
                raise ConfigError(f"{arch}'s generator head uses gelu; ours uses the model's activation "
                                  f"({cfg.activation})")
            if kind != "classification":
                continue
            head = model.heads[name]
            pooling, dense_act = getattr(head, "pooling", "auto"), getattr(head, "dense_act", None)
            if pooling == "mean":
                raise ConfigError(f"a mean-pooled classifier has no transformers class: {arch} classifies the first "
                                  "token; fine-tune with --pooling cls (docs/models.md)")
            if pooling not in ("auto", "cls") or cfg.pooler or dense_act != want:
                raise ConfigError(f"{arch} classifies the first token through dense + {want} (no tanh pooler): "
                                  f"needs pooler=false, pooling auto/cls and the head's dense_act={want}, got "
                                  f"pooler={cfg.pooler}, pooling={pooling}, dense_act={dense_act} (add the head "
                                  f"with model.add_head('classification', num_labels=N, dense_act='{want}') on an "
                                  "encoder built with pooler=false, or export the encoder without the head)")

    return check


def _encoder_finish_out(mlm_bias: tuple[str, ...], type_table: str | None):
    """Zero tensors transformers' encoders always have (token types, MLM bias) and ours may not."""

    def finish(model, arch: str, state: dict[str, torch.Tensor], prefix: str) -> None:
        cfg: ModelConfig = model.config
        if type_table is not None and not cfg.type_vocab_size:
            state[prefix + type_table] = torch.zeros(1, cfg.emb_dim)
        if "lm" in _canonical_heads(cfg).values() and mlm_bias:
            bias = state.get(mlm_bias[0], torch.zeros(cfg.vocab_size))
            for n in mlm_bias:
                state[n] = bias.clone()
        if arch.startswith("RoFormer"):
            state[prefix + "encoder.embed_positions.weight"] = roformer_table(cfg.max_positions, cfg.head_dim)

    return finish


_ENC_ARCHS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def _archs(cls: str, dense_act: str | None, extra: dict[str, dict] | None = None) -> dict[str, dict]:
    cls_head: dict[str, Any] = {"pooling": "cls"}
    if dense_act:
        cls_head["dense_act"] = dense_act
    heads = [{}, {"lm": {}}, {"classification": cls_head}, {"token_classification": {}}, {"span": {}}]
    out = {cls + a: h for a, h in zip(_ENC_ARCHS, heads)}
    return {**out, **(extra or {})}


# ---------------------------------------------------------------------------- ELECTRA
ELECTRA_ROWS: list[Row] = [
    *bert_embedding_rows(),
    *bert_block_rows(),
    ("backbone.encoder.emb_proj.{p}", "embeddings_project.{p}", COPY),  # only with embedding_size
    ("heads.rtd.dense.{p}", "/discriminator_predictions.dense.{p}", COPY),
    ("heads.rtd.out.{p}", "/discriminator_predictions.dense_prediction.{p}", COPY),
    *mlm_rows("/", "generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head"),
    *encoder_head_rows(("/classifier.dense", "/classifier.out_proj")),
]
def _electra_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    emb = raw.get("embedding_size") or raw["hidden_size"]
    arch = (raw.get("architectures") or [""])[0]
    act = _act_from_hf(raw.get("hidden_act", "gelu"), where)
    if arch in ("ElectraForPreTraining", "ElectraForMaskedLM") and act != Activation.GELU:
        raise CheckpointError(f"{where}: {arch} with hidden_act={raw.get('hidden_act')!r} is not supported (our "
                              "discriminator/generator heads use gelu)")
    cfg = _bert_config(raw, keys, roberta=False)
    cfg.pooler = False
    # embedding_size != hidden_size (ELECTRA-Small): embeddings of that width + embeddings_project
    cfg.embedding_size = int(emb) if int(emb) != cfg.d_model else None
    return cfg.validate()


def _electra_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {**_bert_config_out(cfg, roberta=False), "embedding_size": cfg.emb_dim, "summary_type": "first"}


# ---------------------------------------------------------------------------- DistilBERT
DISTILBERT_ROWS: list[Row] = [
    *bert_embedding_rows(types=False),
    *block_rows("backbone.encoder.blocks.{i}.", "transformer.layer.{i}.", {
        "attn.qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"), "attn.out": "attention.out_lin",
        "attn_norm": "sa_layer_norm", "mlp.fc1": "ffn.lin1", "mlp.fc2": "ffn.lin2", "mlp_norm": "output_layer_norm"}),
    *mlm_rows("/", "vocab_transform", "vocab_layer_norm", "vocab_projector"),
    *encoder_head_rows(("/pre_classifier", "/classifier")),
]
def _distilbert_config(raw: dict[str, Any], keys: set[str]) -> ModelConfig:
    where = "config.json"
    d = int(raw["dim"])
    pad = raw.get("pad_token_id")
    return ModelConfig(
        family=Family.ENCODER, vocab_size=int(raw["vocab_size"]), d_model=d, n_layers=int(raw["n_layers"]),
        n_heads=int(raw["n_heads"]), d_ff=int(raw["hidden_dim"]),
        max_positions=int(raw.get("max_position_embeddings", 512)), type_vocab_size=0, norm=Norm.LAYERNORM,
        norm_eps=1e-12, prenorm=False, embedding_norm=True, final_norm=False,
        activation=_act_from_hf(raw.get("activation", "gelu"), where), position=Position.LEARNED, bias=True,
        lm_head_transform=True, lm_head_bias=True, tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
        pooler=False, dropout=float(raw.get("dropout", 0.1)),
        attention_dropout=float(raw.get("attention_dropout", 0.1)), init_std=float(raw.get("initializer_range", 0.02)),
        pad_token_id=int(pad) if pad is not None else 0, bos_token_id=_tok(raw.get("bos_token_id")),
        eos_token_id=_tok(raw.get("eos_token_id")),
    )


def _distilbert_config_out(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **_common_out(cfg), "dim": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "hidden_dim": cfg.d_ff, "activation": _ACT_TO_HF[Activation(cfg.activation)],
        "max_position_embeddings": cfg.max_positions, "sinusoidal_pos_embds": False, "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout, "initializer_range": cfg.init_std,
        "seq_classif_dropout": cfg.dropout, "qa_dropout": cfg.dropout,
    }


_NO_POOLER_REQ = {**_BERT_REQ, "pad_aware_positions": False, "position_offset": 0}
_BERT_NAMES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

LAYOUTS: dict[str, Layout] = {
    "roformer": Layout(
        "roformer", "roformer.", "RoFormerModel", _archs("RoFormer", "$hidden_act"),
        lambda cfg: ROFORMER_ROWS, _roformer_config, _roformer_config_out,
        {**_NO_POOLER_REQ, "position": Position.ROTARY, "rotary_base": 10000.0},
        no_pooler=frozenset(_archs("RoFormer", None)),
        aliases={"/cls.predictions.decoder.bias": ("/cls.predictions.bias",)},
        ignore=(r"encoder\.embed_positions\.weight$", r"cls\.predictions\.bias$"),
        signatures=(("cls.predictions.transform.dense.weight", "RoFormerForMaskedLM"),
                    ("classifier.out_proj.weight", "RoFormerForSequenceClassification"),
                    ("qa_outputs.weight", "RoFormerForQuestionAnswering")),
        required=_BERT_NAMES, export_check=_first_token_classifier_check(None),
        finish_out=_encoder_finish_out(("cls.predictions.decoder.bias", "cls.predictions.bias"),
                                       "embeddings.token_type_embeddings.weight"),
    ),
    "electra": Layout(
        "electra", "electra.", "ElectraModel", _archs("Electra", "gelu", {"ElectraForPreTraining": {"rtd": {}}}),
        lambda cfg: ELECTRA_ROWS, _electra_config, _electra_config_out,
        {k: v for k, v in _NO_POOLER_REQ.items() if k != "embedding_size"},  # ELECTRA-Small's projection
        no_pooler=frozenset(_archs("Electra", None, {"ElectraForPreTraining": {}})),
        ignore=(r"(.*\.)?position_ids$",),
        signatures=(("discriminator_predictions.dense.weight", "ElectraForPreTraining"),
                    ("generator_lm_head.bias", "ElectraForMaskedLM"),
                    ("classifier.out_proj.weight", "ElectraForSequenceClassification"),
                    ("qa_outputs.weight", "ElectraForQuestionAnswering")),
        required=_BERT_NAMES, export_check=_first_token_classifier_check("gelu"),
        finish_out=_encoder_finish_out(("generator_lm_head.bias",), "embeddings.token_type_embeddings.weight"),
        tied=("generator_lm_head.weight",),
    ),
    "distilbert": Layout(
        "distilbert", "distilbert.", "DistilBertModel", _archs("DistilBert", "relu"),
        lambda cfg: DISTILBERT_ROWS, _distilbert_config, _distilbert_config_out,
        {**_NO_POOLER_REQ, "type_vocab_size": 0, "norm_eps": 1e-12},
        no_pooler=frozenset(_archs("DistilBert", None)),
        signatures=(("vocab_projector.bias", "DistilBertForMaskedLM"),
                    ("pre_classifier.weight", "DistilBertForSequenceClassification"),
                    ("qa_outputs.weight", "DistilBertForQuestionAnswering")),
        required=("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim"),
        export_check=_first_token_classifier_check("relu"),
        finish_out=_encoder_finish_out(("vocab_projector.bias",), None),
        tied=("vocab_projector.weight",),
    ),
}
