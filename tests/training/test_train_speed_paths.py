"""The fast paths of the pre-training step compute the same function and gradients as the
reference ones: plain-matmul attention (scale on q, masks added in place) against SDPA, with
causal, padding and learned relative-position masks; the fused CPU AdamW against foreach."""

from __future__ import annotations

import pytest
import torch

from transferlab.models import build_model
from transferlab.training.optim import build_optimizer, param_groups

V = 64
SMALL = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0, attention_dropout=0.0,
             max_positions=64)


def _grads(model, kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    h = model.backbone(**kw).last_hidden_state  # (B, T, C)
    # a loss that weighs every position differently, so a wrong mask changes the gradients
    w = torch.linspace(-1, 1, h.numel()).reshape(h.shape)
    (h * w).sum().backward()
    return h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset,extra", [("gpt-mini", {}), ("bart-mini", {"decoder_start_token_id": 2}),
                                          ("t5-mini", {"d_head": 8}), ("gpt-mini", {"position": "rotary"})])
@pytest.mark.parametrize("padded", [False, True])
def test_math_attention_matches_sdpa_with_gradients(preset, extra, padded):
    torch.manual_seed(0)
    sdpa = build_model(preset, **SMALL, **extra, attn_impl="sdpa")
    math_ = build_model(sdpa.config.replace(attn_impl="math"))
    math_.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, 7:] = 0
        mask[2, 4:] = 0
    kw = {"input_ids": ids, "attention_mask": mask}
    if sdpa.config.family == "encoder-decoder":
        kw["decoder_input_ids"] = torch.randint(5, V, (3, 9), generator=g)
    h_ref, g_ref = _grads(sdpa, kw)
    h, g_out = _grads(math_, kw)
    keep = mask.bool()[..., None] if sdpa.config.family != "encoder-decoder" else torch.ones(1, dtype=torch.bool)
    torch.testing.assert_close(h * keep, h_ref * keep, rtol=1e-5, atol=1e-5)
    assert g_out.keys() == g_ref.keys()
    if preset == "t5-mini":  # the learned relative-position bias gets its gradient through the in-place add
        assert any("rel_bias" in n for n in g_out)
    for n in g_ref:
        torch.testing.assert_close(g_out[n], g_ref[n], rtol=1e-4, atol=1e-5, msg=n)


def test_build_optimizer_is_fused_on_cpu_and_matches_foreach():
    torch.manual_seed(0)
    a = build_model("gpt-mini", **SMALL)
    b = build_model(a.config)
    b.load_state_dict(a.state_dict())
    init = {n: p.detach().clone() for n, p in a.named_parameters()}
    opt_a = build_optimizer(a, lr=1e-2, weight_decay=0.1)
    assert opt_a.defaults["fused"] and not opt_a.defaults["foreach"]
    opt_b = torch.optim.AdamW(param_groups(b, 0.1, 1e-2), lr=1e-2, foreach=True)
    ids = torch.randint(0, V, (2, 12))
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            m.backbone(input_ids=ids).last_hidden_state.pow(2).mean().backward()
            o.step()
            o.zero_grad(set_to_none=True)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(p, init[n]), n  # every parameter was updated
        # same update up to float rounding (the fused kernel orders its arithmetic differently;
        # Adam turns ~1e-7 gradient differences into ~1e-6 steps), against ~3e-2 of movement
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5, msg=n)


@pytest.mark.parametrize("preset,extra", [("gpt-mini", {}), ("bart-mini", {"decoder_start_token_id": 2})])
def test_bf16_masks_still_hide_padding_under_autocast(preset, extra):
    """Under autocast the padding/causal masks are cast to bf16 once per forward (fp32 masks take a
    slow mixed-dtype add): padded keys must still get exactly zero weight, so what sits at padded
    positions cannot change the outputs at real positions, and the result stays close to fp32."""
    torch.manual_seed(0)
    model = build_model(preset, **SMALL, **extra, attn_impl="math").eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, V, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[1, 8:] = 0
    other = ids.clone()
    other[mask == 0] = torch.randint(5, V, (int((mask == 0).sum()),), generator=g)  # different padding content
    dec = {"decoder_input_ids": ids[:, :7]} if model.config.family == "encoder-decoder" else {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = model.backbone(input_ids=ids, attention_mask=mask, **dec).last_hidden_state
        b = model.backbone(input_ids=other, attention_mask=mask, **dec).last_hidden_state
    with torch.no_grad():
        ref = model.backbone(input_ids=ids, attention_mask=mask, **dec).last_hidden_state
    keep = mask.bool() if not dec else torch.ones(a.shape[:2], dtype=torch.bool)
    assert torch.equal(a[keep], b[keep])
    assert (a.float() - ref).abs()[keep].max() < 0.1
