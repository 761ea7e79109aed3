"""Fused, chunked vocabulary projection + cross-entropy (the LM-head loss of every objective).

The plain loss ``F.cross_entropy(F.linear(h, W, b).float(), t)`` materialises the (N, V) logits
in bf16, an fp32 copy, fp32 log-probabilities, and in the backward an fp32 gradient of the same
size plus its bf16 copy: for gpt-mini at batch 32 x 128 and V = 8192 that is ~600 MB of memory
traffic per step, and on a 2-core CPU it cost ~45% of the whole training step (BENCHMARKS.md).

:func:`linear_cross_entropy` computes the same loss chunk by chunk (``chunk_rows`` rows at a
time, 16 MB of fp32 logits instead of all of them) and, when gradients are needed, computes them
*in the forward* while the chunk's softmax is at hand (as Liger-Kernel, Unsloth and
cut-cross-entropy do):

    dL/dz = softmax(z) - onehot(t)     (rows with t == ignore_index: 0)
    dL/dh = dL/dz @ W,   dL/dW = dL/dz^T @ h,   dL/db = sum of dL/dz rows

dL/dW is one matmul per buffer of dL/dz rows in the compute dtype (``GRAD_BUFFER_ELEMENTS``, 64
MB: a whole CPU batch at V = 8192), not one per chunk, so the extra memory stays bounded
whatever N is. Only dL/dh (N, C), dL/dW (V, C) and dL/db (V,) outlive the forward; the backward
multiplies them by the incoming gradient (the loss normalisation 1 / n_targets of the whole
accumulated batch, which the trainer applies after the forward). Numerics follow the plain loss under autocast: the logits are
computed in the autocast dtype (bf16) with the weight cast once, the softmax, the loss and
dL/dz in fp32, dL/dz cast to the compute dtype for the two gradient matmuls, dL/dW accumulated
in fp32. Without autocast everything is in the weight's dtype (fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: :func:`~transferlab.objectives.base.sparse_ce` uses the fused loss for LM heads when True
#: (benchmarks switch it off to measure what it gives).
ENABLED = True

#: fp32 logits per chunk (rows x vocabulary): 4M elements = 16 MB; 512 rows for V = 8192 (measured
#: on the whole fused loss: 256 rows 8% slower, 1024 within noise; BENCHMARKS.md).
CHUNK_ELEMENTS = 1 << 22


#: dL/dz rows kept for the weight-gradient matmul: 32M elements (64 MB in bf16; a CPU batch of
#: 32 x 128 tokens at V = 8192 is one buffer).
GRAD_BUFFER_ELEMENTS = 1 << 25


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: ``CHUNK_ELEMENTS / vocab_size``, a multiple of 16, at least 64 (matmuls with
    fewer rows run far below peak)."""
    return max(64, (CHUNK_ELEMENTS // max(vocab_size, 1)) // 16 * 16)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in here: the autocast dtype when autocast is on."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and weight.dtype == torch.float32:
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _any_ignored(valid: torch.Tensor) -> bool:
    """Whether some row has no target. Under torch.compile always True (masking costs nothing
    there, while a data-dependent branch would split the graph)."""
    return torch.compiler.is_compiling() or not bool(valid.all())


def _chunk_stats(z: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None, want_grad: bool,
                 want_bias: bool = False, grad_dtype: torch.dtype | None = None,
                 out: torch.Tensor | None = None):
    """Loss sum, correct count and (optionally) dL/dz and its column sums for one chunk of logits.

    Args:
        z: (n, V) logits in the compute dtype.
        t: (n,) targets, already in range (ignored rows hold any valid id).
        valid: (n,) bool, or None when every row is a target.
        want_grad: also return dL/dz = softmax(z) - onehot(t) (zero on ignored rows), computed in
            fp32 and returned in ``grad_dtype`` (default fp32).
        want_bias: also return dL/dz summed over rows in fp32 (the bias gradient).
        out: (n, V) tensor to write dL/dz into (converted to its dtype in the same pass), e.g. a
            slice of the weight-gradient buffer; it is what is returned as dL/dz.

    Returns:
        (fp32 loss sum, long correct count, dL/dz or None, its row sum or None).
    """
    if torch.compiler.is_compiling():
        return _chunk_stats_compiled(z, t, valid, want_grad, want_bias, grad_dtype, out)
    rows = torch.arange(t.shape[0], device=z.device)
    # Eagerly every op is a pass over the (n, V) chunk, so the chunk is read as few times as
    # possible: one fp32 softmax (it converts z on the fly), from which the loss, dL/dz and the
    # bias gradient all follow; the log-softmax, the second softmax and the fp32 copy of z of the
    # textbook formulation are not needed (measured: BENCHMARKS.md, "Pre-training throughput").
    p = torch.softmax(z, dim=-1, dtype=torch.float32)  # (n, V) fp32
    pt = p[rows, t]  # (n,) the target's probability
    # nll = -log p_t, exact to fp32 rounding (~1e-7); a probability that underflowed to the
    # smallest normal floats (log-odds below about -87) falls back to log_softmax for its rows
    nll = -torch.log(pt)
    tiny = pt < 1e-30
    if bool(tiny.any()):
        low = tiny.nonzero().squeeze(-1)
        nll[low] = -torch.log_softmax(z[low].float(), dim=-1)[torch.arange(low.numel(), device=z.device), t[low]]
    # argmax == target, exactly (first index wins ties, as torch.argmax): the target must be a
    # maximum, and only those rows (a minority) need the full argmax. Eagerly, amax is ~20x
    # faster than argmax on CPU, so this beats z.argmax(-1) == t; the comparison is made on the
    # logits themselves, so it is exact.
    cand = z[rows, t] >= z.amax(dim=-1)
    if valid is not None:
        nll, cand = nll * valid, cand & valid
    idx = cand.nonzero().squeeze(-1)
    correct = (z[idx].argmax(dim=-1) == t[idx]).sum()
    g = gsum = None
    if want_grad:
        p[rows, t] = pt - 1.0  # dL/dz = softmax(z) - onehot(t), in place
        if valid is not None:
            p.masked_fill_(~valid[:, None], 0.0)
        if want_bias:
            gsum = p.sum(0)  # (V,) fp32
        if out is not None:
            g = out.copy_(p)
        else:
            g = p if grad_dtype in (None, torch.float32) else p.to(grad_dtype)
    return nll.sum(), correct, g, gsum


def _chunk_stats_compiled(z, t, valid, want_grad, want_bias, grad_dtype, out=None):
    """:func:`_chunk_stats` written for Inductor (under ``torch.compile``): elementwise ops and
    reductions only (no gather, scatter or nonzero), which it fuses into a few loops over the
    chunk; the eager version's kernels each make a pass of their own."""
    zf = z.float()  # (n, V)
    m = zf.amax(dim=-1, keepdim=True)  # (n, 1)
    e = torch.exp(zf - m)
    s = e.sum(dim=-1, keepdim=True)
    hit = torch.arange(z.shape[-1], device=z.device)[None, :] == t[:, None]  # (n, V) one-hot
    nll = (m + torch.log(s)).squeeze(-1) - torch.where(hit, zf, 0.0).sum(dim=-1)  # lse - z_t
    cand = zf.argmax(dim=-1) == t
    if valid is not None:
        nll, cand = nll * valid, cand & valid
    g = gsum = None
    if want_grad:
        g = e / s - hit.float()
        if valid is not None:
            g = g * valid[:, None]
        if want_bias:
            gsum = g.sum(0)
        g = out.copy_(g) if out is not None else g.to(grad_dtype or torch.float32)
    return nll.sum(), cand.sum(), g, gsum


def _chunked(hidden, weight, bias, targets, ignore_index: int, chunk_rows: int, cdtype: torch.dtype,
             need_h: bool, need_w: bool, need_b: bool):
    """The chunk loop behind :func:`linear_cross_entropy`, with or without gradients.

    Returns:
        (fp32 loss sum, long correct count, dL/dh (N, C) in the compute dtype or None, dL/dW (V, C)
        fp32 or None, dL/db (V,) fp32 or None); the gradients are of the summed loss.
    """
    want_grad = need_h or need_w or need_b
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden.to(cdtype).contiguous()  # (N, C)
        w = weight.to(cdtype)  # (V, C): cast once, not per chunk
        b = bias.to(cdtype) if bias is not None else None
        valid_all = targets != ignore_index  # (N,)
        any_ignored = _any_ignored(valid_all)
        t_all = targets.masked_fill(~valid_all, 0) if any_ignored else targets
        N = h.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.long, device=h.device)
        gh = torch.empty_like(h) if need_h else None  # (N, C) dL/dh in the compute dtype
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
        # dL/dW = G^T h over all rows. The chunks' dL/dz are kept in a buffer of up to
        # GRAD_BUFFER_ELEMENTS and multiplied in one matmul per buffer (for the usual CPU batch,
        # once per step): one long reduction instead of a (V, C) matmul, bf16 rounding and fp32
        # add per chunk.
        V = weight.shape[0]
        buf_rows = min(N, max(chunk_rows, GRAD_BUFFER_ELEMENTS // max(V, 1))) if need_w else 0
        gbuf = torch.empty(buf_rows, V, dtype=cdtype, device=h.device) if need_w else None  # (R, V)
        b0 = 0  # first row of h held in the buffer
        for s in range(0, N, chunk_rows):
            e = min(s + chunk_rows, N)
            x = h[s:e]  # (n, C)
            z = F.linear(x, w, b)  # (n, V) compute dtype
            slot = None
            if need_w:
                if e - b0 > buf_rows:  # full: flush rows b0..s
                    gw += gbuf[: s - b0].t() @ h[b0:s]  # (V, C), accumulated in fp32
                    b0 = s
                slot = gbuf[s - b0: e - b0]  # this chunk's dL/dz is written straight into the buffer
            # g: (n, V) in the compute dtype, the matmuls run in it as autocast's would
            l, c, g, gsum = _chunk_stats(z, t_all[s:e], valid_all[s:e] if any_ignored else None,
                                         want_grad, need_b, cdtype, out=slot)
            loss += l
            correct += c
            if need_b:
                gb += gsum
            if need_h:
                gh[s:e] = g @ w  # (n, C)
        if need_w and N > b0:
            gw += gbuf[: N - b0].t() @ h[b0:N]
    return loss, correct, gh, gw, gb


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one chunked pass; the backward only rescales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index: int, chunk_rows: int, cdtype: torch.dtype):
        loss, correct, gh, gw, gb = _chunked(hidden, weight, bias, targets, ignore_index, chunk_rows, cdtype,
                                             *ctx.needs_input_grad[:3])
        ctx.save_for_backward(gh, gw, gb)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_correct):
        gh, gw, gb = ctx.saved_tensors
        hd, wd, bd = ctx.dtypes
        go = grad_loss.float()
        dh = (gh.float() * go).to(hd) if gh is not None else None
        dw = (gw * go).to(wd) if gw is not None else None
        db = (gb * go).to(bd) if gb is not None else None
        return dh, dw, db, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of ``F.linear(hidden, weight, bias)`` against ``targets``, fused.

    Equals ``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets,
    ignore_index=ignore_index, reduction="sum")`` (and its gradients) without materialising the
    (N, V) logits; see the module docstring.

    Args:
        hidden: (N, C) hidden states (after any head transform).
        weight: (V, C) output projection (the tied embedding or the head's own matrix).
        bias: (V,) output bias or None.
        targets: (N,) target ids; ``ignore_index`` rows add nothing to the loss or gradients.
        ignore_index: the id of rows without a target.
        chunk_rows: rows per chunk; default :func:`default_chunk_rows` of V.

    Returns:
        ``(loss_sum, n_correct)``: the fp32 sum of per-target losses (differentiable) and the
        number of targets whose argmax logit is the target (a long tensor, for accuracy metrics).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, C) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    cdtype = _compute_dtype(hidden, weight)
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias))
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, chunk, cdtype)
    # no gradients (evaluation): the same chunked loss, nothing stored
    with torch.no_grad():
        loss, correct, _, _, _ = _chunked(hidden, weight, bias, targets, ignore_index, chunk, cdtype,
                                          False, False, False)
    return loss, correct
