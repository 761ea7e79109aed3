"""The lean one-token decode step of the transformer families, beside the block it mirrors.

:class:`_DecodeStep` computes what :class:`~transferlab.models.blocks.Stack` ``.forward`` + the
LM head compute for one new token per row with a KV cache, without ``nn.Module`` calls (a decode
step reads every weight once per token; at small sizes neither the weights, which do not stay in
cache between tokens, nor Python/dispatch overhead can be ignored). Linears run on oneDNN-prepacked
weights on CPUs (:class:`_Linear`), keys/values are written into the preallocated cache in place,
the padding bias is built once per ``generate``, bf16 models attend in float32 on CPUs.
``compile=True`` runs the same body through ``torch.compile`` (static shapes, frozen weights,
autotuned GEMMs). Speed-ups are measured in BENCHMARKS.md (generation section).

A change to :class:`~transferlab.models.blocks.Block` or ``Stack`` that the step does not copy
must either be mirrored in :meth:`_DecodeStep._body` or listed in :meth:`_DecodeStep.unsupported`
(that model then decodes through the modules); ``tests/parity/test_generation_step.py`` checks the step
against the module path for every variant it covers. Generation reaches it only through
:meth:`~transferlab.models.families.TransformerBackbone.fast_decode_step`.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..config import Position
from .blocks import _NEG, apply_rotary, rotary_cos_sin

if TYPE_CHECKING:
    from .blocks import KVCache
    from .families import TransformerBackbone
    from .heads import LMHead


def _packable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacked linears (what ``torch.compile``'s weight freezing uses for bf16 on
    CPUs) are available for weights of this device and dtype."""
    # oneDNN packs bf16 weights only on CPUs with bf16 conversion instructions (avx512bw/vl/dq or
    # avx_ne_convert); elsewhere its reorder raises and the linear would stay unpacked anyway
    bf16_ok = dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and bf16_ok
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _Linear:
    """``F.linear(x, weight, bias)`` for (M, K) inputs, the weight prepacked once for oneDNN.

    Why: decoding reads every weight once per token, and at these sizes the weights do not stay
    in cache between tokens. ``F.linear`` with a handful of rows goes to MKL's GEMM, which streams
    an (N, K) weight at 6-8 GB/s from memory on the 2-core test machine and does not use the
    second thread; oneDNN's inner product on a prepacked weight streams 11-14 GB/s with both:
    a pass over gpt-mini's decode linears is 1.3-1.6x faster at 1 row and 1.5-2.2x at 8 rows
    (``benchmarks/generate_throughput.py --kernels``, BENCHMARKS.md). The result is the same
    float32/bfloat16 product up to summation order.
    """

    __slots__ = ("w", "b", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int, pack: bool) -> None:
        # the Parameter itself, not a detached copy: under torch.compile's freezing it is a constant
        self.w, self.b, self.packed = weight, bias, False
        if pack:
            try:  # a private op (stable since torch 2.0, used by inductor): fall back if it fails
                self.w = torch.ops.mkldnn._reorder_linear_weight(weight, rows)  # the batch size is a layout hint
                self.packed = True
            except (RuntimeError, TypeError):
                pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "none", [], "")
        return F.linear(x, self.w, self.b)


