"""Analytic matmul FLOPs of the transformer families, beside the model they count.

Every linear layer (the "6N" of Kaplan et al. 2020, counted layer by layer), attention scores
and values (PaLM appendix B: 12·L·d_attn·T per trained token), encoder-decoder cross-attention,
heads, and sparse MLM (the vocabulary projection only on the predicted positions). Checked
against ``torch.utils.flop_counter.FlopCounterMode`` in ``tests/cost/test_cost.py``. Consumers call
:func:`transferlab.cost.estimate_flops`, which dispatches to the family's
:meth:`~transferlab.models.backbone.Backbone.estimate_flops` (for these families:
:func:`transformer_flops`).
"""

from __future__ import annotations

from ..config import Family, ModelConfig
from .backbone import family_info
from .blocks import is_gated

#: what the estimates count: forward + backward, a forward (prefill), one cached decode step
MODES = ("train", "forward", "decode")


def family_flops(cfg: ModelConfig, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                 n_predicted: float | None = None) -> float:
    """FLOPs of one sequence as ``cfg.family`` counts them (its
    :meth:`~transferlab.models.backbone.Backbone.estimate_flops`), after the checks every
    family shares. Arguments as :func:`transformer_flops`.

    Returns:
        FLOPs as a float.
    """
    if mode not in MODES:
        raise ValueError(f"estimate_flops: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if seq_len <= 0:
        raise ValueError(f"estimate_flops: seq_len must be positive, got {seq_len}")
    return float(family_info(cfg.family).backbone.estimate_flops(cfg, seq_len, mode, decoder_len, n_predicted))

def head_macs(cfg: ModelConfig, positions: float, predicted: float) -> float:
    """Multiply-accumulates of the heads (+ pooler) for one sequence.

    Every head in ``cfg.heads`` is assumed to run once, as in multi-task pre-training (MLM +
    NSP); the backbone's [CLS] pooler runs on every forward.

    Args:
        cfg: the model config.
        positions: per-token outputs (T, or T_dec for encoder-decoders).
        predicted: rows that reach the vocabulary projection (sparse MLM gathers the masked
            positions first).

    Returns:
        Multiply-accumulates (FLOPs / 2).
    """
    d, macs = cfg.d_model, 0.0
    if cfg.pooler and str(cfg.family) == Family.ENCODER.value:
        macs += d * d  # one row per sequence
    for name, settings in (cfg.heads or {}).items():
        kind = (settings or {}).get("type", name)
        labels = (settings or {}).get("num_labels", 2)
        if kind == "lm":  # with embedding_size: transform d -> E, then the (V, E) output matrix
            e = cfg.emb_dim
            macs += predicted * ((d * e if cfg.lm_head_transform else 0) + e * cfg.vocab_size)
        elif kind == "nsp":
            macs += d * 2
        elif kind == "classification":
            macs += d * labels
        elif kind == "token_classification":
            macs += positions * d * labels
        elif kind == "span":
            macs += positions * d * 2
        elif kind == "rtd":
            macs += positions * (d * d + d)
    return macs


def transformer_flops(cfg: ModelConfig, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                      n_predicted: float | None = None) -> float:
    """Analytic matmul FLOPs of ONE sequence of an encoder, decoder or encoder-decoder.

    Counts every matrix multiply as 2 FLOPs per multiply-accumulate: the linear layers of every
    block (for a plain block ``2·(4·d·d_attn + 2·d·d_ff)`` per token, the "2N" of Kaplan et al.),
    attention scores and weighted values (``4·d_attn·S`` per query per layer over ``S`` keys,
    without discounting the causal mask, as in the PaLM MFU convention), encoder-decoder
    cross-attention (query/output projections per decoder token, key/value projections per
    encoder token per decoder layer, scores over the encoder length), and the heads. Training
    is forward + backward = 3 x forward. Element-wise work (norms, softmax, activations) is left
    out, as FlopCounterMode and the MFU convention do.

    Args:
        cfg: the model config.
        seq_len: tokens in the sequence (encoder tokens for encoder-decoders). In ``decode``
            mode: keys in the cache including the new token (decoders), or the encoder length
            (encoder-decoders).
        mode: ``train``, ``forward`` or ``decode`` (one new token with a KV cache).
        decoder_len: decoder tokens of an encoder-decoder (default ``seq_len``; in ``decode``
            mode the decoder keys in the cache including the new token, default 1).
        n_predicted: rows that reach the vocabulary projection (may be fractional as a batch
            average). Default: every position.

    Returns:
        FLOPs as a float.
    """
    enc_dec = cfg.is_encoder_decoder
    if decoder_len is not None and not enc_dec:
        raise ValueError("estimate_flops: decoder_len only applies to encoder-decoder models")
    d = cfg.d_model
    inner = cfg.n_heads * cfg.head_dim  # d_attn
    block = 4 * d * inner + (3 if is_gated(cfg.activation) else 2) * d * cfg.d_ff  # qkv + out + MLP, per token
    cross_q_out = 2 * d * inner  # cross-attention query + output projections, per decoder token
    cross_kv = 2 * d * inner  # cross-attention key + value projections, per encoder token
    L_enc = cfg.n_layers
    L_dec = cfg.decoder_layers if enc_dec else cfg.n_layers

    if mode == "decode":
        if enc_dec:
            s_dec = decoder_len or 1
            macs = L_dec * (block + cross_q_out + 2 * inner * (s_dec + seq_len))
        else:
            macs = L_dec * (block + 2 * inner * seq_len)
        return 2.0 * (macs + head_macs(cfg, 1, 1 if n_predicted is None else n_predicted))

    if enc_dec:
        T, Td = seq_len, decoder_len or seq_len
        macs = L_enc * (T * block + 2 * inner * T * T)  # encoder
        macs += L_dec * (Td * (block + cross_q_out) + T * cross_kv)  # decoder projections
        macs += L_dec * 2 * inner * Td * (Td + T)  # decoder self- and cross-attention
        positions = Td
    else:
        T = seq_len
        macs = L_enc * (T * block + 2 * inner * T * T)
        if cfg.emb_dim != d:  # the embedding projection (E -> d) on every token (encoders only)
            macs += T * cfg.emb_dim * d
        positions = T
    macs += head_macs(cfg, positions, positions if n_predicted is None else n_predicted)
    flops = 2.0 * macs
    return 3.0 * flops if mode == "train" else flops
