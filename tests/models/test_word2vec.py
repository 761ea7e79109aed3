"""The word2vec family end to end: trained vectors put related words closer, a killed run resumes
bit-identically, ``--init-embeddings`` copies matched rows, the family's backbone facts, and
``features neighbours`` shows global neighbours."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferlab.config import get_preset
from transferlab.errors import ConfigError
from transferlab.models.model import TransferModel, from_pretrained

ANIMALS = "cat dog horse cow sheep goat".split()
FOODS = "bread cheese apple pear rice soup".split()


def _corpus(n_docs: int = 300, seed: int = 0) -> str:
    """Two topics that never share a sentence: animals that run and sleep, foods that taste."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.5:
                sents.append(f"the {rng.choice(ANIMALS)} {rng.choice(['runs', 'sleeps', 'jumps'])} "
                             f"near the {rng.choice(ANIMALS)} .")
            else:
                sents.append(f"the {rng.choice(FOODS)} {rng.choice(['tastes', 'smells'])} good with "
                             f"{rng.choice(FOODS)} .")
        docs.append(" ".join(sents))
    return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from transferlab.data.prepare import prepare_corpus
    from transferlab.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("w2v")
    (root / "c.txt").write_text(_corpus(), encoding="utf-8")
    tok = Tokenizer.train([str(root / "c.txt")], kind="wordpiece", vocab_size=200)
    prepare_corpus([str(root / "c.txt")], tok, root / "data", val_fraction=0.05, workers=0, progress=False)
    return root / "data", tok


def _train_cfg(**kw):
    from transferlab.training.config import TrainConfig

    base = dict(batch_size=16, seq_len=64, max_steps=150, lr=5e-3, warmup=0.05, weight_decay=0.0, eval_every=0,
                save_every=0, log_every=10, dtype="fp32", seed=0, progress=False, tensorboard=False, num_threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    from transferlab.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("w2vrun") / "run"
    summary = pretrain("word2vec-128", "skipgram", {"window": 3}, _train_cfg(), data[0], out)
    return out, summary


def test_vectors_put_related_words_closer(trained, data):
    out, summary = trained
    _, tok = data
    model = from_pretrained(out / "model")
    E = F.normalize(model.backbone.embed_tokens.weight.detach(), dim=-1)

    def sim(a: str, b: str) -> float:
        return float(E[tok.convert_tokens_to_ids(a)] @ E[tok.convert_tokens_to_ids(b)])

    within = [sim(a, b) for grp in (ANIMALS, FOODS) for a in grp for b in grp if a < b]
    across = [sim(a, b) for a in ANIMALS for b in FOODS]
    assert min(within) > max(across)
    assert summary["steps"] == 150 and json.loads((out / "config.json").read_text())["objective"]["name"] == "skipgram"
    report = json.loads((out / "report.json").read_text())
    assert report["flops"] > 0


def test_a_killed_run_resumes_bit_identically(data, tmp_path):
    from transferlab.data import TokenShards
    from transferlab.objectives import build_objective
    from transferlab.training.loop import Trainer
    from transferlab.training.pretrain import fit_config_to_tokenizer

    shards = TokenShards(data[0], "train")

    def make(out, **kw):
        ob = build_objective("skipgram", shards.tokenizer, sample=1e-2)
        torch.manual_seed(0)
        cfg = fit_config_to_tokenizer(get_preset("word2vec-128", d_model=16), shards.tokenizer, ob)
        return Trainer(TransferModel(cfg), ob, ob.dataset(shards, 32),
                       _train_cfg(max_steps=10, save_every=3, grad_accum=2, batch_size=4, seq_len=32), out, **kw)

    full = make(tmp_path / "a")
    full.fit()

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        make(tmp_path / "b", on_step=[kill]).fit()
    resumed = make(tmp_path / "b")
    resumed.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_init_embeddings_copies_the_matched_rows(trained, data, tmp_path, capsys):
    from transferlab.models.init_embeddings import init_embeddings

    out, _ = trained
    _, tok = data
    src = from_pretrained(out / "model").backbone.embed_tokens.weight.detach()
    torch.manual_seed(1)
    model = TransferModel(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=128))
    res = init_embeddings(model, tok, out / "model")
    ordinary = [i for i in range(tok.vocab_size) if i not in set(tok.all_special_ids)]
    assert res.matched == res.total == len(ordinary)
    assert "matched" in capsys.readouterr().err
    table = model.get_input_embeddings().weight.detach()
    assert torch.equal(table[ordinary], src[ordinary])
    # a word2vec text file of whole words, matched by token string (only some of the vocabulary)
    lines = [f"{w} " + " ".join(str(float(i + j)) for j in range(128)) for i, w in enumerate(ANIMALS + FOODS)]
    (tmp_path / "v.txt").write_text(f"{len(lines)} 128\n" + "\n".join(lines) + "\n", encoding="utf-8")
    res = init_embeddings(model, tok, tmp_path / "v.txt", min_overlap=0.0, quiet=True)
    assert res.matched == len(ANIMALS + FOODS)
    assert table.new_tensor(model.get_input_embeddings().weight[tok.convert_tokens_to_ids("dog")][:2].tolist()) \
        .tolist() == [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"only 12 of the model's \d+ tokens \(\d+\.\d%\) have a vector"):
        init_embeddings(model, tok, tmp_path / "v.txt", min_overlap=0.5)
    (tmp_path / "none.txt").write_text("zzz 1 2\nyyy 3 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"only 0 of"):
        init_embeddings(TransferModel(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=2, n_heads=1)),
                        tok, tmp_path / "none.txt")
    narrow = TransferModel(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=64, n_heads=2))
    with pytest.raises(ConfigError, match="the vectors are 128 wide, the model's token embeddings 64"):
        init_embeddings(narrow, tok, out / "model")


