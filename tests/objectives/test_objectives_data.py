"""Every objective end to end on real prepared shards: a tokenizer trained in-process, a corpus
prepared with ``prepare_corpus``, the objective's dataset, collator and loss on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiny import prepare_shards, tiny_config, write_docs
from transferlab.data import TokenShards
from transferlab.models import build_model
from transferlab.objectives import Objective, build_objective, objective_names

WORDS = ("the cat sat on a mat while dogs barked loudly at passing cars and people walked home "
         "slowly under grey skies as rain began to fall over quiet streets").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("objdata")
    # common words plus rare made-up ones, so a 300-token WordPiece vocabulary needs "##" pieces
    syll = ["ka", "lo", "mi", "ren", "tu", "vas", "el", "qui", "don", "sha"]
    rare = ["".join(rng.choice(syll, rng.integers(2, 5))) for _ in range(300)]
    vocab = WORDS * 4 + rare
    docs = []
    for _ in range(80):
        sents = [" ".join(rng.choice(vocab, rng.integers(4, 12))).capitalize() + "."
                 for _ in range(rng.integers(2, 7))]
        docs.append(" ".join(sents))
    corpus = write_docs(root / "c.txt", docs, end="")
    out = {}
    for kind in ("wordpiece", "bpe", "unigram"):
        tok = prepare_shards(corpus, kind, root / kind, val_fraction=0.1, min_frequency=2)
        out[kind] = (tok, TokenShards(root / kind, "train"))
    return out


CASES = {
    "mlm": ("wordpiece", dict(family="encoder", heads={"lm": {}}, lm_head_transform=True), {"whole_word": True}),
    "nsp": ("wordpiece", dict(family="encoder", heads={"lm": {}, "nsp": {}}, type_vocab_size=2, pooler=True), {}),
    "electra": ("wordpiece", dict(family="encoder", heads={"rtd": {}}, type_vocab_size=2), {}),
    "clm": ("bpe", dict(family="decoder", heads={"lm": {}}, prenorm=True, final_norm=True), {}),
    "denoise": ("bpe", dict(family="encoder-decoder", heads={"lm": {}}), {"noise": "infill,permute,rotate"}),
    "span-corruption": ("unigram", dict(family="encoder-decoder", heads={"lm": {}}), {}),
    "plm": ("wordpiece", dict(family="encoder", heads={"lm": {}}, lm_head_transform=True), {}),
    "mtlm": ("wordpiece", dict(family="encoder", heads={"lm": {}}), {"seq2seq_weight": 1, "bidirectional_weight": 0}),
    "mass": ("bpe", dict(family="encoder-decoder", heads={"lm": {}}), {}),
    "bilm": ("wordpiece", dict(family="elmo", heads={"lm": {"type": "bilm_softmax"}}, tie_embeddings=False,
                               position="none", family_options={"cell_size": 32, "token_input": "chars", "max_chars": 10,
                                                                "filters": [[1, 8], [2, 8], [3, 16]]}), {}),
    "skipgram": ("wordpiece", dict(family="word2vec", heads={}), {"window": 3, "negatives": 4}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_objective_on_prepared_shards(corpus, name):
    kind, model_kw, settings = CASES[name]
    tok, shards = corpus[kind]
    ob = build_objective(name, tok, **settings)
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tok.vocab_size, n_layers=1, max_positions=64, pad_token_id=tok.pad_token_id or 0,
                      **model_kw)
    if cfg.is_encoder_decoder:
        cfg.decoder_start_token_id = ob.start
    ob.check_model(cfg)
    module = ob.wrap_model(build_model(cfg))
    ds = ob.dataset(shards, 32)
    assert len(ds) > 4
    batch = ob.collate([ds[i] for i in range(4)], np.random.default_rng(0))
    query_slots = ob.slots(32) if name == "plm" else 0  # plm appends its query stream
    assert batch["input_ids"].shape[1] <= 32 + query_slots and int(batch["n_targets"]) > 0
    assert int(batch["input_ids"].max()) < tok.vocab_size
    out = ob.loss(module, batch)
    # the contract the trainer relies on: the ABC, the declared metric names, the LM-loss metric
    assert isinstance(ob, Objective)
    assert tuple(out.metrics) == ob.metric_names
    assert ob.lm_loss_metric is None or ob.lm_loss_metric in ob.metric_names
    mean = out.loss_sum / batch["n_targets"]
    assert math.isfinite(mean.item()) and 0.5 * math.log(tok.vocab_size) < mean.item() < 3 * math.log(tok.vocab_size) + 60
    mean.backward()
    assert ob.unwrap_model(module).config is cfg


def test_every_objective_is_covered():
    assert sorted(CASES) == sorted(objective_names())


def test_an_objective_must_implement_the_contract():
    class Partial(Objective):  # no compute: the trainer could not run it
        def check_model(self, cfg):
            pass

        def dataset(self, shards, seq_len):
            return []

        def collate(self, examples, rng):
            return {}

    with pytest.raises(TypeError, match="compute"):
        Partial()


def test_mlm_masks_whole_wordpiece_words(corpus):
    tok, shards = corpus["wordpiece"]
    ob = build_objective("mlm", tok, whole_word=True, mask_prob=0.3)
    ds = ob.dataset(shards, 48)
    b = ob.collate([ds[i] for i in range(len(ds))], np.random.default_rng(0))
    ids, lab = b["input_ids"].numpy(), b["labels"].numpy()
    orig = np.where(lab != -100, lab, ids)
    cont = tok.continuation_mask()[orig]
    picked = lab != -100
    # a "##" piece is picked exactly when the token before it is (both inside the window)
    inner = cont[:, 1:] & ~np.isin(orig[:, :-1], tok.all_special_ids)
    assert inner.any()
    assert (picked[:, 1:][inner] == picked[:, :-1][inner]).all()


@pytest.mark.parametrize("name", ["mlm", "nsp", "denoise"])
def test_dataset_views_pickle_without_the_token_arrays(corpus, name):
    import pickle

    tok, shards = corpus["wordpiece"]
    ds = build_objective(name, tok).dataset(shards, 32) if name != "denoise" else \
        build_objective(name, tok, noise="infill").dataset(shards, 32)
    first = ds[1]
    blob = pickle.dumps(ds)
    # the memmaps are re-opened in the worker, not copied: only the (small) chunk index travels
    bound = len(pickle.dumps(shards)) + 40 * len(ds) + 500
    assert len(blob) < bound < len(blob) + shards.tokens.nbytes
    again = pickle.loads(blob)[1]
    if isinstance(first, dict):
        for k in first:
            a, b = first[k], again[k]
            assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else
                    all(np.array_equal(x, y) for x, y in zip(a, b)) if isinstance(a, list) else a == b)
    else:
        assert np.array_equal(first, again)


@pytest.mark.parametrize("name", list(CASES))
def test_model_settings_build_a_config_that_fits(corpus, name):
    from transferlab.config import get_preset

    tok, _ = corpus[CASES[name][0]]
    ob = build_objective(name, tok, **CASES[name][2])
    preset = {"encoder": "bert-tiny", "decoder": "gpt-mini", "encoder-decoder": "bart-mini",
              "elmo": "elmo-tiny",
              "word2vec": "word2vec-128"}[ob.family.value]
    cfg = get_preset(preset, **ob.model_settings())
    ob.check_model(cfg)
    assert cfg.vocab_size == tok.vocab_size and set(cfg.heads) == set(ob.heads)
    if cfg.is_encoder_decoder:
        assert cfg.decoder_start_token_id == ob.start and cfg.pad_token_id == tok.pad_token_id
