"""THE block: every family is a stack of these.

* :class:`Attention` — multi-head self- or cross-attention on
  ``torch.nn.functional.scaled_dot_product_attention`` (or plain matmuls, which are faster for
  short bf16 sequences on some CPUs), padding masks and causal masks as one additive bias,
  rotary positions, and a KV cache for decoding.
* :class:`MLP` — GELU / tanh-GELU / ReLU, or gated SwiGLU / GeGLU (one fused input projection).
* :class:`Norm` — LayerNorm or RMSNorm.
* :class:`Block` — self-attention, optional cross-attention, MLP; pre-norm or post-norm.
* :class:`Stack` — embeddings (token + position + segment), blocks, final norm; builds the mask.

Shapes: B batch, T query length, S key length, C d_model, nh heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..config import Activation, ModelConfig, Norm as NormKind, Position
from .backbone import Backbone

# A large negative number rather than -inf: a query row that sees no key at all (left padding
# under a causal mask) then gets a uniform softmax instead of NaN.
_NEG = -1e9


class Norm(nn.Module):
    """LayerNorm (weight + bias) or RMSNorm (weight only, statistics in fp32 like T5)."""

    def __init__(self, d: int, kind: NormKind, eps: float):
        super().__init__()
        self.kind, self.eps = NormKind(kind), eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if self.kind == NormKind.LAYERNORM else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


# ----------------------------------------------------------------------------- KV cache
@dataclass
class LayerCache:
    """Keys/values of one layer, preallocated and grown by doubling (no per-token torch.cat)."""

    k: torch.Tensor | None = None  # (B, nh, capacity, hs)
    v: torch.Tensor | None = None
    length: int = 0
    cross: tuple[torch.Tensor, torch.Tensor] | None = None  # encoder keys/values, computed once

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        need = self.length + t
        if self.k is None or need > self.k.shape[2]:
            cap = max(need, 2 * (self.k.shape[2] if self.k is not None else 0), 16)
            nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            nv = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if self.k is not None and self.length:
                nk[:, :, : self.length] = self.k[:, :, : self.length]
                nv[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = nk, nv
        self.k[:, :, self.length : need] = k
        self.v[:, :, self.length : need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]


@dataclass
class KVCache:
    """One :class:`LayerCache` per decoder block; ``reorder`` serves beam search."""

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layers: int) -> "KVCache":
        return cls([LayerCache() for _ in range(n_layers)])

    @property
    def seq_len(self) -> int:
        return self.layers[0].length if self.layers else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses)."""
        for c in self.layers:
            if c.k is not None:
                c.k, c.v = c.k.index_select(0, index), c.v.index_select(0, index)
            if c.cross is not None:
                c.cross = (c.cross[0].index_select(0, index), c.cross[1].index_select(0, index))


