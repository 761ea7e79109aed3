"""Scoring text with a generating model: per-token log-probabilities (teacher forcing) and the
perplexity of generated text."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.backbone import backbone_of
from .search import _LM, _as_ids, _positions


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    decoder_input_ids: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probability of each token given the ones before it (teacher forcing).

    For decoders ``out[:, t] = log p(input_ids[:, t] | input_ids[:, :t])`` (left or right
    padding; positions count real tokens only); for encoder-decoders the same over
    ``decoder_input_ids`` given the encoder input. ``out[:, 0]``, padded positions and the first
    real token of a left-padded row (nothing to predict it from) are 0.
    Only positions in ``target_mask`` go through the LM head, so long contexts with short
    targets (in-context scoring) never build a (B, T, V) tensor.

    Args:
        model: decoder or encoder-decoder TransferModel with an ``lm`` head.
        input_ids: (B, T) ids (decoders: the sequences to score; encoder-decoders: the source).
        attention_mask: (B, T) 1 = token; None = no padding.
        decoder_input_ids: (B, T_dec) encoder-decoders only: start token + target tokens.
        target_mask: (B, T_seq) which positions to score (default: every real token but the first).

    Returns:
        (B, T_seq) float32 log-probs, 0 where not scored.
    """
    lm = _LM(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ids = input_ids.to(lm.device)
            mask = attention_mask.to(lm.device) if attention_mask is not None else None
            if lm.is_seq2seq:
                if decoder_input_ids is None:
                    raise ConfigError("token_logprobs: encoder-decoders need decoder_input_ids (start + targets)")
                memory = lm.encode(ids, mask)
                seq = decoder_input_ids.to(lm.device)
                h = lm.hidden(seq, None, None, None, memory, mask)  # (B, T_dec, C)
                real = torch.ones_like(seq, dtype=torch.bool)
            else:
                seq = ids
                pos = _positions(mask) if mask is not None else None
                h = lm.hidden(seq, mask, pos, None)  # (B, T, C)
                real = mask.bool() if mask is not None else torch.ones_like(seq, dtype=torch.bool)
            # a token is scored when it and the one before it are real: the first real token of a
            # (left-padded) row has no context to be predicted from
            want = torch.zeros_like(real)
            want[:, 1:] = real[:, 1:] & real[:, :-1]
            if target_mask is not None:
                want &= target_mask.to(lm.device).bool()
            b, t = want.nonzero(as_tuple=True)  # target positions; their predictors sit at t - 1
            logits = lm.head(h[b, t - 1]).float()  # (N, V)
            lp = logits.log_softmax(-1).gather(1, seq[b, t][:, None]).squeeze(1)  # (N,)
            out = torch.zeros(seq.shape, dtype=torch.float32, device=lm.device)
            out[b, t] = lp
    finally:
        model.train(was_training)
    return out


def generation_perplexity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
) -> torch.Tensor:
    """The model's perplexity on its own generated text, per sequence.

    ``exp(-mean log p(new token | everything before it))`` over the new tokens up to and
    including the first eos (padding after it is not scored). Low values mean the model finds
    its output predictable: greedy/beam output scores low by construction; sampled output is
    the more telling number (a well-trained model stays near its validation perplexity).

    Args:
        model: the model that generated (decoder or encoder-decoder).
        input_ids: (B, T) the prompts (decoders) / encoder inputs as given to ``generate``.
        sequences: what ``generate`` returned, one row per prompt (num_return_sequences=1).
        attention_mask: the prompts' mask as given to ``generate``.
        eos_token_id: end token(s); default the model config's.

    Returns:
        (B,) float32 perplexities (nan for a row with no new tokens).
    """
    cfg = model.config
    eos = torch.tensor(_as_ids(eos_token_id, cfg.eos_token_id) or [-1], device=sequences.device)
    seq2seq = bool(backbone_of(model).is_encoder_decoder)
    start = 1 if seq2seq else input_ids.shape[1]
    if sequences.shape[0] != input_ids.shape[0]:
        raise ConfigError(f"generation_perplexity: {sequences.shape[0]} sequences for {input_ids.shape[0]} prompts "
                          "(score one sequence per prompt)")
    new = sequences[:, start:]  # (B, N)
    is_eos = torch.isin(new, eos).long()
    valid = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first eos
    target = torch.zeros(sequences.shape, dtype=torch.bool, device=sequences.device)
    target[:, start:] = valid
    if seq2seq:
        lp = token_logprobs(model, input_ids, attention_mask, decoder_input_ids=sequences, target_mask=target)
    else:
        mask = None
        if attention_mask is not None:
            mask = torch.ones(sequences.shape, dtype=torch.long, device=sequences.device)
            mask[:, :start] = attention_mask.to(sequences.device)
        lp = token_logprobs(model, sequences, mask, target_mask=target)
    n = target.sum(1).clamp(min=1)
    ppl = torch.exp(-(lp.to(target.device) * target).sum(1) / n)
    return torch.where(target.any(1), ppl, torch.full_like(ppl, float("nan")))
