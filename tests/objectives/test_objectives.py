"""Objectives: the shared contract, MLM (BERT/RoBERTa/whole-word/SpanBERT) and CLM (GPT).

Statistics are checked on large synthetic batches (rates within 1 percentage point of the
configured value); losses are checked against the model's own transformers-style loss.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny import CLS, MASK, PAD, SEP, UNK, bert_ids, decoder_cfg, encoder_cfg, gpt_ids, windows
from tiny import OBJ_V as V
from transferlab.errors import ConfigError, DataError
from transferlab.models import build_model
from transferlab.objectives import TokenizerIds, build_objective, objective_names
from transferlab.objectives import masking

def shards(doc_lens: list[int], seed: int = 0, low: int = 6) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    offs = np.concatenate([[0], np.cumsum(doc_lens)]).astype(np.int64)
    return SimpleNamespace(tokens=rng.integers(low, V, int(offs[-1])).astype(np.uint16), doc_offsets=offs,
                           sent_offsets=offs.copy())


# ------------------------------------------------------------------------------- registry, errors
def test_registry_names_and_unknown():
    assert objective_names() == ["mlm", "nsp", "electra", "clm", "denoise", "span-corruption", "plm", "mtlm", "mass",
                                "bilm", "skipgram"]
    assert "mlm+nsp" in objective_names(aliases=True)
    with pytest.raises(ConfigError, match="unknown objective 'mlmm'.*known objectives: mlm"):
        build_objective("mlmm", bert_ids())


def test_settings_are_validated_and_coerced():
    with pytest.raises(ConfigError, match="unknown setting 'mask_rate'.*mask_prob"):
        build_objective("mlm", bert_ids(), mask_rate=0.2)
    with pytest.raises(ConfigError, match="mask_prob must be in"):
        build_objective("mlm", bert_ids(), mask_prob=1.5)
    with pytest.raises(ConfigError, match="mask_token_frac \\+ random_token_frac"):
        build_objective("mlm", bert_ids(), mask_token_frac=0.9, random_token_frac=0.2)
    ob = build_objective("mlm", bert_ids(), mask_prob="0.3", whole_word="true")  # CLI strings
    assert ob.config.mask_prob == 0.3 and ob.config.whole_word is True


def test_missing_special_tokens_are_config_errors():
    with pytest.raises(ConfigError, match="needs a tokenizer with mask_token"):
        build_objective("mlm", TokenizerIds(V, pad_token_id=0, cls_token_id=2, sep_token_id=3))
    no_cont = TokenizerIds(V, pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    with pytest.raises(ConfigError, match="whole_word masking needs the tokenizer's continuation mask"):
        build_objective("mlm", no_cont, whole_word=True)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        TokenizerIds(10, mask_token_id=12)


def test_ids_from_another_tokenizer_are_data_errors():
    ob = build_objective("mlm", bert_ids())
    with pytest.raises(DataError, match="token id 5000 is outside the tokenizer's vocabulary of 1000"):
        ob.collate([np.array([7, 8, 5000])], np.random.default_rng(0))


def test_special_ids_from_tokenizer_like_object():
    tok = SimpleNamespace(vocab_size=50, pad_token_id=0, unk_token_id=1, cls_token_id=None, sep_token_id=None,
                          mask_token_id=4, bos_token_id=2, eos_token_id=3, sentinel_token_ids=[49, 48],
                          all_special_ids=[0, 1, 2, 3, 4, 48, 49, 7],
                          continuation_mask=lambda: np.arange(50) > 40)
    sp = TokenizerIds.from_tokenizer(tok)
    assert sp.all_special_ids == (0, 1, 2, 3, 4, 7, 48, 49)
    assert sp.is_special[7] and not sp.is_special[8]
    assert 7 not in sp.normal_ids and len(sp.normal_ids) == 50 - 8
    assert sp.continuation[41] and not sp.continuation[40]


# ------------------------------------------------------------------------------- masking primitives
def test_stochastic_round_is_unbiased():
    rng = np.random.default_rng(0)
    x = np.full(200_000, 2.3)
    r = masking.stochastic_round(x, rng)
    assert set(np.unique(r)) == {2, 3}
    assert abs(r.mean() - 2.3) < 0.01


def test_place_spans_is_disjoint_and_separated():
    rng = np.random.default_rng(0)
    n = np.array([50, 20, 7, 3])
    lengths = np.array([[3, 5, 1, 2], [4, 4, 4, 4], [2, 2, 2, -1], [5, -1, -1, -1]])
    for _ in range(50):
        starts, lens = masking.place_spans(n, lengths, rng)
        for b in range(len(n)):
            spans = sorted((s, s + l) for s, l in zip(starts[b], lens[b]) if s >= 0)
            for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
                assert a1 < b0  # at least one free unit between spans
            assert all(0 <= s and e <= n[b] for s, e in spans)
    # a span that cannot fit is dropped (row 3: 5 units needed, 3 available)
    assert lens[3, 0] == -1 and (lens[1] >= 0).sum() == 4  # 4*4 + 3 gaps = 19 <= 20


def test_truncated_geometric_mean_matches_spanbert():
    assert masking.truncated_geometric_mean(0.2, 10) == pytest.approx(3.797, abs=1e-3)


# ------------------------------------------------------------------------------- MLM statistics
def _mlm_batch(n=512, T=126, seed=0, **settings):
    ob = build_objective("mlm", bert_ids(), **settings)
    ex = windows(n, T, seed)
    # sprinkle special tokens into the content: they must never be picked
    for e in ex[::3]:
        e[::17] = UNK
        e[5] = SEP
    batch = ob.collate(ex, np.random.default_rng(seed + 1))
    return ob, ex, batch


def test_mlm_rates_80_10_10_and_no_special_picked():
    ob, ex, b = _mlm_batch()
    ids, lab = b["input_ids"].numpy(), b["labels"].numpy()
    orig = np.stack([np.concatenate([[CLS], e, [SEP]]) for e in ex])
    maskable = ~ob.sp.is_special[orig]
    picked = lab != -100
    assert ids.shape == (512, 128)
    assert (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
    assert not picked[~maskable].any()  # no [CLS]/[SEP]/[UNK] ever picked
    assert abs(picked.sum() / maskable.sum() - 0.15) < 0.01
    assert (lab[picked] == orig[picked]).all()  # labels are the original ids
    assert (ids[~picked] == orig[~picked]).all()  # nothing else changes
    is_mask = ids[picked] == MASK
    changed = (ids[picked] != MASK) & (ids[picked] != orig[picked])
    assert abs(is_mask.mean() - 0.8) < 0.01
    assert abs(changed.mean() - 0.1) < 0.01  # random token (equal to the original w.p. 1/995)
    assert not ob.sp.is_special[ids[picked][changed]].any()  # random tokens are never special
    assert int(b["n_targets"]) == picked.sum()


def test_mlm_whole_word_picks_whole_words():
    ob, ex, b = _mlm_batch(whole_word=True)
    lab = b["labels"].numpy()
    orig = np.stack([np.concatenate([[CLS], e, [SEP]]) for e in ex])
    picked = lab != -100
    maskable = ~ob.sp.is_special[orig]
    cont = ob.sp.continuation[orig] & maskable
    prev_maskable = np.zeros_like(maskable)
    prev_maskable[:, 1:] = maskable[:, :-1]
    inner = cont & prev_maskable  # a continuation piece that belongs to the word before it
    prev_picked = np.zeros_like(picked)
    prev_picked[:, 1:] = picked[:, :-1]
    assert (picked[inner] == prev_picked[inner]).all()  # a word is picked whole or not at all
    assert abs(picked.sum() / maskable.sum() - 0.15) < 0.01
    assert not picked[~maskable].any()


def _runs(mask_row: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask_row.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def test_mlm_spanbert_span_lengths_and_per_span_decisions():
    ob, ex, b = _mlm_batch(n=1024, seed=3, span=True)
    ids, lab = b["input_ids"].numpy(), b["labels"].numpy()
    orig = np.stack([np.concatenate([[CLS], e, [SEP]]) for e in ex])
    picked = lab != -100
    maskable = ~ob.sp.is_special[orig]
    assert abs(picked.sum() / maskable.sum() - 0.15) < 0.01
    lengths, uniform = [], []
    for r in range(len(ids)):
        for s, e in _runs(picked[r]):
            # (a span over a special token shows as two runs: specials are skipped, not picked)
            lengths.append(e - s)
            m = ids[r, s:e] == MASK
            uniform.append(m.all() or not m.any())
    assert max(lengths) <= 10
    assert np.mean(uniform) > 0.99  # the 80/10/10 decision is made per span
    assert abs((ids[picked] == MASK).mean() - 0.8) < 0.02


def test_mlm_span_lengths_exact_without_specials():
    ob = build_objective("mlm", bert_ids(), span=True)
    b = ob.collate(windows(2048, 126, 5), np.random.default_rng(0))
    picked = b["labels"].numpy() != -100
    lengths = [e - s for r in picked for s, e in _runs(r)]
    assert abs(np.mean(lengths) - 3.797) < 0.06
    hist = np.bincount(lengths, minlength=11)[1:] / len(lengths)
    np.testing.assert_allclose(hist, masking.truncated_geometric(0.2, 10), atol=0.01)
    assert abs(picked.mean() * 128 / 126 - 0.15) < 0.01


def test_mlm_dynamic_masking_is_deterministic_under_a_seed():
    ob = build_objective("mlm", bert_ids())
    ex = windows(8, 62)
    a = ob.collate(ex, np.random.default_rng(7))
    b = ob.collate(ex, np.random.default_rng(7))
    for k in a:
        assert torch.equal(a[k], b[k])
    rng = np.random.default_rng(7)
    e1, e2 = ob.collate(ex, rng), ob.collate(ex, rng)  # the same windows in two epochs
    assert not torch.equal(e1["labels"], e2["labels"])


def test_mlm_variable_length_examples_are_padded_and_never_picked():
    ob = build_objective("mlm", bert_ids(), mask_prob=0.5)
    b = ob.collate([np.arange(10, 40), np.arange(10, 20)], np.random.default_rng(0))
    am, lab, ids = b["attention_mask"], b["labels"], b["input_ids"]
    assert ids.shape == (2, 32) and am[1].sum() == 12
    assert ids[1, 11] == SEP and (ids[1, 12:] == PAD).all()
    assert (lab[am == 0] == -100).all()


# ------------------------------------------------------------------------------- MLM loss and model checks
def test_mlm_sparse_loss_equals_dense_reference_and_trains():
    torch.manual_seed(0)
    model = build_model(encoder_cfg())
    ob = build_objective("mlm", bert_ids())
    b = ob.collate(windows(4, 30), np.random.default_rng(0))
    out = ob.loss(model, b)
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    torch.testing.assert_close(out.loss_sum / b["n_targets"], ref)
    assert out.metrics["mlm_loss"] == pytest.approx(ref.item(), rel=1e-5)
    assert 0.0 <= out.metrics["mlm_acc"] <= 1.0
    # the wrapped module gives the same loss and is what the optimiser sees
    wrapped = ob.wrap_model(model)
    torch.testing.assert_close(ob.loss(wrapped, b).loss_sum, out.loss_sum)
    assert ob.unwrap_model(wrapped) is model
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    first = None
    for _ in range(12):  # overfit one batch: the loss must fall
        loss = ob.loss(wrapped, b).loss_sum / b["n_targets"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_loss_refuses_to_bypass_ddp():
    class FakeDDP(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    ob = build_objective("mlm", bert_ids())
    b = ob.collate(windows(2, 10), np.random.default_rng(0))
    with pytest.raises(TypeError, match="wrap_model"):
        ob.loss(FakeDDP(build_model(encoder_cfg())), b)
    # DDP around the wrapper goes through the wrapper's forward
    wrapped = FakeDDP(ob.wrap_model(build_model(encoder_cfg())))
    wrapped.forward = lambda **batch: wrapped.module(**batch)
    assert ob.loss(wrapped, b).loss_sum.ndim == 0


def test_mlm_check_model():
    ob = build_objective("mlm", bert_ids())
    ob.check_model(encoder_cfg())
    ob.check_model(build_model(encoder_cfg()))  # a model works too
    with pytest.raises(ConfigError, match="'mlm' needs an encoder .*got model.family=decoder"):
        ob.check_model(decoder_cfg())
    with pytest.raises(ConfigError, match="needs model head\\(s\\) 'lm'; model.heads has 'rtd'"):
        ob.check_model(encoder_cfg(heads={"rtd": {}}))
    with pytest.raises(ConfigError, match="model.vocab_size=500 is smaller than the tokenizer's vocabulary \\(1000\\)"):
        ob.check_model(encoder_cfg(vocab_size=500))


def test_mlm_dataset_packs_documents_with_sep():
    sh = shards([5, 7, 3, 9])
    ob = build_objective("mlm", bert_ids())
    ds = ob.dataset(sh, seq_len=8)  # 6 content tokens per window
    stream = []
    for a, b in zip(sh.doc_offsets[:-1], sh.doc_offsets[1:]):
        stream += list(sh.tokens[a:b]) + [SEP]
    assert len(ds) == (len(stream) - 6) // 6 + 1
    got = np.concatenate([ds[i] for i in range(len(ds))])
    assert got.tolist() == stream[: len(got)]
    assert ds[0].dtype == np.int64 and len(ds[len(ds) - 1]) == 6
    b = ob.collate([ds[0], ds[1]], np.random.default_rng(0))
    assert b["input_ids"].shape == (2, 8)
    with pytest.raises(DataError, match="fewer than one window"):
        ob.dataset(shards([3, 2]), seq_len=64)


# ------------------------------------------------------------------------------- CLM
def test_clm_windows_predict_every_token_once():
    sh = shards([40, 13, 1, 25, 60], seed=2)
    ob = build_objective("clm", gpt_ids())
    ds = ob.dataset(sh, seq_len=16)
    stream = []
    for a, b in zip(sh.doc_offsets[:-1], sh.doc_offsets[1:]):
        stream += list(sh.tokens[a:b]) + [5]  # <|endoftext|> after every document
    # windows overlap by one token: the targets (positions 1..T-1) tile the stream
    targets = np.concatenate([ds[i][1:] for i in range(len(ds))])
    assert ds[0][0] == stream[0]
    assert targets.tolist() == stream[1 : 1 + len(targets)]
    assert len(stream) - 1 - len(targets) < 15  # only the tail that does not fill a window is left
    b = ob.collate([ds[0], ds[1]], np.random.default_rng(0))
    assert torch.equal(b["labels"], b["input_ids"]) and int(b["n_targets"]) == 2 * 15


def test_clm_loss_matches_model_and_ignores_padding():
    torch.manual_seed(0)
    model = build_model(decoder_cfg())
    ob = build_objective("clm", gpt_ids())
    rows = windows(3, 20, 4, low=6)
    b = ob.collate(rows, np.random.default_rng(0))
    out = ob.loss(model, b)
    ref = model(input_ids=b["input_ids"], labels=b["labels"]).loss
    torch.testing.assert_close(out.loss_sum / b["n_targets"], ref)
    # a short row padded in a batch contributes exactly what it contributes alone
    short = rows[0][:9]
    alone = ob.collate([short], np.random.default_rng(0))
    mixed = ob.collate([short, rows[1]], np.random.default_rng(0))
    assert mixed["attention_mask"][0].sum() == 9 and (mixed["labels"][0, 9:] == -100).all()
    assert int(mixed["n_targets"]) == 8 + 19
    la = ob.loss(model, alone).loss_sum
    lb = ob.loss(model, ob.collate([rows[1]], np.random.default_rng(0))).loss_sum
    torch.testing.assert_close(ob.loss(model, mixed).loss_sum, la + lb, rtol=1e-5, atol=1e-4)


def test_clm_check_model_and_tokenizer():
    ob = build_objective("clm", gpt_ids())
    ob.check_model(decoder_cfg())
    with pytest.raises(ConfigError, match="'clm' needs a decoder"):
        ob.check_model(encoder_cfg())
    with pytest.raises(ConfigError, match="end-of-text token"):
        build_objective("clm", TokenizerIds(V))
    bare = build_objective("clm", TokenizerIds(V), separate_documents=False)
    sh = shards([10, 10])
    assert np.array_equal(bare.dataset(sh, 20)[0], sh.tokens.astype(np.int64))
