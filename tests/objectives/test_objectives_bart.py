"""The objectives of BART's comparison that BERT/GPT/BART/T5 do not cover: permuted LM (plm,
XLNet two-stream), multitask masked LM (mtlm, UniLM masks) and masked seq2seq (mass), plus the
per-example self-attention pattern (``attn_mask``) they run on.

Statistics on large synthetic batches (rates within 1 percentage point), masks of the right shape
and content for every mode, functional no-leak checks (perturb what a prediction must not see;
the prediction must not move), losses against a dense reference, FLOPs for the cost report.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny import CLS, MASK, PAD, SEP, UNK, bert_ids, decoder_cfg, encoder_cfg, seq2seq_cfg, windows
from tiny import OBJ_V as V
from transferlab.cost import estimate_flops
from transferlab.errors import ConfigError
from transferlab.models import build_model
from transferlab.objectives import build_objective
from transferlab.objectives.mlm import encoder_rows
from transferlab.objectives.mtlm import MODES, mode_mask
from transferlab.objectives.plm import permutation_mask, query_slots


def _sprinkle(ex: list[np.ndarray]) -> list[np.ndarray]:
    """Special tokens inside the content: they must never be predicted."""
    for e in ex[::3]:
        e[::17] = UNK
        e[5] = SEP
    return ex


def _hidden(model, batch, **kw) -> torch.Tensor:
    return model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).last_hidden_state


# =============================================================================== attn_mask in the stack
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_all_ones_pattern_changes_nothing_and_a_pattern_restricts(impl):
    torch.manual_seed(0)
    enc = build_model(encoder_cfg(attn_impl=impl)).eval()
    ids = torch.randint(5, V, (3, 12))
    ones = torch.ones(3, 12, 12, dtype=torch.bool)
    base = enc.backbone(ids).last_hidden_state
    assert torch.equal(enc.backbone(ids, attn_mask=ones).last_hidden_state, base)
    dec = build_model(decoder_cfg(attn_impl=impl)).eval()
    assert torch.equal(dec.backbone(ids, attn_mask=ones).last_hidden_state, dec.backbone(ids).last_hidden_state)
    # a left-to-right pattern on the encoder: position i depends on tokens <= i only
    tril = torch.ones(12, 12, dtype=torch.bool).tril()[None].expand(3, 12, 12)
    h = enc.backbone(ids, attn_mask=tril).last_hidden_state
    ids2 = ids.clone()
    ids2[:, 7] = (ids2[:, 7] + 1 - 5) % (V - 5) + 5
    h2 = enc.backbone(ids2, attn_mask=tril).last_hidden_state
    assert torch.equal(h[:, :7], h2[:, :7]) and not torch.allclose(h[:, 7:], h2[:, 7:])
    # ... which on a causal decoder is what it does anyway
    assert torch.allclose(dec.backbone(ids, attn_mask=tril).last_hidden_state, dec.backbone(ids).last_hidden_state,
                          atol=1e-6)
    with pytest.raises(ValueError, match="attn_mask must be"):
        enc.backbone(ids, attn_mask=tril[:, :5])


def test_no_pattern_keeps_the_fast_paths(monkeypatch):
    """Without a pattern (or with an all-ones one) SDPA gets no mask at all, and a causal stack
    still uses SDPA's causal kernel; a real pattern arrives as one (B, 1, T, S) bias."""
    from transferlab.models import blocks

    calls = []
    sdpa = blocks.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(blocks.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    ids = torch.randint(5, V, (2, 9))
    dec = build_model(decoder_cfg(attn_impl="sdpa")).eval()
    dec.backbone(ids)
    dec.backbone(ids, attn_mask=torch.ones(2, 9, 9, dtype=torch.bool))
    assert calls == [(None, True)] * 4
    calls.clear()
    enc = build_model(encoder_cfg(attn_impl="sdpa")).eval()
    enc.backbone(ids, attn_mask=torch.ones(1, 9, 9, dtype=torch.bool).tril())
    assert calls == [((1, 1, 9, 9), False)] * 2


# =============================================================================== plm
def _plm_batch(n=2048, T=126, seed=0, **settings):
    ob = build_objective("plm", bert_ids(), **settings)
    ex = _sprinkle(windows(n, T, seed))
    return ob, ex, ob.collate(ex, np.random.default_rng(seed + 1))


def _ranks(batch) -> tuple[np.ndarray, int]:
    """Rank of every content token (0 = context, k = k-th target) from target_index."""
    tgt = batch["target_index"].numpy()
    B, W = tgt.shape
    T = batch["input_ids"].shape[1] - W
    rank = np.zeros((B, T), np.int64)
    r, k = np.nonzero(tgt >= 0)
    rank[r, tgt[r, k]] = k + 1
    return rank, T


def test_plm_predicts_one_sixth_and_never_a_special_token():
    ob, ex, b = _plm_batch()
    ids, lab, tgt = b["input_ids"].numpy(), b["labels"].numpy(), b["target_index"].numpy()
    B, W = tgt.shape
    T = ids.shape[1] - W
    assert T == 128 and W == query_slots(128, 1 / 6) == 22
    content = ids[:, :T]
    orig = np.stack([np.concatenate([[CLS], e, [SEP]]) for e in ex])
    assert np.array_equal(content, orig)  # the content stream is the input as it is: nothing masked
    maskable = ~np.isin(orig, [PAD, UNK, CLS, SEP, MASK])
    valid = tgt >= 0
    picked = np.zeros_like(maskable)
    r, k = np.nonzero(valid)
    picked[r, tgt[r, k]] = True
    assert picked.sum() == valid.sum() == int(b["n_targets"])  # each target once
    assert not (picked & ~maskable).any()
    assert abs(picked.sum() / maskable.sum() - 1 / 6) < 0.01
    # query slots: [MASK] in factorisation order, padding after a row's targets; labels = original
    assert (ids[:, T:][valid] == MASK).all() and (ids[:, T:][~valid] == PAD).all()
    assert (valid[:, :-1] >= valid[:, 1:]).all()  # valid slots form a prefix
    assert np.array_equal(lab[:, T:][valid], orig[r, tgt[r, k]]) and (lab[:, :T] == -100).all()
    assert (lab[:, T:][~valid] == -100).all()
    am = b["attention_mask"].numpy()
    assert (am[:, :T] == 1).all() and np.array_equal(am[:, T:], valid.astype(am.dtype))


def test_plm_factorisation_order_is_uniform():
    """Every order of the targets is equally likely: a target's rank is independent of where it is."""
    _, _, b = _plm_batch(n=2048, T=62)
    rank, _ = _ranks(b)
    k = (rank > 0).sum(1, keepdims=True)
    r, c = np.nonzero(rank > 0)
    rel = (rank[r, c] - 0.5) / k[r, 0]  # uniform on (0, 1) under a uniform order
    assert abs(rel.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(c, rel)[0, 1]) < 0.02  # no link between position and rank
    left = c < 31
    assert abs(rel[left].mean() - rel[~left].mean()) < 0.02


def test_plm_mask_is_consistent_with_the_sampled_order():
    _, _, b = _plm_batch(n=64, T=40)
    rank, T = _ranks(b)
    m = b["attn_mask"].numpy()
    tgt = b["target_index"].numpy()
    B, W = tgt.shape
    assert m.shape == (B, T + W, T + W) and m.dtype == bool
    assert np.array_equal(m, permutation_mask(rank, W))
    assert not m[:, :, T:].any()  # nobody attends to a query slot
    for bi in range(B):
        for i in range(T):  # content stream: ranks <= own rank
            assert np.array_equal(m[bi, i, :T], rank[bi] <= rank[bi, i])
        for s in range(W):
            if tgt[bi, s] < 0:
                continue
            own = tgt[bi, s]
            sees = m[bi, T + s, :T]
            assert not sees[own]  # never itself
            assert not sees[rank[bi] >= s + 1].any()  # never a target at or after it in the order
            assert sees[rank[bi] < s + 1].all()  # context and every earlier target
            assert (rank[bi][sees] < rank[bi, own]).all()


@pytest.mark.parametrize("impl, bf16", [("sdpa", False), ("math", False), ("math", True)])
def test_plm_prediction_never_sees_its_token_or_later_ones(impl, bf16):
    """Through every layer: changing a target's token, or any later target's, leaves its
    prediction unchanged; changing a context token moves it. Exact also under bf16 autocast (a
    masked key's weight underflows to exactly 0)."""
    ob = build_objective("plm", bert_ids())
    torch.manual_seed(0)
    model = build_model(encoder_cfg(attn_impl=impl, n_layers=3)).eval()
    b = ob.collate(windows(4, 30, seed=3), np.random.default_rng(0))
    rank, T = _ranks(b)
    tgt = b["target_index"].numpy()

    def logits(batch):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 attn_mask=batch["attn_mask"],
                                 position_ids=torch.cat([torch.arange(T).expand(4, T),
                                                         batch["target_index"].clamp(min=0)], 1))
            return model.heads["lm"](out.last_hidden_state[:, T:])

    base = logits(b)
    for s in (0, 2):
        pert = {k: v.clone() for k, v in b.items()}
        later = rank >= s + 1  # slot s predicts the target of rank s + 1
        ids = pert["input_ids"][:, :T]
        ids[torch.from_numpy(later)] = (ids[torch.from_numpy(later)] + 7 - 5) % (V - 5) + 5
        out = logits(pert)
        assert torch.equal(out[:, : s + 1], base[:, : s + 1])
        assert not torch.allclose(out[:, s + 1:][torch.from_numpy(tgt[:, s + 1:] >= 0)],
                                  base[:, s + 1:][torch.from_numpy(tgt[:, s + 1:] >= 0)])
    ctx = {k: v.clone() for k, v in b.items()}
    c = int(np.flatnonzero(rank[0] == 0)[1])
    ctx["input_ids"][0, c] = (ctx["input_ids"][0, c] + 3 - 5) % (V - 5) + 5
    assert not torch.allclose(logits(ctx)[0, 0], base[0, 0])