def _norm_fn(norm: torch.nn.Module | None) -> Any:
    """The norm's computation without ``nn.Module.__call__`` (hooks, dispatch): same numbers."""
    if norm is None:
        return None
    if norm.bias is not None:  # LayerNorm
        shape, w, b, eps = (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    return norm.forward  # RMSNorm


class _Layer:
    """One block's callables for the decode step (None where the block has no such part)."""

    __slots__ = ("attn_norm", "qkv", "out", "cross_norm", "cq", "cout", "mlp_norm", "fc1", "fc2", "act", "gated")


class _DecodeStep:
    """The decoder stack + LM head for one new token per row, calling the blocks' weights directly.

    It computes what ``Stack.forward`` + the LM head compute for a (B, 1) input with a KV cache
    (tested equal on GPT-2, BART, rotary/RMSNorm/SwiGLU and post-norm decoders), without what a
    single token does not need: no ``nn.Module`` calls, hidden states kept (B, C), the padding
    bias built once per ``generate`` instead of once per token, keys/values written into the
    preallocated cache in place. On CPUs the linears run on prepacked oneDNN weights
    (:class:`_Linear`), and bf16/fp16 models attend in float32 over a float32 cache: SDPA's
    one-query bf16 kernel is 2-5x slower than its float32 one there (and less accurate).

    ``compiled=True`` runs the same body through ``torch.compile`` with static shapes: the cache
    is read whole (its capacity is fixed; columns after the new token are masked) and the
    position is a tensor, so one graph serves every step; the weights are frozen into the graph
    (inductor ``freezing``) and its GEMMs autotuned (``max_autotune``: inductor's C++ GEMM
    templates, which beat oneDNN for 1-row products here). Packing is left to inductor.

    The prompt (prefill) still runs through the modules; this object takes over from the first
    new token. Eager steps are built per ``generate`` call (packing gpt-mini takes 3-5 ms, about
    what a few tokens save: ``pack=False`` below 8 new tokens); compiled ones are kept with the
    backbone (:func:`_compiled_step`).
    """

    @staticmethod
    def unsupported(backbone: "TransformerBackbone") -> str | None:
        """Why this backbone keeps the module path for its decode steps (None: it does not)."""
        stack = backbone.causal_stack
        if stack is None:
            return "no causal stack"
        if stack.rel_bias is not None:
            return "relative position bias (T5)"
        if stack.type_emb is not None:
            return "segment embeddings"
        if getattr(backbone.config, "pad_aware_positions", False):
            return "pad-aware position ids"
        return None

    def __init__(self, backbone: "TransformerBackbone", head: "LMHead", rows: int, compiled: bool = False,
                 pack: bool = True) -> None:
        stack, cfg = backbone.causal_stack, backbone.config
        p = next(backbone.parameters())
        device, dtype = p.device, p.dtype
        pack = pack and _packable(device, dtype) and not compiled
        lin = lambda m: _Linear(m.weight, m.bias, rows, pack)  # noqa: E731
        self.dtype = dtype
        low = dtype in (torch.bfloat16, torch.float16)
        self.attn_dtype = torch.float32 if (device.type == "cpu" and low) else dtype
        self.nh, self.hs, self.prenorm = cfg.n_heads, cfg.head_dim, cfg.prenorm
        self.scale = stack.blocks[0].attn.scale
        self.emb, self.emb_scale = stack.embed_tokens[0].weight, stack.emb_scale
        self.pos_w = stack.pos_emb.weight if stack.pos_emb is not None else None
        self.pos_off = cfg.position_offset
        self.sin = getattr(stack, "sin_table", None) if Position(cfg.position) == Position.SINUSOIDAL else None
        self.rotary = (cfg.head_dim, cfg.rotary_base) if Position(cfg.position) == Position.ROTARY else None
        self.emb_norm, self.final_norm = _norm_fn(stack.emb_norm), _norm_fn(stack.final_norm)
        self.layers: list[_Layer] = []
        for blk in stack.blocks:
            L = _Layer()
            L.attn_norm, L.mlp_norm, L.cross_norm = _norm_fn(blk.attn_norm), _norm_fn(blk.mlp_norm), None
            L.qkv, L.out = lin(blk.attn.qkv), lin(blk.attn.out)
            L.cq = L.cout = None
            if blk.cross_attn is not None:
                L.cross_norm, L.cq, L.cout = _norm_fn(blk.cross_norm), lin(blk.cross_attn.q), lin(blk.cross_attn.out)
            L.fc1, L.fc2, L.act, L.gated = lin(blk.mlp.fc1), lin(blk.mlp.fc2), blk.mlp.act, blk.mlp.gated
            self.layers.append(L)
        self.head_transform, self.head_scale = head.transform, head.scale
        self.head = _Linear(head.output_weight, head.bias, rows, pack)
        self.fn = None
        if compiled:
            self.fn = torch.compile(self._body, fullgraph=True, dynamic=False, options=_COMPILE_OPTIONS)

    def adopt(self, cache: "KVCache") -> None:
        """Bring a cache the prompt filled (model dtype) to the attention dtype, once per call.

        Args:
            cache: the KV cache of the call (its tensors are replaced in place when the dtypes differ).
        """
        if self.attn_dtype == self.dtype:
            return
        for c in cache.layers:
            c.k, c.v = c.k.to(self.attn_dtype), c.v.to(self.attn_dtype)
            if c.cross is not None:
                c.cross = (c.cross[0].to(self.attn_dtype), c.cross[1].to(self.attn_dtype))

    def padding_bias(self, mask: torch.Tensor | None, width: int | None = None) -> torch.Tensor | None:
        """The additive attention bias of a padding mask, built once per call.

        Args:
            mask: (B, L) 0/1 mask (1 = real token), or None.
            width: pad the bias to this many columns (the cache capacity); columns past L attend.

        Returns:
            (B, 1, 1, width or L) bias in the attention dtype, or None when nothing is masked.
        """
        if mask is None or bool(mask.all()):
            return None
        if width is not None and width > mask.shape[1]:
            mask = F.pad(mask, (0, width - mask.shape[1]), value=1)
        return ((1 - mask)[:, None, None, :] * _NEG).to(self.attn_dtype)

    def __call__(self, tok: torch.Tensor, cache: "KVCache", positions: torch.Tensor | None,
                 bias: torch.Tensor | None, mem_bias: torch.Tensor | None) -> torch.Tensor:
        """Float32 next-token logits (B, V) after appending ``tok`` (B,) to every row.

        Args:
            tok: (B,) the newest token of each row.
            cache: the :class:`~transferlab.models.blocks.KVCache` the prompt filled (adopted).
            positions: (B, 1) position ids of ``tok`` when rows are left-padded; None = every row
                is at position ``cache.seq_len``.
            bias: (B, 1, 1, capacity) padding bias of the self-attention, or None.
            mem_bias: (B, 1, 1, S_enc) padding bias of the cross-attention, or None.
        """
        past = cache.seq_len
        ks, vs = [c.k for c in cache.layers], [c.v for c in cache.layers]
        crosses = [c.cross for c in cache.layers] if self.layers[0].cq is not None else None
        if self.fn is None:
            logits = self._body(tok, past, positions, bias, mem_bias, ks, vs, crosses)
        else:
            at = torch.full((1,), past, dtype=torch.long, device=tok.device)
            tok = torch.clone(tok, memory_format=torch.contiguous_format)  # a column of seq: its stride varies
            logits = self.fn(tok, at, positions, bias, mem_bias, ks, vs, crosses)
        for c in cache.layers:
            c.length = past + 1
        return logits

    def _body(self, tok: torch.Tensor, at: int | torch.Tensor, positions: torch.Tensor | None,
              bias: torch.Tensor | None, mem_bias: torch.Tensor | None, ks: list[torch.Tensor],
              vs: list[torch.Tensor], crosses: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """One step. ``at`` is the cache column of the new token: an int (eager: attend to the
        first ``at + 1`` columns) or a (1,) tensor (static: attend to all, later ones masked)."""
        B, nh, hs = tok.shape[0], self.nh, self.hs
        static = isinstance(at, torch.Tensor)
        x = F.embedding(tok, self.emb)  # (B, C)
        if self.emb_scale != 1.0:
            x = x * self.emb_scale
        if self.pos_w is not None:  # (C,) or (1, C) when every row is at ``at``; else (B, C)
            x = x + (self.pos_w[at + self.pos_off] if positions is None
                     else F.embedding(positions[:, 0] + self.pos_off, self.pos_w))
        elif self.sin is not None:
            x = x + (self.sin[at] if positions is None else self.sin[positions[:, 0]]).to(x.dtype)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        rope = None
        if self.rotary is not None:
            if positions is None:
                positions = at.view(1, 1) if static else torch.full((1, 1), at, device=x.device)
            rope = rotary_cos_sin(positions, self.rotary[0], self.rotary[1], x.dtype)  # (B|1, 1, 1, hs)
        if static:  # the whole cache, columns after ``at`` masked
            cols = torch.arange(ks[0].shape[2], device=x.device)
            window = torch.zeros(cols.shape, dtype=self.attn_dtype, device=x.device).masked_fill(cols > at, _NEG)
            window = window[None, None, None, :]  # (1, 1, 1, capacity)
            bias = window if bias is None else bias + window  # (B|1, 1, 1, capacity)
        else:
            S = at + 1
            bias = bias[..., :S] if bias is not None else None
        pre, adt, dt = self.prenorm, self.attn_dtype, self.dtype
        for i, L in enumerate(self.layers):
            # self-attention: one query per row against the cached keys
            h = L.attn_norm(x) if pre else x
            q, k, v = L.qkv(h).view(B, 3, nh, 1, hs).unbind(1)  # 3 x (B, nh, 1, hs)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if static:
                ks[i].index_copy_(2, at, k.to(adt))  # in place, into the preallocated cache
                vs[i].index_copy_(2, at, v.to(adt))
                kk, vv = ks[i], vs[i]
            else:
                ks[i][:, :, at:S] = k
                vs[i][:, :, at:S] = v
                kk, vv = ks[i][:, :, :S], vs[i][:, :, :S]
            y = F.scaled_dot_product_attention(q.to(adt), kk, vv, attn_mask=bias, scale=self.scale)  # (B, nh, 1, hs)
            y = L.out(y.reshape(B, nh * hs).to(dt))
            x = x + y if pre else L.attn_norm(x + y)
            if L.cq is not None:  # cross-attention over the encoder keys/values cached by the prefill
                h = L.cross_norm(x) if pre else x
                q = L.cq(h).view(B, nh, 1, hs)
                y = F.scaled_dot_product_attention(q.to(adt), crosses[i][0], crosses[i][1], attn_mask=mem_bias,
                                                   scale=self.scale)
                y = L.cout(y.reshape(B, nh * hs).to(dt))
                x = x + y if pre else L.cross_norm(x + y)
            h = L.mlp_norm(x) if pre else x
            m = L.fc1(h)  # (B, d_ff or 2 * d_ff)
            if L.gated:
                gate, up = m.chunk(2, dim=-1)
                m = L.act(gate) * up
            else:
                m = L.act(m)
            y = L.fc2(m)
            x = x + y if pre else L.mlp_norm(x + y)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.head_transform is not None:
            x = self.head_transform(x)
        if self.head_scale != 1.0:
            x = x * self.head_scale
        return self.head(x).float()  # (B, V)


#: inductor settings of ``generate(..., compile=True)``: weights frozen into the graph (so its
#: GEMMs can be prepacked and autotuned), C++ GEMM templates allowed, no autotuning tables printed
_COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "autotune_num_choices_displayed": 0,
                    "max_autotune_report_choices_stats": False}

#: backbone -> (weights signature, compiled step): compiling takes tens of seconds, so the step is
#: kept for the next call; weakly keyed, so it goes when the backbone does
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, _DecodeStep]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _freezing(on: bool):
    """Inductor's ``freezing`` flag on for the call. ``torch.compile(options=...)`` reaches only
    inductor, but dynamo reads this global flag while tracing to turn parameters into graph
    constants; set per call, not per token (setting it costs ~50 us). Also silences a
    deprecation warning inductor's autotuner raises about its own use of ``TypedStorage``."""
    if not on:
        yield
        return
    import torch._inductor.config as inductor_config

    before = inductor_config.freezing
    inductor_config.freezing = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            yield
    finally:
        inductor_config.freezing = before


