"""Objectives: BERT's MLM+NSP, ELECTRA, BART denoising and T5 span corruption.

Collator statistics on large synthetic batches (within 1 percentage point), label alignment
(labels reconstruct the original; T5 inputs and targets interleave back to it), determinism,
model checks, and losses against the model's own transformers-style loss.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny import BMASK, CLS, MASK, SEP, bart_ids, bert_ids, decoder_cfg, encoder_cfg, seq2seq_cfg, t5_ids, windows
from tiny import OBJ_V as V
from transferlab.errors import ConfigError, DataError
from transferlab.models import build_model
from transferlab.objectives import TokenizerIds, build_objective
from transferlab.objectives.datasets import SentenceChunks, SentencePairs
from transferlab.objectives.nsp import truncate_pair
from transferlab.objectives.span_corruption import io_lengths, raw_length


def sentence_shards(n_docs: int, sents_per_doc: tuple[int, int], sent_len: tuple[int, int], seed: int = 0,
                    unique: bool = True, low: int = 10) -> SimpleNamespace:
    """Synthetic shards; with ``unique`` every token id is its stream position + low (so a token
    tells where it came from)."""
    rng = np.random.default_rng(seed)
    sent_lens, doc_offs = [], [0]
    for _ in range(n_docs):
        k = int(rng.integers(*sents_per_doc))
        ls = rng.integers(*sent_len, size=k)
        sent_lens += ls.tolist()
        doc_offs.append(doc_offs[-1] + int(ls.sum()))
    sent_offs = np.concatenate([[0], np.cumsum(sent_lens)]).astype(np.int64)
    n = int(sent_offs[-1])
    tokens = (np.arange(n) + low) if unique else rng.integers(low, V, n)
    return SimpleNamespace(tokens=tokens.astype(np.int64), doc_offsets=np.asarray(doc_offs, np.int64), sent_offsets=sent_offs)


# =============================================================================== NSP
def _bert_truncate(a: list, b: list, max_tokens: int, rng) -> tuple[list, list]:
    """BERT's create_pretraining_data.truncate_seq_pair, verbatim in logic."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()
    return a, b


@pytest.mark.parametrize("la,lb,m", [(10, 3, 8), (3, 10, 8), (7, 7, 9), (20, 18, 11), (5, 5, 10), (1, 30, 4), (9, 8, 2)])
def test_truncate_pair_matches_berts_loop(la, lb, m):
    rng = np.random.default_rng(0)
    a, b = np.arange(la), np.arange(100, 100 + lb)
    ra, rb = _bert_truncate(a, b, m, rng)
    ta, tb = truncate_pair(a, b, m, rng)
    assert (len(ta), len(tb)) == (len(ra), len(rb))  # same final lengths as BERT's loop
    for t, orig in ((ta, a), (tb, b)):  # contiguous pieces of the originals
        assert len(t) >= 1 and np.array_equal(t, orig[t[0] - orig[0] : t[0] - orig[0] + len(t)])
    removed = la - len(ta)
    if removed:  # tokens come off the front and the back with probability 1/2 each
        fronts = [truncate_pair(a, b, m, rng)[0][0] for _ in range(2000)]
        assert abs(np.mean(fronts) - removed / 2) < 0.1 * removed + 0.05


def test_sentence_pairs_follow_bert_logic():
    sh = sentence_shards(300, (2, 9), (3, 15), seed=1)
    ds = SentencePairs(sh, max_tokens=61, short_seq_prob=0.1, seed=0)
    doc_of = lambda tok: int(np.searchsorted(sh.doc_offsets, tok - 10, "right") - 1)  # noqa: E731
    short = 0
    for i in range(len(ds)):
        ex = ds[i]
        toks = np.concatenate(ex["sentences"])
        assert len({doc_of(t) for t in toks}) == 1  # a chunk never crosses documents
        assert (np.diff(toks) == 1).all()  # consecutive sentences
        other = np.concatenate(ex["random_sentences"])
        assert doc_of(other[0]) != doc_of(toks[0])
        short += ex["target"] < 61
    assert 0.03 < short / len(ds) < 0.2
    # deterministic per index
    assert all(np.array_equal(a, b) for a, b in zip(ds[5]["random_sentences"], ds[5]["random_sentences"]))
    with pytest.raises(DataError, match="at least 2 documents"):
        SentencePairs(sentence_shards(1, (3, 4), (3, 5)), 20)