# ----------------------------------------------------------------------------- positions
def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    """(n, d) fixed sinusoids, sin on even and cos on odd channels (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: d // 2])
    return table


def rotary_cos_sin(positions: torch.Tensor, hs: int, base: float, dtype: torch.dtype):
    """cos/sin of shape (B, 1, T, hs) for rotate-half rotary embeddings."""
    inv = 1.0 / (base ** (torch.arange(0, hs, 2, device=positions.device, dtype=torch.float32) / hs))
    ang = positions.float()[..., None] * inv  # (B, T, hs/2)
    emb = torch.cat([ang, ang], dim=-1)[:, None]  # (B, 1, T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias: (1, nh, T, S), added to the scores of every layer."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.embedding = nn.Embedding(cfg.relative_buckets, cfg.n_heads)

    def _bucket(self, rel: torch.Tensor) -> torch.Tensor:
        n = self.n_buckets
        out = torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out += (rel > 0).long() * n
            rel = rel.abs()
        else:
            rel = -torch.clamp(rel, max=0)
        exact = n // 2
        is_small = rel < exact
        large = exact + (
            torch.log(rel.float().clamp(min=1) / exact) / math.log(self.max_distance / exact) * (n - exact)
        ).long()
        large = torch.clamp(large, max=n - 1)
        return out + torch.where(is_small, rel, large)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        rel = k_pos[None, :] - q_pos[:, None]  # (T, S)
        return self.embedding(self._bucket(rel)).permute(2, 0, 1)[None]  # (1, nh, T, S)


# ----------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head attention. Self-attention uses one fused qkv projection; cross-attention a
    query projection and a fused key/value projection over the encoder output."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.nh, self.hs = cfg.n_heads, cfg.head_dim
        inner = self.nh * self.hs
        self.cross = cross
        if cross:
            self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=cfg.bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=cfg.bias)
        self.out = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.scale = self.hs**-0.5 if cfg.attn_scale else 1.0
        self.p_drop = cfg.attention_dropout
        self.impl = getattr(cfg, "attn_impl", "sdpa")

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, nh*hs) -> (B, nh, T, hs)
        B, T, _ = x.shape
        return x.view(B, T, self.nh, self.hs).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        bias: torch.Tensor | None = None,  # additive (B|1, 1|nh, T, S)
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
        memory: torch.Tensor | None = None,  # (B, S, C) encoder output for cross-attention
    ) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.nh * self.hs
        if self.cross:
            q = self._heads(self.q(x))
            if cache is not None and cache.cross is not None:
                k, v = cache.cross
            else:
                k, v = (self._heads(t) for t in self.kv(memory).split(inner, dim=-1))
                if cache is not None:
                    cache.cross = (k, v)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(inner, dim=-1))
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.append(k, v)
        p = self.p_drop if self.training else 0.0
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=p, is_causal=is_causal and bias is None, scale=self.scale
            )
        else:  # plain matmuls: faster than SDPA for short bf16 sequences on some CPUs
            # Every elementwise op on the (B, nh, T, S) scores is a pass over the largest
            # activation of the block, so there are as few as possible: the scale goes on q (the
            # contiguous copy the batched matmul makes of the head view anyway), and the mask is
            # added in place (its backward is the identity, and the scores keep their dtype).
            if self.scale != 1.0:
                q = q * self.scale  # (B, nh, T, hs)
            att = q @ k.transpose(-2, -1)  # (B, nh, T, S)
            if bias is not None:
                att += bias
            elif is_causal:
                S = k.shape[2]
                causal = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1)
                att += torch.zeros(T, S, dtype=att.dtype, device=x.device).masked_fill_(causal, _NEG)
            att = F.dropout(att.softmax(-1), p=p, training=self.training)
            y = att @ v
        y = y.transpose(1, 2).reshape(B, T, inner)  # (B, T, nh*hs)
        return self.out(y)


# ----------------------------------------------------------------------------- MLP
_GELU_TANH_K = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's "gelu_new": ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Under ``torch.compile`` it is written as ``x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))``, the
    same function (``(1 + tanh(u)) / 2 == sigmoid(2u)``; fp32 results differ by ~5e-7): Inductor's
    CPU code vectorises sigmoid through exp, ~4x faster than its tanh, and the tanh-GELU forward and
    backward were the largest fused kernels of a compiled gpt-mini step (~40 of ~120 ms of
    elementwise work, BENCHMARKS.md). Eagerly, torch's fused ``F.gelu`` kernel is the fastest.
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(_GELU_TANH_K * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


def activation_fn(kind: Activation):
    kind = Activation(kind)
    if kind in (Activation.GELU,):
        return F.gelu
    if kind in (Activation.GELU_TANH, Activation.GEGLU):  # T5 v1.1 "gated-gelu" uses the tanh form
        return gelu_tanh
    if kind == Activation.RELU:
        return F.relu
    if kind == Activation.SWIGLU:
        return F.silu
    raise ValueError(kind)


def is_gated(activation: Activation | str) -> bool:
    """Whether the MLP of this activation is gated (SwiGLU / GeGLU: [gate; up] of d_ff each).

    Args:
        activation: ``ModelConfig.activation``.

    Returns:
        True for swiglu and geglu.
    """
    return Activation(activation) in (Activation.SWIGLU, Activation.GEGLU)


class MLP(nn.Module):
    """Position-wise feed-forward. Gated variants fuse [gate; up] into one projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = is_gated(cfg.activation)
        self.fc1 = nn.Linear(cfg.d_model, (2 if self.gated else 1) * cfg.d_ff, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, T, d_ff or 2*d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.fc2(h)


# ----------------------------------------------------------------------------- block
class Block(nn.Module):
    """Self-attention [+ cross-attention] + MLP with residuals; pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.attn = Attention(cfg)
        self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.cross_attn = Attention(cfg, cross=True) if cross else None
        self.cross_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps) if cross else None
        self.mlp = MLP(cfg)
        self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x, norm, fn):
        if self.prenorm:  # x + f(norm(x))
            return x + self.drop(fn(norm(x)))
        return norm(x + self.drop(fn(x)))  # post-norm: norm(x + f(x))

    def forward(self, x, bias=None, is_causal=False, rope=None, cache=None, memory=None, memory_bias=None):
        x = self._residual(x, self.attn_norm, lambda h: self.attn(h, bias, is_causal, rope, cache))
        if self.cross_attn is not None:
            x = self._residual(
                x, self.cross_norm, lambda h: self.cross_attn(h, memory_bias, False, None, cache, memory)
            )
        return self._residual(x, self.mlp_norm, self.mlp)


# ----------------------------------------------------------------------------- stack
class Stack(nn.Module):
    """Embeddings + blocks + optional final norm. Used as encoder, decoder, or both halves of an
    encoder-decoder. The token embedding is passed in so encoder and decoder can share it."""

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross: bool, embed_tokens: nn.Embedding):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.embed_tokens = [embed_tokens]  # a list: registered once, on the family module
        pos = Position(cfg.position)
        E = cfg.emb_dim  # embedding width: d_model unless embedding_size is set (ELECTRA-Small)
        self.pos_emb = (
            nn.Embedding(cfg.max_positions + cfg.position_offset, E) if pos == Position.LEARNED else None
        )
        if pos == Position.SINUSOIDAL:
            self.register_buffer("sin_table", sinusoidal_table(cfg.max_positions, E), persistent=False)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size else None
        self.emb_norm = Norm(E, cfg.norm, cfg.norm_eps) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        # HF ElectraModel.embeddings_project: embeddings (after norm and dropout) -> d_model; only
        # created when the widths differ, so the default model's modules and state dict are unchanged
        self.emb_proj = nn.Linear(E, cfg.d_model) if E != cfg.d_model else None
        self.rel_bias = RelativePositionBias(cfg, bidirectional=not causal) if pos == Position.RELATIVE else None
        self.blocks = nn.ModuleList(Block(cfg, cross=cross) for _ in range(n_layers))
        self.final_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps) if cfg.final_norm else None
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        #: activation checkpointing in training: keep only each block's input and recompute the
        #: block in backward (a run setting, not part of the saved config); see set_gradient_checkpointing
        self.gradient_checkpointing = False

    def positions(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past: int,
                  shape: tuple[int, int] | None = None, device: torch.device | None = None) -> torch.Tensor:
        """Default position ids (B, T): 0.. (after the cache), or RoBERTa's pad-aware numbering."""
        if input_ids is None:  # inputs_embeds: no ids to find padding in, count from the cache
            B, T = shape
            return torch.arange(past, past + T, device=device).expand(B, T)
        B, T = input_ids.shape
        if getattr(self.cfg, "pad_aware_positions", False):
            mask = input_ids.ne(self.cfg.pad_token_id).long()
            return (torch.cumsum(mask, dim=1) + past) * mask + self.cfg.pad_token_id - self.cfg.position_offset
        return torch.arange(past, past + T, device=input_ids.device).expand(B, T)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = attend, over past + current keys
        position_ids: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        cache: "KVCache | None" = None,
        memory: torch.Tensor | None = None,  # (B, S_enc, C)
        memory_mask: torch.Tensor | None = None,  # (B, S_enc)
        output_hidden_states: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,  # (B|1, T, S) bool/0-1, 1 = query t may attend key s
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Hidden states (B, T, C) and, with ``output_hidden_states``, every layer's input.

        ``attn_mask`` is a per-example self-attention pattern (permuted LM's factorisation order,
        UniLM's left-to-right / right-to-left / sequence-to-sequence masks). It is combined with
        the padding mask and, in a causal stack, with causality (a key must pass all three). An
        all-ones pattern is skipped eagerly, as an all-ones padding mask is, so the fast paths
        (no bias, SDPA's causal kernel) are unchanged when no pattern restricts anything.
        """
        cfg = self.cfg
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        past = cache.seq_len if cache is not None else 0
        x = self.embed_tokens[0](input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        if self.emb_scale != 1.0:
            x = x * self.emb_scale
        if position_ids is None and (self.pos_emb is not None or self.cfg.position in (Position.ROTARY, Position.SINUSOIDAL)):
            position_ids = self.positions(input_ids, attention_mask, past, (B, T), x.device)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids + cfg.position_offset)
        elif cfg.position == Position.SINUSOIDAL:
            x = x + self.sin_table[position_ids].to(x.dtype)
        if self.type_emb is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(B, T, dtype=torch.long, device=x.device)
            x = x + self.type_emb(token_type_ids)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        if self.emb_proj is not None:
            x = self.emb_proj(x)  # (B, T, E) -> (B, T, C)

        rope = None
        if cfg.position == Position.ROTARY:
            rope = rotary_cos_sin(position_ids, cfg.head_dim, cfg.rotary_base, x.dtype)

        # One additive bias (B|1, 1|nh, T, S) from padding, causality and relative positions.
        # Fast path: nothing to add and no cache -> None, so SDPA can use its causal kernel.
        S = past + T
        bias = None
        # Under torch.compile the mask is always applied (adding 0 where all keys are visible):
        # a data-dependent branch would split the compiled graph.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            bias = (1.0 - attention_mask[:, None, None, :S].to(x.dtype)) * _NEG  # (B, 1, 1, S)
        if attn_mask is not None and (torch.compiler.is_compiling() or not bool(attn_mask.all())):
            if attn_mask.dim() != 3 or attn_mask.shape[-2:] != (T, S):
                raise ValueError(f"attn_mask must be (B, {T}, {S}) (queries x keys), got {tuple(attn_mask.shape)}")
            pb = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill_(
                ~attn_mask.to(device=x.device, dtype=torch.bool), _NEG)[:, None]  # (B|1, 1, T, S)
            bias = pb if bias is None else bias + pb
        need_causal_mask = self.causal and (bias is not None or past > 0 or self.rel_bias is not None)
        if need_causal_mask and T > 1:
            causal = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(past + 1)
            cb = torch.zeros(T, S, dtype=x.dtype, device=x.device).masked_fill(causal, _NEG)[None, None]
            bias = cb if bias is None else bias + cb
        if self.rel_bias is not None:
            q_pos = torch.arange(past, S, device=x.device)
            rb = self.rel_bias(q_pos, torch.arange(S, device=x.device)).to(x.dtype)
            bias = rb if bias is None else bias + rb
        # Under autocast the attention scores are in the autocast dtype (bf16), and adding an fp32
        # mask to them takes a slow mixed-dtype path (~25x a same-dtype add for a (B, 1, T, S)
        # mask on CPU, BENCHMARKS.md): masks of 0 / -1e9 are cast once here, for every layer. A
        # learned relative-position bias keeps x's dtype (its values are not just 0 and -1e9).
        mask_dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            mask_dtype = torch.get_autocast_dtype(x.device.type)
        if bias is not None:
            bias = bias.to(x.dtype if self.rel_bias is not None else mask_dtype)
        is_causal = self.causal and bias is None and past == 0

        mem_bias = None
        if memory is not None and memory_mask is not None and (
                torch.compiler.is_compiling() or not bool(memory_mask.all())):
            mem_bias = ((1.0 - memory_mask[:, None, None, :].to(x.dtype)) * _NEG).to(mask_dtype)

        hidden = [] if output_hidden_states else None
        for i, block in enumerate(self.blocks):
            if hidden is not None:
                hidden.append(x)
            if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                # recomputed in backward with the same dropout masks (the RNG state is replayed)
                x = torch.utils.checkpoint.checkpoint(block, x, bias, is_causal, rope, None, memory, mem_bias,
                                                      use_reentrant=False)
            else:
                x = block(x, bias, is_causal, rope, cache.layers[i] if cache is not None else None, memory, mem_bias)
        if self.final_norm is not None:
            x = self.drop(self.final_norm(x))
        if hidden is not None:
            hidden.append(x)
        return x, tuple(hidden) if hidden is not None else None


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation (gradient) checkpointing on every backbone inside ``model``, through
    :meth:`~transferlab.models.backbone.Backbone.set_gradient_checkpointing`.

    In training each block then keeps only its input; its activations (attention scores, the
    MLP's hidden layer) are recomputed during backward (``torch.utils.checkpoint``, non-reentrant).
    That trades about one more forward per step for activation memory that no longer grows with
    the number of layers. Gradients are the same as without it (dropout masks are replayed).

    Args:
        model: a TransferModel, a Backbone or a module holding them.
        enabled: on or off.

    Returns:
        The number of backbones switched (0: nothing to checkpoint in this model).
    """
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    for b in backbones:
        b.set_gradient_checkpointing(bool(enabled))
    return len(backbones)