def test_init_embeddings_in_pretrain_and_finetune(trained, data, tmp_path, capsys):
    from transferlab.finetune import FinetuneConfig, finetune
    from transferlab.training.pretrain import pretrain

    out, _ = trained
    pretrain("bert-tiny", "mlm", None, _train_cfg(max_steps=2, batch_size=4, seq_len=32,
                                                  init_embeddings=str(out / "model")),
             data[0], tmp_path / "mlm", model_overrides=["model.d_model=128"])
    assert "init-embeddings: matched" in capsys.readouterr().err
    rows = ["text,label"] + [f"the {a} runs near the {a},animal" for a in ANIMALS] * 4 + \
        [f"the {f} tastes good with {f},food" for f in FOODS] * 4
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = finetune(FinetuneConfig(out_dir=str(tmp_path / "ft"), model=str(tmp_path / "mlm" / "model"),
                                  train_file=str(tmp_path / "t.csv"), epochs=1, batch_size=8, quiet=False,
                                  init_embeddings=str(out / "model"), cost={"track_energy": False}))
    assert res.task_type == "classification"
    assert "init-embeddings: matched" in capsys.readouterr().err


def test_backbone_facts_and_errors(data):
    from transferlab.cost import estimate_flops
    from transferlab.models.word2vec import DEFAULT_NEGATIVES, DEFAULT_WINDOW, Word2Vec

    cfg = get_preset("word2vec-256", vocab_size=50)
    assert cfg.family == "word2vec" and cfg.family_options.features == "input" and cfg.heads == {}
    model = TransferModel(cfg).eval()  # no dropout: the forward is the lookup
    bb = model.backbone
    assert isinstance(bb, Word2Vec) and bb.num_hidden_states == 1
    assert float(bb.context.weight.detach().abs().sum()) == 0.0  # word2vec.c: context vectors start at zero
    assert float(bb.embed_tokens.weight.detach().abs().max()) <= 0.5 / 256
    groups = bb.layer_groups()
    assert sum(len(g) for g in groups) == len(list(bb.parameters()))
    ids = torch.tensor([[3, 4, 5, 0]])
    out = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]]), output_hidden_states=True)
    assert torch.equal(out.last_hidden_state[0, :3], bb.embed_tokens.weight[[3, 4, 5]])
    assert float(out.last_hidden_state[0, 3].detach().abs().sum()) == 0.0 and len(out.hidden_states) == 1
    assert estimate_flops(cfg, 10) == 6.0 * 256 * (1 + DEFAULT_NEGATIVES) * 10 * (DEFAULT_WINDOW + 1)
    assert estimate_flops(cfg, 10, mode="forward") == 0.0
    with pytest.raises(ConfigError, match="features must be input or sum"):
        get_preset("word2vec-128", family_options={"features": "mean"})


def test_neighbours_on_word2vec_are_global(trained, data):
    from transferlab.finetune.probes import neighbours

    out, _ = trained
    _, tok = data
    model = from_pretrained(out / "model")
    rep = neighbours(model, tok, "cat", sentences=["the cat runs near the dog ."],
                     corpus=_corpus(20, seed=3).split("\n\n"), k=4)
    assert rep.queries == [] and rep.global_vectors
    assert rep.static[0][0] in ANIMALS
    text = rep.format()
    assert "global nearest neighbours of 'cat'" in text and "contextual neighbours of" not in text


def test_bag_of_vectors_fine_tuning_and_features(trained, data, tmp_path):
    from transferlab.features import extract_features
    from transferlab.finetune import FinetuneConfig, finetune, predict

    out, _ = trained
    _, tok = data
    rows = ["text,label"] + [f"the {a} runs near the {b},animal" for a in ANIMALS for b in ANIMALS[:3]] + \
        [f"the {f} tastes good with {g},food" for f in FOODS for g in FOODS[:3]]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = finetune(FinetuneConfig(out_dir=str(tmp_path / "ft"), model=str(out / "model"), train_file=str(tmp_path / "t.csv"),
                                  validation_file=str(tmp_path / "t.csv"), epochs=8, lr=3e-2, batch_size=8,
                                  pooling="mean", quiet=True, cost={"track_energy": False}))
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    preds = predict(res.out_dir, ["the goat runs near the cow", "the rice tastes good with soup"])  # unseen pairs
    assert [p["prediction"] for p in preds] == ["animal", "food"]
    model = from_pretrained(out / "model")
    f = extract_features(model, tok, ["the cat runs", "the bread tastes good"], layer="all", pooling="mean")
    assert f.values.shape == (2, 1, 128)