def test_nsp_pairs_labels_and_layout():
    sh = sentence_shards(400, (2, 9), (3, 15), seed=2)
    ob = build_objective("mlm+nsp", bert_ids(vocab=30000), mask_prob=0.15)  # unique ids up to ~17k
    seq_len = 64
    ds = ob.dataset(sh, seq_len)
    doc_of = lambda tok: int(np.searchsorted(sh.doc_offsets, tok - 10, "right") - 1)  # noqa: E731
    rng = np.random.default_rng(0)
    labels = []
    items = [ds[i] for i in range(len(ds))]
    for ep in range(50):  # dynamic pairs: new split / is-next draw every epoch
        for ex in items:
            a, b, lab = ob.make_pair(ex, rng)
            assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= seq_len - 3
            assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()
            if lab == 0:  # B continues A in the same document (possibly trimmed at the front)
                assert doc_of(a[0]) == doc_of(b[0]) and b[0] > a[-1]
            else:
                assert doc_of(a[0]) != doc_of(b[0])
            labels.append(lab)
    assert len(labels) > 20000
    assert abs(np.mean(labels) - 0.5) < 0.01

    batch = ob.collate([ds[i] for i in range(64)], np.random.default_rng(1))
    ids, tt, am, lab = (batch[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask", "labels"))
    assert ids.shape[1] <= seq_len and (ids[:, 0] == CLS).all()
    for r in range(len(ids)):
        n = am[r].sum()
        seps = np.flatnonzero(ids[r, :n] == SEP)
        assert len(seps) == 2 and seps[1] == n - 1
        assert (tt[r, : seps[0] + 1] == 0).all() and (tt[r, seps[0] + 1 : n] == 1).all()
    assert (lab[(ids == CLS) | (ids == SEP) | (am == 0)] == -100).all()
    assert batch["next_sentence_label"].shape == (64,)


def test_nsp_loss_is_mlm_mean_plus_nsp_mean():
    torch.manual_seed(0)
    cfg = encoder_cfg(type_vocab_size=2, pooler=True, heads={"lm": {}, "nsp": {}})
    model = build_model(cfg)
    ob = build_objective("nsp", bert_ids())
    ob.check_model(cfg)
    ds = ob.dataset(sentence_shards(50, (2, 6), (3, 10), seed=3, unique=False), 48)
    b = ob.collate([ds[i] for i in range(6)], np.random.default_rng(0))
    out = ob.loss(model, b)
    mlm = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                labels=b["labels"]).loss
    nsp = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                head="nsp", labels=b["next_sentence_label"]).loss
    torch.testing.assert_close(out.loss_sum / b["n_targets"], mlm + nsp)
    assert out.metrics["nsp_loss"] == pytest.approx(nsp.item(), rel=1e-5)
    assert set(out.metrics) == {"mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"}


def test_nsp_check_model():
    ob = build_objective("nsp", bert_ids())
    good = dict(type_vocab_size=2, pooler=True, heads={"lm": {}, "nsp": {}})
    ob.check_model(encoder_cfg(**good))
    with pytest.raises(ConfigError, match="type_vocab_size >= 2, got 0"):
        ob.check_model(encoder_cfg(**{**good, "type_vocab_size": 0}))
    with pytest.raises(ConfigError, match="model.pooler=true"):
        ob.check_model(encoder_cfg(**{**good, "pooler": False}))
    with pytest.raises(ConfigError, match="needs model head\\(s\\) 'lm', 'nsp'"):
        ob.check_model(encoder_cfg(**{**good, "heads": {"lm": {}}}))
    with pytest.raises(ConfigError, match="needs an encoder"):
        ob.check_model(seq2seq_cfg())


# =============================================================================== ELECTRA
def electra_model(**kw):
    return build_model(encoder_cfg(heads={"rtd": {}}, type_vocab_size=2, d_model=64, n_heads=4, d_ff=128, **kw))


def test_electra_masking_recipe():
    ob = build_objective("electra", bert_ids())
    b = ob.collate(windows(512, 126), np.random.default_rng(0))
    ids, lab = b["input_ids"].numpy(), b["labels"].numpy()
    picked = lab != -100
    assert abs(picked.mean() * 128 / 126 - 0.15) < 0.01
    assert abs((ids[picked] == MASK).mean() - 0.85) < 0.01
    assert (ids[picked][ids[picked] != MASK] == lab[picked][ids[picked] != MASK]).all()  # no random tokens


