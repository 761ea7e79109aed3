"""The skipgram objective: the sampler's statistics, the loss against a hand-written SGNS formula,
errors, and per-example draws (batch splits and resume see the same pairs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferlab.config import ModelConfig
from transferlab.errors import ConfigError
from transferlab.models.model import TransferModel
from transferlab.objectives import TokenizerIds, build_objective
from transferlab.objectives.example_rng import ExampleRNG

V = 40
SP = TokenizerIds(vocab_size=V, pad_token_id=0, eos_token_id=1)


def _shards(tokens: np.ndarray, docs: list[int] | None = None) -> SimpleNamespace:
    docs = docs if docs is not None else [0, len(tokens)]
    return SimpleNamespace(tokens=tokens.astype(np.int64), doc_offsets=np.asarray(docs, dtype=np.int64))


def _zipf_tokens(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V - 1)
    return rng.choice(np.arange(2, V), size=n, p=p / p.sum())


def _model(d: int = 8, seed: int = 0) -> TransferModel:
    torch.manual_seed(seed)
    return TransferModel(ModelConfig(family="word2vec", vocab_size=V, d_model=d, n_layers=1, heads={}, dropout=0.0))


def test_negatives_follow_unigram_to_the_three_quarters():
    ob = build_objective("skipgram", SP)
    counts = np.bincount(_zipf_tokens(50_000), minlength=V)
    ob.set_counts(counts)
    want = counts.astype(float) ** 0.75
    want[[0, 1]] = 0.0  # specials are never noise
    want /= want.sum()
    assert np.allclose(ob.noise, want)
    n = 200_000
    draws = ob.draw_negatives(np.random.default_rng(1).random(n))
    freq = np.bincount(draws, minlength=V) / n
    # each token's frequency within 5 standard errors of its binomial spread
    se = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(freq - want) <= 5 * se + 1e-12)
    assert freq[0] == freq[1] == 0


def test_subsampling_rate_matches_the_formula():
    t = 1e-2
    ob = build_objective("skipgram", SP, sample=t, window=1)
    tokens = _zipf_tokens(20_000)
    ob.set_counts(np.bincount(tokens, minlength=V))
    f = np.bincount(tokens, minlength=V) / len(tokens)
    assert np.allclose(ob.keep_prob[2:], np.minimum(1.0, np.sqrt(t / f[2:])))
    # measured: the share of each frequent word the collator keeps
    ids = tokens[:16_000].reshape(200, 80)
    cid, _, _, kept = ob._contexts(ids, np.ones_like(ids), np.random.default_rng(123))
    for w in (2, 3, 4, 5):
        n = int((ids == w).sum())
        share = int((cid[kept] == w).sum()) / n
        p = ob.keep_prob[w]
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), w
    assert (cid[kept] == 30).sum() == (ids == 30).sum()  # rare words are always kept (p = 1)


def test_window_radius_is_uniform_and_bounds_the_contexts():
    W = 4
    ob = build_objective("skipgram", SP, window=W, sample=0)
    tokens = np.arange(2, 2 + 36).repeat(1)  # distinct tokens: positions are readable from ids
    ob.set_counts(np.ones(V))
    ids = np.tile(tokens, (400, 1))
    rng = np.random.default_rng(3)
    cid, ctx, ok, _ = ob._contexts(ids, np.ones_like(ids), rng)
    rng = np.random.default_rng(3)
    rng.random(ids.shape)
    radius = rng.integers(1, W + 1, size=ids.shape)
    counts = np.bincount(radius.ravel(), minlength=W + 1)[1:]
    assert np.all(np.abs(counts / radius.size - 1 / W) < 5 * math.sqrt((1 / W) * (1 - 1 / W) / radius.size))
    # away from the edges a center of radius b has exactly 2b contexts, all within b positions
    inner = slice(W, 36 - W)
    assert (ok[:, inner].sum(-1) == 2 * radius[:, inner]).all()
    dist = np.abs(ctx - cid[..., None])
    assert (dist[ok] <= np.repeat(radius[..., None], 2 * W, -1)[ok]).all()


def test_contexts_do_not_cross_documents_or_specials():
    ob = build_objective("skipgram", SP, window=5, sample=0)
    ob.set_counts(np.ones(V))
    batch = ob.collate([np.array([5, 6, 7, 1, 8, 9])], np.random.default_rng(0))
    pairs = set(zip(batch["centers"].tolist(), batch["positives"].tolist()))
    assert all((a in (5, 6, 7)) == (b in (5, 6, 7)) for a, b in pairs)  # never across the eos
    assert not any(1 in p or 0 in p for p in pairs)
    assert (5, 6) in pairs and (8, 9) in pairs


def test_loss_equals_the_sgns_formula_on_a_tiny_case():
    ob = build_objective("skipgram", SP, window=2, negatives=3, sample=0)
    ob.set_counts(np.arange(V) + 1.0)
    model = _model()
    with torch.no_grad():
        model.backbone.context.weight.normal_()  # word2vec starts u at zero: make the case non-trivial
    batch = ob.collate([np.array([4, 9, 13, 21, 4, 30])], np.random.default_rng(0))
    loss_sum, metrics = ob.wrap_model(model)(**batch)
    v, u = model.backbone.embed_tokens.weight, model.backbone.context.weight
    want = 0.0
    for c, o, negs in zip(batch["centers"].tolist(), batch["positives"].tolist(), batch["negatives"].tolist()):
        want -= math.log(torch.sigmoid(u[o] @ v[c]).item())
        for k in negs:
            if k != o:  # a noise word equal to the positive is skipped (word2vec.c)
                want -= math.log(torch.sigmoid(-(u[k] @ v[c])).item())
    assert loss_sum.item() == pytest.approx(want, rel=1e-5)
    assert int(batch["n_targets"]) == len(batch["centers"]) > 0
    assert metrics["w2v_loss"].item() == pytest.approx(want / int(batch["n_targets"]), rel=1e-5)


def test_cbow_scores_the_center_against_the_mean_of_its_contexts():
    ob = build_objective("skipgram", SP, window=2, negatives=2, sample=0, mode="cbow")
    ob.set_counts(np.ones(V))
    model = _model()
    with torch.no_grad():
        model.backbone.context.weight.normal_()
    batch = ob.collate([np.array([4, 9, 13, 21])], np.random.default_rng(0))
    loss_sum = ob.loss(model, batch).loss_sum
    v, u = model.backbone.embed_tokens.weight, model.backbone.context.weight
    want = 0.0
    for c, ctx, m, negs in zip(batch["centers"].tolist(), batch["contexts"].tolist(),
                               batch["context_mask"].tolist(), batch["negatives"].tolist()):
        h = torch.stack([v[j] for j, keep in zip(ctx, m) if keep]).mean(0)
        want -= F.logsigmoid(u[c] @ h).item() + sum(F.logsigmoid(-(u[k] @ h)).item() for k in negs if k != c)
    assert loss_sum.item() == pytest.approx(want, rel=1e-5)
    assert int(batch["n_targets"]) == 4


def test_draws_are_per_example_whatever_the_batch_split():
    ob = build_objective("skipgram", SP, window=3, sample=1e-2)
    tokens = _zipf_tokens(4000)
    ds = ob.dataset(_shards(tokens), 50)
    examples = [ds[i] for i in range(8)]
    whole = ob.collate(examples, ExampleRNG(7, range(8)))
    halves = [ob.collate(examples[:4], ExampleRNG(7, range(4))), ob.collate(examples[4:], ExampleRNG(7, range(4, 8)))]
    for k in ("centers", "positives", "negatives"):
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves]))


def test_bad_settings_and_models_are_one_line_errors():
    with pytest.raises(ConfigError, match="objective.window must be an integer >= 1"):
        build_objective("skipgram", SP, window=0)
    with pytest.raises(ConfigError, match="objective.negatives must be an integer >= 1"):
        build_objective("skipgram", SP, negatives="0")
    with pytest.raises(ConfigError, match="objective.mode must be skipgram or cbow"):
        build_objective("skipgram", SP, mode="glove")
    ob = build_objective("skipgram", SP)
    with pytest.raises(ConfigError, match="needs model.family=word2vec .*got model.family=encoder"):
        ob.check_model(ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=32).validate())
    with pytest.raises(ConfigError, match="call dataset"):
        ob.collate([np.arange(2, 10)], np.random.default_rng(0))


def test_step_flops_equal_the_measured_count():
    from torch.utils.flop_counter import FlopCounterMode

    ob = build_objective("skipgram", SP, window=2, negatives=4, sample=0)
    ob.set_counts(np.ones(V))
    model = _model(d=16)
    batch = ob.collate([np.arange(2, 30)], np.random.default_rng(0))
    module = ob.wrap_model(model)
    with FlopCounterMode(display=False) as fc:
        loss_sum, _ = module(**batch)
        loss_sum.backward()
    assert fc.get_total_flops() == ob.step_flops(model.config, 28, 28, float(batch["n_targets"]))