def test_plm_query_slots_are_independent_and_invisible():
    """Nothing sees a query slot, and slots do not see each other: the content stream's states
    are those of the content alone (with the content part of the pattern), and a slot's state is
    the same whether the other slots are there or not."""
    ob = build_objective("plm", bert_ids())
    torch.manual_seed(0)
    model = build_model(encoder_cfg(n_layers=2)).eval()
    b = ob.collate(windows(3, 28, seed=5), np.random.default_rng(1))
    rank, T = _ranks(b)
    pos = torch.cat([torch.arange(T).expand(3, T), b["target_index"].clamp(min=0)], 1)
    with torch.no_grad():
        full = model.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              attn_mask=b["attn_mask"], position_ids=pos).last_hidden_state
        alone = model.backbone(input_ids=b["input_ids"][:, :T], attention_mask=b["attention_mask"][:, :T],
                               attn_mask=b["attn_mask"][:, :T, :T], position_ids=pos[:, :T]).last_hidden_state
        assert torch.allclose(full[:, :T], alone, atol=1e-5)
        for s in (0, 3):
            keep = list(range(T)) + [T + s]
            one = model.backbone(input_ids=b["input_ids"][:, keep], attention_mask=b["attention_mask"][:, keep],
                                 attn_mask=b["attn_mask"][:, keep][:, :, keep],
                                 position_ids=pos[:, keep]).last_hidden_state
            assert torch.allclose(one[:, T], full[:, T + s], atol=1e-5)


