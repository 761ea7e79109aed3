"""The fused, chunked LM-head cross-entropy against the plain ``F.cross_entropy(F.linear(...))``:
loss, accuracy and gradients in fp32 (tight) and bf16 autocast (bf16 rounding), ignore_index,
the loss normalisation applied after the forward, the no-grad path, the objectives' use of it, and
the arithmetic the ``torch.compile`` path takes (checked eagerly: seconds, not a compile)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny import tiny_model
from transferlab.objectives import TokenizerIds, build_objective
from transferlab.objectives import fused_ce
from transferlab.objectives.base import sparse_ce
from transferlab.objectives.fused_ce import default_chunk_rows, linear_cross_entropy

N, C, V = 150, 24, 300


def _inputs(seed: int = 0, ignore_every: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g).requires_grad_()
    w = (torch.randn(V, C, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, b, t


def _run(fn, h, w, b, t, bf16: bool, scale: float = 1.0):
    """loss, correct and the gradients of ``loss * scale`` w.r.t. h, w, b."""
    for x in (h, w, b):
        if x is not None:
            x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, correct = fn(h, w, b, t)
    (loss * scale).backward()
    return loss.detach(), int(correct), h.grad.clone(), w.grad.clone(), None if b is None else b.grad.clone()


def _plain(h, w, b, t):
    z = F.linear(h, w, b)
    sel = t != -100
    return F.cross_entropy(z.float(), t, reduction="sum"), (z.detach().argmax(-1)[sel] == t[sel]).sum()


def _fused(chunk):
    return lambda h, w, b, t: linear_cross_entropy(h, w, b, t, chunk_rows=chunk)


@pytest.mark.parametrize("ignore_every", [0, 3])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_fp32_matches_plain_loss_accuracy_and_gradients(chunk, ignore_every):
    h, w, b, t = _inputs(ignore_every=ignore_every)
    ref = _run(_plain, h, w, b, t, bf16=False, scale=0.01)
    out = _run(_fused(chunk), h, w, b, t, bf16=False, scale=0.01)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-4)
    assert out[1] == ref[1]
    for got, want in zip(out[2:], ref[2:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("buffer_rows", [7, 20, 64])
def test_weight_gradient_buffer_flushes_give_the_same_gradients(monkeypatch, buffer_rows):
    """dL/dW is one matmul per buffer of dL/dz rows; a buffer smaller than the batch (flushed
    mid-loop, at chunk boundaries, with a ragged last chunk) gives the same gradients."""
    monkeypatch.setattr(fused_ce, "GRAD_BUFFER_ELEMENTS", buffer_rows * V)
    h, w, b, t = _inputs(ignore_every=4)
    ref = _run(_plain, h, w, b, t, bf16=False, scale=0.01)
    out = _run(_fused(7), h, w, b, t, bf16=False, scale=0.01)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-4)
    for got, want in zip(out[2:], ref[2:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_matches_plain_within_bf16_rounding():
    h, w, b, t = _inputs(ignore_every=4)
    ref = _run(_plain, h, w, b, t, bf16=True, scale=1 / 150)
    out = _run(_fused(40), h, w, b, t, bf16=True, scale=1 / 150)
    # the logits are the same bf16 values and the loss is fp32 on both sides
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-3)
    assert out[1] == ref[1]
    for got, want in zip(out[2:], ref[2:]):
        assert got.dtype == want.dtype
        # bf16 has 8 bits of mantissa: compare relative to each gradient's scale
        assert float((got - want).abs().max()) <= 2e-2 * float(want.abs().max())


def test_gradient_is_scaled_by_the_normalisation_applied_after_the_forward():
    h, w, b, t = _inputs()
    one = _run(_fused(50), h, w, b, t, bf16=False, scale=1.0)
    tenth = _run(_fused(50), h, w, b, t, bf16=False, scale=0.1)
    for a, c in zip(one[2:], tenth[2:]):
        torch.testing.assert_close(c, a * 0.1)


def test_ignored_rows_and_no_bias():
    h, w, _, t = _inputs(ignore_every=2, bias=False)
    ref = _run(_plain, h, w, None, t, bf16=False)
    out = _run(_fused(16), h, w, None, t, bf16=False)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-4)
    assert out[1] == ref[1]
    assert torch.count_nonzero(out[2][::2]) == 0  # no gradient reaches the ignored rows
    torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[3], ref[3], rtol=1e-5, atol=1e-7)


def test_every_row_ignored_gives_zero_loss_and_zero_gradients():
    h, w, b, t = _inputs()
    t[:] = -100
    loss, correct, gh, gw, gb = _run(_fused(32), h, w, b, t, bf16=False)
    assert float(loss) == 0.0 and correct == 0
    assert not gh.any() and not gw.any() and not gb.any()


def test_accuracy_counts_ties_like_argmax():
    """Duplicated vocabulary rows give exactly tied logits: argmax takes the first index, and so
    must the fused count (a target that ties with an earlier id is not correct)."""
    h, w, b, t = _inputs(bias=False)
    with torch.no_grad():
        w[1::2] = w[0::2]  # id 2k+1 always ties with id 2k
        t = F.linear(h, w).argmax(-1)  # every argmax is an even id
        t[::2] += 1  # half the targets: the tied odd twin of the argmax
    ref = _plain(h.detach(), w.detach(), None, t)[1]
    _, correct = linear_cross_entropy(h.detach(), w.detach(), None, t, chunk_rows=33)
    assert int(correct) == int(ref) == N // 2


def test_no_grad_path_gives_the_same_loss_and_keeps_no_graph():
    h, w, b, t = _inputs(ignore_every=5)
    with torch.no_grad():
        loss, correct = linear_cross_entropy(h, w, b, t, chunk_rows=20)
    assert loss.grad_fn is None
    ref_loss, ref_correct = linear_cross_entropy(h, w, b, t, chunk_rows=20)
    torch.testing.assert_close(loss, ref_loss.detach())
    assert int(correct) == int(ref_correct)


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    h, w, b, t = _inputs()
    w.requires_grad_(False)
    loss, _ = linear_cross_entropy(h, w, b, t, chunk_rows=64)
    loss.backward()
    assert w.grad is None and h.grad is not None and b.grad is not None


def test_chunk_rows_default_is_a_multiple_of_16_and_at_least_64():
    assert default_chunk_rows(8192) == fused_ce.CHUNK_ELEMENTS // 8192
    assert default_chunk_rows(50257) == 80  # 4M / 50257 = 83.5 -> 80
    assert default_chunk_rows(10**6) == 64
    assert default_chunk_rows(96) % 16 == 0 and default_chunk_rows(96) >= 64


def test_rejects_mismatched_shapes():
    h, w, b, t = _inputs()
    with pytest.raises(ValueError, match=r"hidden \(N, C\)"):
        linear_cross_entropy(h[None], w, b, t)


# ----------------------------------------------------------------------------- in the objectives
TINY = dict(vocab_size=V, d_model=C, d_ff=48, n_layers=1, max_positions=32, dropout=0.0, attention_dropout=0.0,
            heads={"lm": {}})  # tiny.tiny_model (2 heads), seed 0


@pytest.mark.parametrize("kw", [
    dict(lm_head_transform=True, lm_head_bias=True),  # BERT: dense + gelu + norm, bias
    dict(tie_embeddings=False),  # an untied head
    dict(scale_logits=True, tie_embeddings=True),  # T5: hidden * d_model**-0.5
])
def test_sparse_ce_fused_equals_unfused_on_real_heads(kw):
    model = tiny_model("encoder", **TINY, **kw)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 10, C, generator=g)
    labels = torch.randint(0, V, (3, 10), generator=g)
    labels[:, ::3] = -100
    grads = []
    for fused in (False, True):
        model.zero_grad()
        loss, correct, n = sparse_ce(model.heads["lm"], hidden, labels, fused=fused)
        (loss / n).backward()
        grads.append((loss.detach(), int(correct), int(n), {k: p.grad.clone() for k, p in model.named_parameters()
                                                             if p.grad is not None}))
    (l0, c0, n0, g0), (l1, c1, n1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-5)
    assert (c1, n1) == (c0, n0) and n0 == 18
    assert g1.keys() == g0.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)


def test_compile_path_arithmetic_matches_eager(monkeypatch):
    """Under torch.compile the loss takes branch-free paths (every row fed and masked, argmax
    instead of the amax + nonzero shortcut, the attention mask always applied). Run those paths
    eagerly by pretending to compile: losses and gradients must not change."""
    specials = TokenizerIds(V, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=3, unk_token_id=4)
    ob = build_objective("denoise", specials)
    model = tiny_model("encoder-decoder", **TINY, position_offset=2, lm_head_bias=True, decoder_start_token_id=2)
    r = np.random.default_rng(0)
    batch = ob.collate([{"tokens": r.integers(5, V, n), "sentence_starts": np.array([0])} for n in (5, 9, 14)],
                       np.random.default_rng(0))
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()  # padding on both sides

    def run():
        model.zero_grad()
        loss, metrics = ob.compute(model, batch)
        loss.backward()
        return loss.detach(), {k: float(v) for k, v in metrics.items()}, [p.grad.clone() for p in model.parameters()
                                                                          if p.grad is not None]

    eager = run()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiled = run()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-5)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-6)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6)  # compiled GELU via sigmoid: ~5e-7 apart in fp32


def test_fused_switch_is_honoured(monkeypatch):
    calls = []
    real = fused_ce.linear_cross_entropy
    monkeypatch.setattr(fused_ce, "linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny_model("decoder", **TINY, prenorm=True, final_norm=True, embedding_norm=False)
    hidden, labels = torch.randn(2, 5, C), torch.randint(0, V, (2, 5))
    sparse_ce(model.heads["lm"], hidden, labels)
    assert calls == [1]
    monkeypatch.setattr(fused_ce, "ENABLED", False)
    sparse_ce(model.heads["lm"], hidden, labels)
    assert calls == [1]


def test_gelu_tanh_compile_form_is_the_same_function(monkeypatch):
    """The sigmoid form used under torch.compile equals torch's tanh-GELU (value and gradient)."""
    from transferlab.models.blocks import gelu_tanh

    x = torch.linspace(-8, 8, 2001, dtype=torch.float64).requires_grad_()
    ref = F.gelu(x, approximate="tanh")
    (gref,) = torch.autograd.grad(ref.sum(), x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    y = gelu_tanh(x)
    (gy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gy, gref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bf16", [False, True])
def test_targets_with_underflowing_probability_get_the_exact_loss(bf16):
    """The eager loss is -log softmax(z)_t; a target whose probability underflows fp32 (log-odds
    far below -87) must still get its true loss, not inf, and the right (zero-ish) gradient."""
    h, w, b, t = _inputs(seed=3)
    with torch.no_grad():
        # rows 0..4: the target's logit ~200-400 below the row's best logit
        w[t[:5]] = -40.0 * h[:5].sign() * torch.arange(1, 6)[:, None] / C ** 0.5
    ref = _run(_plain, h, w, b, t, bf16=bf16, scale=0.01)
    out = _run(_fused(64), h, w, b, t, bf16=bf16, scale=0.01)
    assert torch.isfinite(out[0]) and out[0] > 150.0  # the rare rows dominate, finitely
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6 if not bf16 else 1e-3, atol=1e-3)
    assert out[1] == ref[1]
    for got, want in zip(out[2:], ref[2:]):
        torch.testing.assert_close(got, want, rtol=1e-5 if not bf16 else 2e-2, atol=1e-6 if not bf16 else 1e-3)
