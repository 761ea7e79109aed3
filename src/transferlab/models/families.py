"""The three families as thin compositions of :class:`~transferlab.models.blocks.Stack`.

* :class:`Encoder` — one bidirectional stack (+ optional [CLS] pooler): BERT, RoBERTa, ELECTRA.
* :class:`Decoder` — one causal stack: GPT.
* :class:`EncoderDecoder` — a bidirectional stack and a causal stack with cross-attention,
  sharing one token embedding: BART, T5.

Each returns a :class:`BackboneOutput` of hidden states; heads (``heads.py``) make logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import Family, ModelConfig
from ..errors import ConfigError
from .blocks import KVCache, Stack


@dataclass
class BackboneOutput:
    last_hidden_state: torch.Tensor  # (B, T, C): decoder states for encoder-decoders
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + one per layer
    pooler_output: torch.Tensor | None = None  # (B, C) encoders with a pooler
    encoder_last_hidden_state: torch.Tensor | None = None  # (B, S, C) encoder-decoders
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: KVCache | None = None


class Pooler(nn.Module):
    """BERT pooler: tanh(W h_[CLS] + b)."""

    def __init__(self, d: int):
        super().__init__()
        self.dense = nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, C)
        return torch.tanh(self.dense(h[:, 0]))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.emb_dim)  # (V, E); E = d_model by default
        self.encoder = Stack(cfg, cfg.n_layers, causal=False, cross=False, embed_tokens=self.embed_tokens)
        self.pooler = Pooler(cfg.d_model) if cfg.pooler else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=False, inputs_embeds=None, attn_mask=None, **_unused) -> BackboneOutput:
        # attn_mask: optional (B|1, T, T) self-attention pattern, 1 = may attend (see Stack.forward)
        h, hs = self.encoder(input_ids, attention_mask, position_ids, token_type_ids,
                             output_hidden_states=output_hidden_states, inputs_embeds=inputs_embeds,
                             attn_mask=attn_mask)
        return BackboneOutput(h, hs, self.pooler(h) if self.pooler is not None else None)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_layers = cfg.n_layers
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.decoder = Stack(cfg, cfg.n_layers, causal=True, cross=False, embed_tokens=self.embed_tokens)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, output_hidden_states=False, inputs_embeds=None, attn_mask=None,
                **_unused) -> BackboneOutput:
        cache = past_key_values if past_key_values is not None else (KVCache.empty(self.n_layers) if use_cache else None)
        h, hs = self.decoder(input_ids, attention_mask, position_ids, cache=cache,
                             output_hidden_states=output_hidden_states, inputs_embeds=inputs_embeds,
                             attn_mask=attn_mask)
        return BackboneOutput(h, hs, past_key_values=cache)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, start_token_id: int) -> torch.Tensor:
    """Decoder inputs from targets: [start] + labels[:-1], with -100 replaced by pad."""
    out = labels.new_zeros(labels.shape)
    out[:, 1:] = labels[:, :-1].clone()
    out[:, 0] = start_token_id
    return out.masked_fill(out == -100, pad_token_id)


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False, cross=False, embed_tokens=self.embed_tokens)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True, embed_tokens=self.embed_tokens)

    def encode(self, input_ids, attention_mask=None, output_hidden_states=False, inputs_embeds=None):
        return self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                            inputs_embeds=inputs_embeds)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, use_cache=False, output_hidden_states=False,
                decoder_position_ids=None, inputs_embeds=None, **_unused) -> BackboneOutput:
        if encoder_outputs is None:
            enc, enc_hs = self.encode(input_ids, attention_mask, output_hidden_states, inputs_embeds)
        elif isinstance(encoder_outputs, torch.Tensor):
            enc, enc_hs = encoder_outputs, None
        else:  # a BackboneOutput or (last, hidden) tuple from an earlier call
            enc = getattr(encoder_outputs, "encoder_last_hidden_state", None)
            if enc is None:
                enc = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else encoder_outputs.last_hidden_state
            enc_hs = getattr(encoder_outputs, "encoder_hidden_states", None)
        if decoder_input_ids is None:
            if input_ids is None:
                raise ConfigError("encoder-decoder forward needs decoder_input_ids (or input_ids to shift)")
            if self.cfg.decoder_start_token_id < 0:
                raise ConfigError("model.decoder_start_token_id is not set: pass decoder_input_ids or set it "
                                  "(BART uses eos, T5 pad)")
            decoder_input_ids = shift_tokens_right(input_ids, self.cfg.pad_token_id, self.cfg.decoder_start_token_id)
        cache = past_key_values if past_key_values is not None else (
            KVCache.empty(self.cfg.decoder_layers) if use_cache else None)
        h, hs = self.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids, cache=cache,
                             memory=enc, memory_mask=attention_mask, output_hidden_states=output_hidden_states)
        return BackboneOutput(h, hs, None, enc, enc_hs, cache)


FAMILIES = {Family.ENCODER: Encoder, Family.DECODER: Decoder, Family.ENCODER_DECODER: EncoderDecoder}


def build_backbone(cfg: ModelConfig) -> nn.Module:
    return FAMILIES[Family(cfg.family)](cfg)