def test_plm_query_slots_carry_their_targets_positions_and_the_loss_is_dense_ce():
    ob = build_objective("plm", bert_ids())
    torch.manual_seed(0)
    model = build_model(encoder_cfg())
    b = ob.collate(windows(6, 40, seed=1), np.random.default_rng(2))
    seen = {}
    forward = model.backbone.forward

    def spy(**kw):
        seen.update(kw)
        return forward(**kw)

    model.backbone.forward = spy
    out = ob.loss(model, b)
    T = b["input_ids"].shape[1] - b["target_index"].shape[1]
    pos = seen["position_ids"]
    assert torch.equal(pos[:, :T], torch.arange(T).expand_as(pos[:, :T]))
    valid = b["target_index"] >= 0
    assert torch.equal(pos[:, T:][valid], b["target_index"][valid])
    # reference: every position through the LM head, cross-entropy on the query slots
    h = forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"], attn_mask=b["attn_mask"],
                position_ids=pos).last_hidden_state
    ref = F.cross_entropy(model.heads["lm"](h).flatten(0, 1), b["labels"].flatten(), reduction="sum")
    assert torch.allclose(out.loss_sum, ref, rtol=1e-5)
    assert out.metrics["plm_loss"] == pytest.approx(ref.item() / int(b["n_targets"]), rel=1e-5)
    # RoBERTa's pad-aware numbering: the query slots take their targets' (shifted) numbers
    rob = build_model(encoder_cfg(pad_aware_positions=True, position_offset=0, pad_token_id=PAD, max_positions=300))
    fwd2 = rob.backbone.forward
    rob.backbone.forward = lambda **kw: (seen.update(kw), fwd2(**kw))[1]
    ob.loss(rob, b)
    content = rob.backbone.encoder.positions(b["input_ids"][:, :T], None, 0)
    assert torch.equal(seen["position_ids"][:, T:][valid], torch.gather(content, 1, b["target_index"].clamp(min=0))[valid])