def _compiled_step(backbone: "TransformerBackbone", head: "LMHead") -> _DecodeStep:
    """The backbone's compiled decode step, rebuilt (recompiled) when a weight changed: frozen
    weights are constants of the graph, so an updated model must not reuse an old one."""
    tensors = [*backbone.parameters(), *backbone.buffers(), *head.parameters(), *head.buffers()]
    sig = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors) + (id(head),)
    hit = _COMPILED.get(backbone)
    if hit is not None and hit[0] == sig:
        return hit[1]
    step = _DecodeStep(backbone, head, rows=1, compiled=True)
    _COMPILED[backbone] = (sig, step)
    return step


def fast_decode_step(backbone: "TransformerBackbone", head: "LMHead", rows: int, compiled: bool = False,
                     pack: bool = True) -> _DecodeStep | None:
    """The decode step of a transformer backbone with an LM head, or None when it keeps the module
    path (:meth:`_DecodeStep.unsupported`).

    Args:
        backbone: a transformer backbone (a causal :class:`~transferlab.models.blocks.Stack`).
        head: its ``lm`` head (:class:`~transferlab.models.heads.LMHead`).
        rows: batch rows the step will see (a layout hint for packing; 1 when compiled).
        compiled: the ``torch.compile``d step, kept with the backbone between calls.
        pack: prepack the linears for oneDNN (where available).

    Returns:
        A callable step, or None.
    """
    if _DecodeStep.unsupported(backbone) is not None:
        return None
    return _compiled_step(backbone, head) if compiled else _DecodeStep(backbone, head, rows, pack=pack)
