"""The three families as thin compositions of :class:`~transferlab.models.blocks.Stack`.

* :class:`Encoder` — one bidirectional stack (+ optional [CLS] pooler): BERT, RoBERTa, ELECTRA.
* :class:`Decoder` — one causal stack: GPT.
* :class:`EncoderDecoder` — a bidirectional stack and a causal stack with cross-attention,
  sharing one token embedding: BART, T5.

Each returns a :class:`BackboneOutput` of hidden states; heads (``heads.py``) make logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn as nn

from ..config import Family, ModelConfig, Position
from ..errors import ConfigError
from .backbone import Backbone, build_backbone, register_family  # noqa: F401 (build_backbone re-exported)
from .blocks import Attention, Block, KVCache, LayerCache, Stack
from .decode_step import _DecodeStep, _freezing, fast_decode_step
from .flops import transformer_flops


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


class TransformerBackbone(Backbone):
    """The :class:`Backbone` contract on :class:`Stack` s (shared by the three transformer families).

    Subclasses set ``main`` (the stack whose states features mix: the encoder, or the decoder of a
    decoder-only model) and ``causal_stack`` (the one :meth:`decode` runs, None for encoders).
    """

    cfg: ModelConfig

    @property
    def config(self) -> ModelConfig:
        return self.cfg

    def stacks(self) -> list[Stack]:
        return [m for m in (getattr(self, "encoder", None), getattr(self, "decoder", None)) if isinstance(m, Stack)]

    @property
    def main_stack(self) -> Stack:
        return self.stacks()[0]

    @property
    def causal_stack(self) -> Stack | None:
        d = getattr(self, "decoder", None)
        return d if isinstance(d, Stack) else None

    @property
    def num_hidden_states(self) -> int:
        return len(self.main_stack.blocks) + 1  # embeddings + one per block

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.main_stack.positions(input_ids, attention_mask, 0)  # (B, T)

    def input_embeddings(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # token + position + segment, times the embedding scale, through the embedding norm:
        # exactly the first half of Stack.forward (a test checks it), before dropout and emb_proj
        stack = self.main_stack
        cfg = stack.cfg
        x = stack.embed_tokens[0](input_ids)  # (B, T, E)
        if stack.emb_scale != 1.0:
            x = x * stack.emb_scale
        if stack.pos_emb is not None or cfg.position == Position.SINUSOIDAL:
            pos = stack.positions(input_ids, attention_mask, 0)
            x = x + (stack.pos_emb(pos + cfg.position_offset) if stack.pos_emb is not None
                     else stack.sin_table[pos].to(x.dtype))
        if stack.type_emb is not None:
            tt = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + stack.type_emb(tt)
        if stack.emb_norm is not None:
            x = stack.emb_norm(x)
        return x

    def share_input_embeddings(self, table: nn.Embedding) -> None:
        if "embed_tokens" in self._modules:
            del self._modules["embed_tokens"]
        object.__setattr__(self, "embed_tokens", table)  # not registered: its owner registers it
        for s in self.stacks():
            s.embed_tokens = [table]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        # depth i+1 = block i of every stack (an encoder-decoder's encoder and decoder block i share
        # a depth); final norms and the pooler on top; everything else (embeddings) at the bottom
        n = max(len(s.blocks) for s in self.stacks())
        groups: list[list[nn.Parameter]] = [[] for _ in range(n + 2)]
        placed: set[int] = set()
        for s in self.stacks():
            for i, blk in enumerate(s.blocks):
                for p in blk.parameters():
                    if id(p) not in placed:
                        groups[i + 1].append(p)
                        placed.add(id(p))
            if s.final_norm is not None:
                for p in s.final_norm.parameters():
                    if id(p) not in placed:
                        groups[n + 1].append(p)
                        placed.add(id(p))
        pooler = getattr(self, "pooler", None)
        for p in (pooler.parameters() if pooler is not None else ()):
            if id(p) not in placed:
                groups[n + 1].append(p)
                placed.add(id(p))
        groups[0] = [p for p in self.parameters() if id(p) not in placed]
        return groups

    def compile_units(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, Block)]

    def init_weights(self) -> None:
        # GPT-2 / nanoGPT: scale the residual output projections by 1/sqrt(2 * n_layers) in
        # pre-norm stacks so the residual stream's variance does not grow with depth.
        cfg = self.cfg
        if cfg.prenorm:
            n = cfg.n_layers + (cfg.decoder_layers if cfg.is_encoder_decoder else 0)
            for pname, p in self.named_parameters():
                if pname.endswith(("attn.out.weight", "mlp.fc2.weight")):
                    nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * n))

    def set_dropout(self, hidden: float | None = None, attention: float | None = None) -> None:
        if hidden is not None:
            self.cfg.dropout = hidden
            for m in self.modules():
                if isinstance(m, nn.Dropout):
                    m.p = hidden
        if attention is not None:
            self.cfg.attention_dropout = attention
            for m in self.modules():
                if isinstance(m, Attention):
                    m.p_drop = attention

    def set_attention(self, impl: str) -> None:
        for m in self.modules():
            if isinstance(m, Attention):
                m.impl = impl
        self.cfg.attn_impl = impl

    def set_gradient_checkpointing(self, on: bool) -> None:
        for s in self.stacks():
            s.gradient_checkpointing = bool(on)

    @classmethod
    def estimate_flops(cls, cfg: ModelConfig, seq_len: int, mode: str = "train", decoder_len: int | None = None,
                       n_predicted: float | None = None) -> float:
        return transformer_flops(cfg, seq_len, mode, decoder_len, n_predicted)

    @property
    def position_limit(self) -> int | None:
        # learned / sinusoidal tables end at max_positions; rotary, relative and none do not
        return self.cfg.max_positions if Position(self.cfg.position) in (Position.LEARNED, Position.SINUSOIDAL) else None

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device,
                  zeros: bool = False) -> KVCache:
        """A KV cache with room for ``capacity`` positions (no regrowth while decoding). ``zeros``:
        for readers of the whole cache (the compiled step), whose masking of unused columns would
        not survive uninitialised keys (a garbage key of 1e30 outweighs any bias)."""
        stack = self._causal_or_refuse()
        shape = (batch, self.cfg.n_heads, capacity, self.cfg.head_dim)
        new = torch.zeros if zeros else torch.empty
        return KVCache([LayerCache(k=new(shape, dtype=dtype, device=device), v=new(shape, dtype=dtype, device=device))
                        for _ in range(len(stack.blocks))])

    def decode(self, ids, mask, positions, cache, memory=None, memory_mask=None) -> torch.Tensor:
        h, _ = self._causal_or_refuse()(ids, mask, positions, cache=cache, memory=memory, memory_mask=memory_mask)
        return h  # (B, T, C)

    def fast_decode_step(self, head: nn.Module, rows: int, compiled: bool = False,
                         pack: bool = True) -> _DecodeStep | None:
        """The lean one-token step over this backbone's causal stack and ``head`` (an ``LMHead``),
        or None where it keeps the module path (e.g. T5's relative position bias)."""
        return fast_decode_step(self, head, rows, compiled=compiled, pack=pack)

    def decode_context(self, compiled: bool):
        """Inductor's weight freezing while a compiled step runs (see ``decode_step._freezing``)."""
        return _freezing(compiled)

    def _causal_or_refuse(self) -> Stack:
        s = self.causal_stack
        if s is None or not self.can_generate:
            raise ConfigError(self._no_generate())
        return s


class Encoder(TransformerBackbone):
    default_pooling = "cls"  # the pooler / [CLS] summary token

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
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


class Decoder(TransformerBackbone):
    can_generate = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
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


class EncoderDecoder(TransformerBackbone):
    can_generate = True
    is_encoder_decoder = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False, cross=False, embed_tokens=self.embed_tokens)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True, embed_tokens=self.embed_tokens)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder memory (B, S, C) the decoder attends to (:meth:`Backbone.encode`)."""
        return self.encode_states(ids, mask)[0]

    def encode_states(self, input_ids, attention_mask=None, output_hidden_states=False, inputs_embeds=None):
        """(states (B, S, C), every layer's states or None) of the encoder."""
        return self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                            inputs_embeds=inputs_embeds)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, use_cache=False, output_hidden_states=False,
                decoder_position_ids=None, inputs_embeds=None, **_unused) -> BackboneOutput:
        if encoder_outputs is None:
            enc, enc_hs = self.encode_states(input_ids, attention_mask, output_hidden_states, inputs_embeds)
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


register_family(Family.ENCODER.value, Encoder)
register_family(Family.DECODER.value, Decoder)
register_family(Family.ENCODER_DECODER.value, EncoderDecoder)