def test_plm_short_rows_keep_context_and_pad():
    ob = build_objective("plm", bert_ids())
    b = ob.collate([np.arange(10, 40), np.arange(10, 14), np.array([50])], np.random.default_rng(0))
    am, tgt = b["attention_mask"].numpy(), b["target_index"].numpy()
    T = 32
    assert am[1, :T].sum() == 6 and am[2, :T].sum() == 3
    assert (tgt[1] >= 0).sum() <= 2 and (tgt[2] >= 0).sum() <= 1
    assert (tgt[tgt >= 0] < T).all() and (am[np.arange(3)[:, None], np.maximum(tgt, 0)][tgt >= 0] == 1).all()
    # no [CLS]/[SEP] at all: one token always stays context, so no query row is empty
    from transferlab.objectives.base import TokenizerIds

    bare = build_objective("plm", TokenizerIds(V, pad_token_id=PAD, mask_token_id=MASK), predict_frac=0.9)
    bb = bare.collate([np.arange(10, 13)] * 200, np.random.default_rng(0))
    assert (bb["target_index"].numpy() >= 0).sum(1).max() == 2
    assert (bb["attn_mask"].numpy()[:, 3:, :3].any(-1) | (bb["target_index"].numpy() < 0)).all()


def test_plm_checks_family_positions_and_settings():
    ob = build_objective("plm", bert_ids())
    ob.check_model(encoder_cfg())
    ob.check_model(encoder_cfg(position="rotary"))
    with pytest.raises(ConfigError, match=r"objective 'plm' needs an encoder \(model.family=encoder\), got model.family=decoder"):
        ob.check_model(decoder_cfg())
    with pytest.raises(ConfigError, match="needs absolute or rotary positions.*model.position=relative"):
        ob.check_model(encoder_cfg(position="relative"))
    with pytest.raises(ConfigError, match="predict_frac must be in"):
        build_objective("plm", bert_ids(), predict_frac=0)
    assert build_objective("permuted-lm", bert_ids()).name == "plm"
    a, b = (ob.collate(windows(8, 30), np.random.default_rng(5)) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = ob.collate(windows(8, 30), np.random.default_rng(6))
    assert not torch.equal(a["target_index"], c["target_index"])


def test_plm_step_flops_bill_the_query_slots():
    ob = build_objective("plm", bert_ids())
    cfg = encoder_cfg()
    L = 128 + ob.slots(128)
    assert L == 150
    f = ob.step_flops(cfg, 128, 4 * L, 80)
    assert f == pytest.approx(4 * estimate_flops(cfg, L, "train", None, 20.0))
    assert estimate_flops(cfg, 128, "train", None, 20.0) * 4 < f < 4 * estimate_flops(cfg, L, "train")


# =============================================================================== mtlm
def test_mtlm_modes_are_drawn_per_batch_in_barts_proportions():
    ob = build_objective("mtlm", bert_ids())
    rng = np.random.default_rng(0)
    modes = np.array([ob.draw_mode(rng) for _ in range(60000)])
    freq = np.bincount(modes, minlength=4) / len(modes)
    assert MODES == ("l2r", "r2l", "bidirectional", "seq2seq")
    assert np.abs(freq - [1 / 6, 1 / 6, 1 / 3, 1 / 3]).max() < 0.01, freq
    # the collator draws its batch's mode first, with the same draw: one mode per batch
    ex = windows(2, 14)
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(40):
        mode = ob.draw_mode(b)
        batch = ob.collate(ex, a)
        assert int(batch["mtlm_mode"]) == mode
        ob.masker(*encoder_rows(ex, CLS, SEP, PAD), b)  # keep the twin generator in step
        assert np.array_equal(batch["attn_mask"].numpy(), mode_mask(MODES[mode], np.full(2, 16), 16))
    one = build_objective("mtlm", bert_ids(), l2r_weight=0, r2l_weight=0, bidirectional_weight=0, seq2seq_weight=2)
    assert {int(one.collate(ex, rng)["mtlm_mode"]) for _ in range(50)} == {3}


def test_mtlm_masks_of_every_mode():
    T = 10
    lens = np.array([10, 7, 4])
    l2r, r2l, bi, s2s = (mode_mask(m, lens, T) for m in MODES)
    for m in (l2r, r2l, bi, s2s):
        assert m.shape == (3, T, T) and m.dtype == bool
    assert np.array_equal(l2r[0], np.tril(np.ones((T, T), bool)))
    assert np.array_equal(r2l, l2r.transpose(0, 2, 1))  # right-to-left is the transpose
    assert bi.all()
    for b, n in enumerate(lens):
        s = int(math.floor(n / 2 + 0.5))  # the first 50% of the row's tokens
        src = s2s[b, :s, :s]
        assert src.all()  # the source is bidirectional
        assert not s2s[b, :s, s:].any()  # ... and never sees the target
        assert s2s[b, s:, :s].all()  # the target sees the whole source
        assert np.array_equal(s2s[b, s:, s:], np.tril(np.ones((T - s, T - s), bool)))  # and its left
    with pytest.raises(ConfigError, match="unknown mode"):
        mode_mask("both", lens, T)


def test_mtlm_masking_rates_and_batch():
    ob = build_objective("mtlm", bert_ids())
    ex = _sprinkle(windows(1024, 126))
    b = ob.collate(ex, np.random.default_rng(1))
    orig = np.stack([np.concatenate([[CLS], e, [SEP]]) for e in ex])
    lab = b["labels"].numpy()
    picked = lab != -100
    maskable = ~np.isin(orig, [PAD, UNK, CLS, SEP, MASK])
    assert not (picked & ~maskable).any() and abs(picked.sum() / maskable.sum() - 0.15) < 0.01
    assert abs((b["input_ids"].numpy()[picked] == MASK).mean() - 0.8) < 0.01
    mode = MODES[int(b["mtlm_mode"])]
    assert np.array_equal(b["attn_mask"].numpy(), mode_mask(mode, np.full(1024, 128), 128))


def test_mtlm_loss_follows_the_mask_and_equals_dense_ce():
    torch.manual_seed(0)
    model = build_model(encoder_cfg()).eval()
    ob = build_objective("mtlm", bert_ids(), l2r_weight=1, r2l_weight=0, bidirectional_weight=0, seq2seq_weight=0)
    b = ob.collate(windows(4, 20, seed=2), np.random.default_rng(0))
    assert MODES[int(b["mtlm_mode"])] == "l2r"
    out = ob.loss(model, b)
    h = _hidden(model, b, attn_mask=b["attn_mask"])
    ref = F.cross_entropy(model.heads["lm"](h).flatten(0, 1), b["labels"].flatten(), reduction="sum")
    assert torch.allclose(out.loss_sum, ref, rtol=1e-5)
    pert = dict(b, input_ids=b["input_ids"].clone())
    pert["input_ids"][:, 15:] = 9
    assert torch.equal(_hidden(model, pert, attn_mask=b["attn_mask"])[:, :15], h[:, :15])  # no look-ahead
    bi = build_objective("mtlm", bert_ids(), l2r_weight=0, r2l_weight=0, seq2seq_weight=0)
    bb = bi.collate(windows(4, 20, seed=2), np.random.default_rng(0))
    assert torch.equal(_hidden(model, bb, attn_mask=bb["attn_mask"]), _hidden(model, bb))  # plain MLM


def test_mtlm_checks_and_flops():
    ob = build_objective("mtlm", bert_ids())
    with pytest.raises(ConfigError, match=r"objective 'mtlm' needs an encoder.*got model.family=encoder-decoder"):
        ob.check_model(seq2seq_cfg())
    with pytest.raises(ConfigError, match="mode weights.*>= 0 with a positive sum"):
        build_objective("mtlm", bert_ids(), l2r_weight=-1)
    with pytest.raises(ConfigError, match="source_frac"):
        build_objective("mtlm", bert_ids(), source_frac=1.0)
    assert build_objective("unilm", bert_ids(), mask_prob="0.2").config.mask_prob == 0.2
    cfg = encoder_cfg()
    assert ob.step_flops(cfg, 64, 8 * 64, 80) == pytest.approx(8 * estimate_flops(cfg, 64, "train", None, 10.0))


# =============================================================================== mass
def _bart_like():
    from transferlab.objectives.base import TokenizerIds

    return TokenizerIds(V, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=3, unk_token_id=4)


def test_mass_masks_one_contiguous_half_and_the_decoder_predicts_it():
    ob = build_objective("mass", _bart_like())
    ex = windows(4096, 126, seed=4)
    b = ob.collate(ex, np.random.default_rng(0))
    orig = np.stack([np.concatenate([[0], e, [2]]) for e in ex])
    inp, lab = b["input_ids"].numpy(), b["labels"].numpy()
    dec, pos, dam = b["decoder_input_ids"].numpy(), b["decoder_position_ids"].numpy(), b["decoder_attention_mask"].numpy()
    B, K = lab.shape
    assert K == ob.fragment(128) == 63 and (dam == 1).all() and int(b["n_targets"]) == B * K
    start = pos[:, 0]
    assert np.array_equal(pos, start[:, None] + np.arange(K))  # one contiguous fragment
    assert start.min() == 1 and start.max() == 1 + 126 - 63  # anywhere in the content
    assert abs(start.mean() - (1 + (126 - 63) / 2)) < 0.5  # uniformly
    assert np.array_equal(lab, np.take_along_axis(orig, pos, 1))  # the decoder predicts the fragment
    assert (dec[:, 0] == 3).all() and np.array_equal(dec[:, 1:], lab[:, :-1])  # shifted right after [M]
    frag = np.zeros_like(orig, dtype=bool)
    np.put_along_axis(frag, pos, True, axis=1)
    assert abs(frag[:, 1:-1].mean() - 0.5) < 0.01  # ~50% of the tokens
    assert np.array_equal(inp[~frag], orig[~frag])  # outside the fragment: untouched
    changed = inp[frag]
    assert abs((changed == 3).mean() - 0.8) < 0.01
    rand = (changed != 3) & (changed != orig[frag])
    assert abs(rand.mean() - 0.1 * (1 - 1 / (V - 5))) < 0.01 and not np.isin(changed[rand], [0, 1, 2, 4]).any()


def test_mass_variable_lengths_pad_the_decoder():
    ob = build_objective("mass", _bart_like())
    b = ob.collate([np.arange(10, 30), np.arange(10, 15), np.array([40, 41])], np.random.default_rng(0))
    lab, dam = b["labels"].numpy(), b["decoder_attention_mask"].numpy()
    assert dam.sum(1).tolist() == [10, 3, 1]  # round(m/2) half up, clipped to [1, m-1]
    assert (lab[dam == 0] == -100).all() and (b["decoder_input_ids"].numpy()[dam == 0] == 1).all()
    assert int(b["n_targets"]) == 14


def test_mass_loss_and_checks():
    sp = _bart_like()
    ob = build_objective("mass", sp)
    torch.manual_seed(0)
    model = build_model(seq2seq_cfg(decoder_start_token_id=3))
    ob.check_model(model.config)
    b = ob.collate(windows(4, 30, seed=1), np.random.default_rng(0))
    out = ob.loss(model, b)
    h = model.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       decoder_input_ids=b["decoder_input_ids"], decoder_position_ids=b["decoder_position_ids"]
                       ).last_hidden_state
    ref = F.cross_entropy(model.heads["lm"](h).flatten(0, 1), b["labels"].flatten(), reduction="sum")
    assert torch.allclose(out.loss_sum, ref, rtol=1e-5)
    # the decoder's positions are the fragment's: moving them changes the prediction
    moved = model.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           decoder_input_ids=b["decoder_input_ids"]).last_hidden_state
    assert not torch.allclose(moved, h)
    with pytest.raises(ConfigError, match=r"objective 'mass' needs an encoder-decoder.*got model.family=encoder"):
        ob.check_model(encoder_cfg())
    with pytest.raises(ConfigError, match="decoder_start_token_id=2 but the mass collator starts decoding with 3"):
        ob.check_model(seq2seq_cfg(decoder_start_token_id=2))
    assert build_objective("mass", sp, decoder_start_token_id=2).start == 2
    with pytest.raises(ConfigError, match="mask_ratio"):
        build_objective("masked-seq2seq", sp, mask_ratio=1)
    cfg = seq2seq_cfg()
    assert ob.step_flops(cfg, 128, 4 * (128 + 63), 252) == pytest.approx(4 * estimate_flops(cfg, 128, "train", 63))


