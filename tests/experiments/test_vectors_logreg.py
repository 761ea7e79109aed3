"""The ``vectors-logreg`` compare method: mean word2vec vectors + logistic regression."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from transferlab.config import get_preset
from transferlab.errors import ConfigError
from transferlab.experiments.baselines import run_baseline
from transferlab.experiments.config import load_compare_config
from transferlab.experiments.grid import read_results, run_compare
from transferlab.models.model import TransferModel
from transferlab.tokenizer import Tokenizer

POS = ["a wonderful film , loved it", "great acting and a great story", "wonderful , moving and funny"]
NEG = ["a terrible film , hated it", "boring plot and awful acting", "awful , dull and too long"]


def _rows(n: int, offset: int) -> list[dict]:
    return [{"text": (POS if (i + offset) % 2 else NEG)[i % 3], "label": "pos" if (i + offset) % 2 else "neg"}
            for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("vlr")
    for split, n, off in (("train", 40, 0), ("validation", 12, 1), ("test", 12, 0)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, off)))
    tok = Tokenizer.train(POS + NEG, kind="wordpiece", vocab_size=80, min_frequency=1)
    torch.manual_seed(0)
    model = TransferModel(get_preset("word2vec-128", vocab_size=len(tok), d_model=16))
    with torch.no_grad():  # random vectors are enough to separate two fixed vocabularies
        model.backbone.embed_tokens.weight.normal_()
    model.save_pretrained(d / "w2v")
    tok.save(d / "w2v")
    return d


def test_vectors_logreg_in_a_tiny_compare(setup, monkeypatch):
    d = setup
    monkeypatch.chdir(d)
    raw = {"out_dir": "out", "tasks": [{"name": "toy", "train_file": "train.jsonl", "validation_file": "validation.jsonl",
                                        "test_file": "test.jsonl"}],
           "train_sizes": [20], "seeds": [0], "cost": {"track_energy": False},
           "models": ["majority", {"name": "w2v", "baseline": "vectors-logreg", "vectors": "w2v"}]}
    (d / "cfg.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_compare_config(d / "cfg.yaml")
    assert cfg.models[1].vectors == str(d / "w2v")
    rep = run_compare(cfg, progress=False)
    assert rep.n_run == 2 and not rep.failures
    row = next(r for r in read_results(d / "out" / "results.jsonl") if r["method"] == "w2v")
    assert row["test"]["accuracy"] == 1.0 and row["params"]["width"] == 16


def test_vectors_logreg_errors(setup, tmp_path):
    d = setup
    raw = {"out_dir": str(tmp_path / "o"), "tasks": ["rotten-tomatoes"], "train_sizes": [10], "seeds": [0],
           "models": ["vectors-logreg"]}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="vectors-logreg needs its word vectors"):
        load_compare_config(tmp_path / "a.yaml")
    raw["models"] = [{"baseline": "tfidf-logreg", "vectors": str(d / "w2v")}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="vectors .* goes with baseline vectors-logreg"):
        load_compare_config(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="give the method's vectors"):
        run_baseline("vectors-logreg", _task(d), vectors=None)


def _task(d):
    from transferlab.finetune.tasks import load_files

    return load_files(str(d / "train.jsonl"), str(d / "validation.jsonl"), str(d / "test.jsonl"))