def test_electra_pair_shares_embeddings_and_saves(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = electra_model()
    ob = build_objective("electra", bert_ids())
    pair = ob.wrap_model(model)
    g = pair.generator.config
    assert (g.d_model, g.n_heads, g.d_ff, g.n_layers) == (16, 1, 32, 2)  # 1/4 of 64/4/128, same depth
    shared = model.backbone.embed_tokens.weight
    assert pair.generator.heads["lm"].output_weight is shared
    assert pair.generator.backbone.encoder.embed_tokens[0].weight is shared
    assert not any("generator.backbone.embed_tokens" in k for k in pair.state_dict())
    # the generator reads exactly the discriminator's embedding output (token + position + segment + norm)
    model.eval()
    b = ob.collate(windows(3, 20), np.random.default_rng(0))
    tt = torch.randint(0, 2, b["input_ids"].shape)
    h0 = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=tt,
               output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(pair.shared_embeddings(b["input_ids"], tt, b["attention_mask"]), h0)
    # no aliased tensors: the pair saves as safetensors and reloads into a fresh pair
    save_file({k: v.contiguous() for k, v in pair.state_dict().items()}, str(tmp_path / "pair.safetensors"))
    fresh = ob.wrap_model(electra_model())
    fresh.load_state_dict(load_file(str(tmp_path / "pair.safetensors")))
    assert torch.equal(fresh.generator.heads["lm"].bias, pair.generator.heads["lm"].bias)
    assert ob.unwrap_model(pair) is model and ob.wrap_model(pair) is pair


def test_electra_loss_weighting_gradients_and_no_gradient_through_sampling():
    torch.manual_seed(0)
    ob = build_objective("electra", bert_ids())
    pair = ob.wrap_model(electra_model())
    b = ob.collate(windows(8, 30), np.random.default_rng(0))
    torch.manual_seed(1)
    out = ob.loss(pair, b)
    m = out.metrics
    assert out.loss_sum.item() / int(b["n_targets"]) == pytest.approx(m["gen_loss"] + 50 * m["rtd_loss"], rel=1e-5)
    assert 0 < m["replaced_frac"] <= int(b["n_targets"]) / int(b["attention_mask"].sum())
    out.loss_sum.backward()
    assert all(p.grad is not None for p in pair.parameters())  # nothing unused (DDP-safe)
    gen_grads = {n: p.grad.clone() for n, p in pair.named_parameters() if n.startswith("generator")}
    # the discriminator's loss must not reach the generator: same step with disc_weight 0
    pair.zero_grad()
    ob.config.disc_weight = 0.0
    torch.manual_seed(1)
    ob.loss(pair, b).loss_sum.backward()
    for n, p in pair.named_parameters():
        if n.startswith("generator"):
            torch.testing.assert_close(p.grad, gen_grads[n])
    with pytest.raises(TypeError, match="wrap_model"):
        ob.loss(electra_model(), b)


def test_electra_pair_with_an_embedding_projection():
    """ELECTRA-Small's layout: embeddings narrower than the discriminator (E=32, C_d=64, C_g=16);
    the generator reads the shared E-wide embeddings through generator_proj (E -> C_g) and its MLM
    head maps back to E, tied to the (V, E) table; every parameter gets a gradient."""
    torch.manual_seed(0)
    model = electra_model(embedding_size=32)
    ob = build_objective("electra", bert_ids())
    pair = ob.wrap_model(model)
    assert pair.generator.config.embedding_size is None and pair.generator.config.d_model == 16
    assert pair.generator_proj.weight.shape == (16, 32)
    head = pair.generator.heads["lm"]
    assert head.transform.dense.weight.shape == (32, 16) and head.output_weight is model.backbone.embed_tokens.weight
    model.eval()
    b = ob.collate(windows(3, 20), np.random.default_rng(0))
    tt = torch.randint(0, 2, b["input_ids"].shape)
    e = pair.shared_embeddings(b["input_ids"], tt, b["attention_mask"])  # (B, T, E) before emb_proj
    h0 = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=tt,
               output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(model.backbone.encoder.emb_proj(e), h0)
    pair.train()
    b = ob.collate(windows(8, 30), np.random.default_rng(0))
    out = ob.loss(pair, b)
    assert torch.isfinite(out.loss_sum)
    out.loss_sum.backward()
    assert all(p.grad is not None for p in pair.parameters())
    assert ob.unwrap_model(pair) is model


def test_electra_check_model():
    ob = build_objective("electra", bert_ids())
    with pytest.raises(ConfigError, match="needs model head\\(s\\) 'rtd'"):
        ob.check_model(encoder_cfg())
    with pytest.raises(ConfigError, match="needs an encoder"):
        ob.check_model(decoder_cfg(heads={"rtd": {}}))
    with pytest.raises(ConfigError, match="generator_size must be in"):
        build_objective("electra", bert_ids(), generator_size=0)


# =============================================================================== BART denoising
def _chunks(n: int, length: int, n_sents: int = 1, base: int = 10):
    starts = np.linspace(0, length, n_sents, endpoint=False).astype(np.int64)
    return [{"tokens": np.arange(base, base + length), "sentence_starts": starts} for _ in range(n)]


def _content(batch, r):
    ids, am = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    row = ids[r][am[r] > 0]
    assert row[0] == 0 and row[-1] == 2  # <s> ... </s>
    return row[1:-1]


def test_denoise_text_infilling_rate_and_poisson_spans():
    ob = build_objective("denoise", bart_ids(), noise=["infill"])
    L, n = 200, 1500
    b = ob.collate(_chunks(n, L), np.random.default_rng(0))
    masked = n_masks = zero_len = 0
    for r in range(n):
        row = _content(b, r)
        kept = row[row != BMASK]
        assert (np.diff(kept) > 0).all()  # what is left is the original, in order
        masked += L - len(kept)
        n_masks += (row == BMASK).sum()
        # a [BMASK] between two tokens that are neighbours in the original is an inserted 0-length span
        pos = np.flatnonzero(row == BMASK)
        inner = pos[(pos > 0) & (pos < len(row) - 1)]
        zero_len += ((row[inner + 1] - row[inner - 1]) == 1).sum()
        assert not ((row[:-1] == BMASK) & (row[1:] == BMASK)).any()  # spans never touch
    assert abs(masked / (L * n) - 0.30) < 0.01  # 30% of the tokens are infilled
    assert abs(masked / n_masks - 3.0) < 0.1  # one [BMASK] per span: Poisson(3) mean length
    assert abs(zero_len / n_masks - np.exp(-3)) < 0.01  # P(length 0) = e^-3


def test_denoise_token_masking_and_deletion_rates():
    L, n = 200, 800
    ob = build_objective("denoise", bart_ids(), noise=["mask"])
    b = ob.collate(_chunks(n, L), np.random.default_rng(1))
    rows = [_content(b, r) for r in range(n)]
    assert all(len(r) == L for r in rows)
    assert abs(np.mean([(r == BMASK).mean() for r in rows]) - 0.15) < 0.01
    ob = build_objective("denoise", bart_ids(), noise=["delete"])
    b = ob.collate(_chunks(n, L), np.random.default_rng(2))
    rows = [_content(b, r) for r in range(n)]
    assert all((np.diff(r) > 0).all() for r in rows)
    assert abs(1 - np.mean([len(r) for r in rows]) / L - 0.15) < 0.01


def test_denoise_permutation_and_rotation():
    sents = [0, 7, 12, 20, 31]
    ex = {"tokens": np.arange(10, 50), "sentence_starts": np.array(sents)}
    pieces = [list(range(10 + a, 10 + b)) for a, b in zip(sents, sents[1:] + [40])]
    ob = build_objective("denoise", bart_ids(), noise=["permute"])
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(50):
        row = _content(ob.collate([ex], rng), 0).tolist()
        got = []
        while row:  # the input is the same sentences in another order
            p = next(p for p in pieces if row[: len(p)] == p)
            got.append(pieces.index(p))
            row = row[len(p):]
        assert sorted(got) == list(range(5))
        orders.add(tuple(got))
    assert len(orders) > 20
    ob = build_objective("denoise", bart_ids(), noise=["rotate"])
    row = _content(ob.collate([ex], np.random.default_rng(3)), 0)
    k = int(np.flatnonzero(row == 10)[0])
    assert np.array_equal(np.roll(row, -k), np.arange(10, 50))


def test_denoise_all_noises_labels_and_decoder_inputs():
    ob = build_objective("denoise", bart_ids(), noise="permute,mask,delete,infill,rotate", random_ratio=0.1)
    ex = [{"tokens": np.arange(10, 10 + n), "sentence_starts": np.array([0, n // 2])} for n in (30, 45, 12)]
    b = ob.collate(ex, np.random.default_rng(0))
    lab, dec = b["labels"].numpy(), b["decoder_input_ids"].numpy()
    for r, e in enumerate(ex):
        n = len(e["tokens"])
        assert lab[r, : n + 2].tolist() == [0] + e["tokens"].tolist() + [2]  # <s> original </s>
        assert (lab[r, n + 2 :] == -100).all()
        # shifted right after </s> (BART's decoder_start), then pad (as transformers' shift_tokens_right)
        assert dec[r, 0] == 2 and dec[r, 1 : n + 3].tolist() == lab[r, : n + 2].tolist()[: dec.shape[1] - 1]
        assert (dec[r, n + 3 :] == 1).all()
    assert int(b["n_targets"]) == sum(len(e["tokens"]) + 2 for e in ex)
    # determinism under a seed; new noise on the next draw
    b2 = ob.collate(ex, np.random.default_rng(0))
    assert all(torch.equal(b[k], b2[k]) for k in b)
    assert not torch.equal(ob.collate(ex, np.random.default_rng(1))["input_ids"], b["input_ids"])


def test_denoise_whole_word_infilling():
    cont = bart_ids().continuation
    rng = np.random.default_rng(0)
    # words: a start (id < 600) followed by 0-2 continuation pieces (ids >= 600)
    toks = []
    while len(toks) < 150:
        toks += [int(rng.integers(10, 600))] + rng.integers(600, V, int(rng.integers(0, 3))).tolist()
    toks = np.array(toks)
    ob = build_objective("denoise", bart_ids(), noise=["infill"], whole_word=True)
    for _ in range(20):
        row = _content(ob.collate([toks], rng), 0)
        # after a [BMASK] never comes a continuation piece: spans end at word boundaries
        nxt = row[1:][row[:-1] == BMASK]
        assert not cont[nxt].any()
        # and the token before a [BMASK] is followed, in the original, by a word start
        assert not cont[row[0]] or row[0] == BMASK


def test_denoise_loss_and_checks():
    torch.manual_seed(0)
    cfg = seq2seq_cfg(decoder_start_token_id=2, pad_token_id=1)
    model = build_model(cfg)
    ob = build_objective("denoise", bart_ids())
    ob.check_model(cfg)
    b = ob.collate(_chunks(3, 25, 3), np.random.default_rng(0))
    out = ob.loss(model, b)
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                decoder_input_ids=b["decoder_input_ids"], labels=b["labels"]).loss
    torch.testing.assert_close(out.loss_sum / b["n_targets"], ref)
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        ob.check_model(encoder_cfg())
    with pytest.raises(ConfigError, match="decoder_start_token_id=0 but the denoise collator starts decoding with 2"):
        ob.check_model(seq2seq_cfg(decoder_start_token_id=0))
    with pytest.raises(ConfigError, match="unknown noise 'shuffle'"):
        build_objective("denoise", bart_ids(), noise=["shuffle"])
    # a unigram vocabulary has no [BMASK]: its first sentinel stands in
    assert build_objective("denoise", TokenizerIds(V, pad_token_id=0, eos_token_id=1, cls_token_id=5,
                                                 sentinel_token_ids=(999,))).mask_id == 999


def test_sentence_chunks_keep_whole_sentences():
    sh = sentence_shards(30, (1, 8), (2, 30), seed=4)
    sh.sent_offsets = np.insert(sh.sent_offsets, 5, sh.sent_offsets[4] + 1)  # a 1-token sentence
    ds = SentenceChunks(sh, max_tokens=40)
    so = set(sh.sent_offsets.tolist())
    seen = []
    for i in range(len(ds)):
        ex = ds[i]
        t = ex["tokens"]
        assert 0 < len(t) <= 40 and (np.diff(t) == 1).all()
        start = int(t[0]) - 10
        assert len(set(np.searchsorted(sh.doc_offsets, t - 10, "right"))) == 1  # one document
        inner = [s for s in so if start < s < start + len(t)]
        assert ex["sentence_starts"].tolist() == [0] + sorted(s - start for s in inner)
        seen += t.tolist()
    assert seen == (np.arange(len(sh.tokens)) + 10).tolist()  # every token once, in order
    ob = build_objective("denoise", bart_ids())
    assert len(ob.dataset(sh, 42)) == len(ds)


# =============================================================================== T5 span corruption
def test_t5_lengths_match_t5():
    assert raw_length(512, 0.15, 3.0) == 568 and io_lengths(568, 0.15, 3.0) == (512, 114)
    # 141 raw tokens: 21 noise tokens in 7 spans -> 141 - 21 + 7 + 1 = 128 inputs; 142 would make 129
    assert raw_length(128, 0.15, 3.0) == 141 and io_lengths(141, 0.15, 3.0) == (128, 29)


def _uninterleave(inp: np.ndarray, tgt: np.ndarray, sentinels: list[int], eos: int) -> list[int]:
    """Put the target spans back in place of their sentinels."""
    spans, cur = {}, None
    for t in tgt[:-1]:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(int(t))
    out = []
    for t in inp[:-1]:
        out += spans[t] if t in sentinels else [int(t)]
    assert inp[-1] == eos and tgt[-1] == eos
    return out


def test_span_corruption_interleaves_back_and_has_t5_statistics():
    sp = t5_ids()
    ob = build_objective("span-corruption", sp)
    L = ob.raw_length(128)
    x = [np.arange(10, 10 + L) for _ in range(400)]
    b = ob.collate(x, np.random.default_rng(0))
    inp, lab, dec = b["input_ids"].numpy(), b["labels"].numpy(), b["decoder_input_ids"].numpy()
    assert inp.shape == (400, 128) and lab.shape[1] == io_lengths(L, 0.15, 3.0)[1]
    sent = list(sp.sentinel_token_ids)
    span_lengths = []
    for r in range(400):
        assert _uninterleave(inp[r], lab[r], sent, 1) == x[r].tolist()
        s_in = [t for t in inp[r] if t in sent]
        assert s_in == sent[: len(s_in)]  # <extra_id_0>, <extra_id_1>, ... in order
        d = np.diff(np.concatenate([[-1], np.flatnonzero(np.isin(lab[r], sent)), [len(lab[r]) - 1]]))
        span_lengths += (d[1:] - 1).tolist()
    n_noise = round(L * 0.15)
    assert np.mean(span_lengths) == pytest.approx(n_noise / round(n_noise / 3))  # T5's mean span length ~3
    assert abs(np.mean(span_lengths) - 3.0) < 0.1
    assert np.std(span_lengths) > 0.5  # random segmentation, not fixed spans
    assert (dec[:, 0] == 0).all() and np.array_equal(dec[:, 1:], lab[:, :-1])
    assert int(b["n_targets"]) == lab.size
    b2 = ob.collate(x, np.random.default_rng(0))
    assert torch.equal(b2["input_ids"], b["input_ids"])
    assert not torch.equal(ob.collate(x, np.random.default_rng(1))["input_ids"], b["input_ids"])


def test_span_corruption_variable_lengths_loss_and_checks():
    torch.manual_seed(0)
    sp = t5_ids()
    ob = build_objective("span-corruption", sp)
    cfg = seq2seq_cfg(decoder_start_token_id=0)
    ob.check_model(cfg)
    model = build_model(cfg)
    b = ob.collate([np.arange(10, 40), np.arange(50, 70)], np.random.default_rng(0))
    assert b["attention_mask"][1].sum() < b["attention_mask"][0].sum()
    out = ob.loss(model, b)
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                decoder_input_ids=b["decoder_input_ids"], labels=b["labels"]).loss
    torch.testing.assert_close(out.loss_sum / b["n_targets"], ref)
    with pytest.raises(ConfigError, match="needs sentinel tokens"):
        build_objective("span-corruption", TokenizerIds(V, eos_token_id=1))
    with pytest.raises(ConfigError, match="noise spans but the tokenizer has only 3 sentinels"):
        build_objective("span-corruption", t5_ids(3)).collate([np.arange(10, 110)], np.random.default_rng(0))
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        ob.check_model(decoder_cfg())
    ds = ob.dataset(sentence_shards(20, (2, 5), (5, 20), unique=False), 64)
    assert len(ds[0]) == ob.raw_length(64)
    assert ob.collate([ds[0], ds[1]], np.random.default_rng(0))["input_ids"].shape == (2, 64)