# =============================================================================== end to end
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tiny import prepared_data

    root = tmp_path_factory.mktemp("bart-objectives")
    return {k: prepared_data(root, k, n_docs=40) for k in ("wordpiece", "bpe")}


TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.d_head=16"]


@pytest.mark.parametrize("preset, objective, data", [
    ("bert-tiny", "plm", "wordpiece"),
    ("bert-tiny", "mtlm", "wordpiece"),
    ("bart-mini", "mass", "bpe"),
])
def test_pretrain_cli_runs_20_steps_and_bills_the_real_shapes(tiny_data, tmp_path, capsys, preset, objective, data):
    import json

    from transferlab.cli import main
    from transferlab.models import from_pretrained
    from transferlab.tokenizer import Tokenizer

    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", preset, "--objective", objective, "--data", str(tiny_data[data]),
               "--out", str(out), "--max-steps", "20", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32",
               "--no-energy", *TINY, "train.progress=false", "train.tensorboard=false", "train.eval_every=10"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 20 and s["objective"] == objective
    assert math.isfinite(s["final_train_loss"]) and s["val_loss"] is not None and math.isfinite(s["val_loss"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert f"{objective}_loss" in records[-1]
    assert records[-1]["loss"] < records[0]["loss"] - 0.05  # it learns (from ~log V)
    report = json.loads((out / "report.json").read_text())
    cfg = from_pretrained(out / "model").config
    per_row = {"plm": 32 + 6, "mtlm": 32, "mass": 32 + 15}[objective]  # plm: + query slots; mass: + fragment
    assert report["tokens"] == s["tokens"] == 20 * 4 * per_row
    assert report["flops_source"] == "given by the caller"
    if objective == "mass":  # the model decodes from MASS's [M], as the collator does
        assert cfg.decoder_start_token_id == Tokenizer.from_pretrained(out / "model").mask_token_id
        assert report["flops"] == pytest.approx(20 * 4 * estimate_flops(cfg, 32, "train", 15))
    else:  # sparse: only the targets reach the vocabulary projection
        T = per_row
        assert 20 * 4 * estimate_flops(cfg, T, "train", None, 0.0) < report["flops"] < \
            20 * 4 * estimate_flops(cfg, T, "train")


@pytest.mark.parametrize("preset, objective, need", [
    ("gpt-mini", "plm", "an encoder"), ("bart-mini", "mtlm", "an encoder"), ("bert-tiny", "mass", "an encoder-decoder"),
])
def test_pretrain_cli_wrong_family_is_a_one_line_error(tiny_data, tmp_path, capsys, preset, objective, need):
    from transferlab.cli import main

    rc = main(["pretrain", "--preset", preset, "--objective", objective, "--data", str(tiny_data["wordpiece"]),
               "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY, "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: objective {objective!r} needs {need} (model.family=")


def test_seq2seq_objectives_do_not_bill_decoder_tokens_as_extra_sequences():
    """A step's tokens count encoder and decoder positions; the default estimate divided them by
    seq_len alone and billed each "sequence" an encoder and a full decoder (about 2x for denoise).
    denoise, span-corruption and mass bill what a row really runs."""
    from tiny import bart_ids, t5_ids

    cfg = seq2seq_cfg()
    sc = build_objective("span-corruption", t5_ids())
    b = sc.collate(windows(4, sc.raw_length(64), low=10), np.random.default_rng(0))
    S, Td = b["input_ids"].shape[1], b["decoder_input_ids"].shape[1]
    assert (S, Td) == (64, 14)
    exact = 4 * estimate_flops(cfg, S, "train", Td)
    assert sc.step_flops(cfg, 64, b["input_ids"].numel() + b["decoder_input_ids"].numel(), 0) == pytest.approx(exact)
    dn = build_objective("denoise", bart_ids(), noise="mask")  # same length on both sides
    rows = [np.arange(10, 72)] * 4
    b = dn.collate(rows, np.random.default_rng(0))
    assert b["input_ids"].shape == b["decoder_input_ids"].shape == (4, 64)
    assert dn.step_flops(cfg, 64, 2 * 4 * 64, 0) == pytest.approx(4 * estimate_flops(cfg, 64, "train", 64))


def test_denoise_cost_report_bills_each_row_once(tiny_data, tmp_path, capsys):
    import json

    from transferlab.cli import main
    from transferlab.models import from_pretrained

    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "bart-mini", "--objective", "denoise", "--data", str(tiny_data["bpe"]),
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32",
                 "--no-energy", *TINY, "train.progress=false", "train.tensorboard=false"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    cfg = from_pretrained(out / "model").config
    full = 2 * 4 * estimate_flops(cfg, 32, "train", 32)  # 8 rows of at most 32 tokens each side
    assert 0.6 * full < report["flops"] <= full
