"""Built-in corpora and tasks: fixed splits, no evaluation document in the pre-training corpus."""

from __future__ import annotations

import hashlib

import pytest

from transferlab.data import list_corpora, list_tasks, load_task, read_documents
from transferlab.data.builtin import gpt2_files, iter_corpus, minilm_dir
from transferlab.errors import DataError

# sha256(repr(test split))[:16]: the splits must never change silently (results would stop being
# comparable across runs); if a change is intended, bump BUILTIN_VERSION and these values
GOLDEN_TEST_SPLITS = {
    "imdb": "288aaa29f65189d9",
    "rotten-tomatoes": "576537f16da89dcd",
    "bbc-topic": "f86a469e88b506af",
    "bbc-headlines": "bdad2ec48f0e7b27",
    "twitter-ner": "33c6f72cb0134346",
}


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(name) for name in list_tasks()}


def test_task_sizes_and_kinds(tasks):
    assert set(tasks) == {"imdb", "rotten-tomatoes", "bbc-topic", "bbc-headlines", "twitter-ner"}
    assert {k: (len(t.test), len(t.validation)) for k, t in tasks.items() if k in ("imdb", "rotten-tomatoes", "twitter-ner")} == {
        "imdb": (2000, 1000), "rotten-tomatoes": (1000, 500), "twitter-ner": (400, 200)}
    assert len(tasks["imdb"].train) > 21000 and len(tasks["rotten-tomatoes"].train) > 7000
    bbc = tasks["bbc-topic"]
    n = sum(bbc.sizes().values())
    assert 2000 < n <= 2225 and len(bbc.test) == round(0.2 * n) and len(bbc.validation) == round(0.1 * n)
    assert tasks["imdb"].kind == "classification" and tasks["twitter-ner"].kind == "tagging"
    assert tasks["bbc-headlines"].kind == "seq2seq"
    assert bbc.labels == ["business", "entertainment", "politics", "sport", "tech"]
    assert all(t.source.get("licence") for t in tasks.values())


def test_splits_are_fixed(tasks):
    for name, want in GOLDEN_TEST_SPLITS.items():
        assert hashlib.sha256(repr(tasks[name].test).encode()).hexdigest()[:16] == want, name


def test_examples_are_clean_and_disjoint(tasks):
    for name in ("imdb", "rotten-tomatoes", "bbc-topic"):
        t = tasks[name]
        texts = {s: {e["text"] for e in t[s]} for s in ("train", "validation", "test")}
        assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
        assert not texts["validation"] & texts["test"]
        assert all(e["label"] in t.labels for s in ("train", "test") for e in t[s])
    assert not any("<br" in e["text"] for e in tasks["imdb"].train)
    labels = [e["label"] for e in tasks["imdb"].test]
    assert 900 < labels.count("positive") < 1100  # both classes, roughly balanced
    ner = tasks["twitter-ner"]
    for e in ner.train[:200]:
        assert len(e["tokens"]) == len(e["tags"]) and set(e["tags"]) <= set(ner.labels)
    assert ner.labels[0] == "O" and "B-person" in ner.labels and "I-person" in ner.labels
    # the one Latin-1 BBC file is decoded (pound sign), not mangled
    assert any("\xa315.8m" in e["source"] for s in ("train", "validation", "test") for e in tasks["bbc-headlines"][s])


def test_bbc_tasks_share_one_document_split(tasks):
    for s in ("train", "validation", "test"):
        assert [e["text"] for e in tasks["bbc-topic"][s]] == [e["source"] for e in tasks["bbc-headlines"][s]]
    assert all(e["target"] and "\n" not in e["target"] for e in tasks["bbc-headlines"].test)


def test_load_task_returns_fresh_copies():
    a = load_task("rotten-tomatoes")
    a.train[0]["label"] = "changed"
    assert load_task("rotten-tomatoes").train[0]["label"] != "changed"


def test_pretraining_corpus_excludes_evaluation_documents(tasks):
    corpus = {d.text for d in read_documents("builtin:reviews+news")}
    assert len(corpus) > 30000
    for name in ("imdb", "rotten-tomatoes", "bbc-topic"):
        for split in ("test", "validation"):
            assert not corpus & {e["text"] for e in tasks[name][split]}, (name, split)
    assert {e["text"] for e in tasks["imdb"].train} <= corpus
    assert {e["text"] for e in tasks["bbc-topic"].train} <= corpus
    news = {d.text for d in iter_corpus("builtin:news")}
    reviews = {d.text for d in iter_corpus("builtin:reviews")}
    assert news | reviews == corpus and not news & reviews


def test_ptb_has_official_splits():
    docs = list(read_documents("builtin:ptb"))
    by_split = {s: [d for d in docs if d.split == s] for s in ("train", "validation", "test")}
    lines = {s: sum(d.text.count("\n") + 1 for d in ds) for s, ds in by_split.items()}
    assert lines == {"train": 42068, "validation": 3370, "test": 3761}
    assert "<unk>" in by_split["train"][0].text
    assert len(docs) == sum(len(v) for v in by_split.values())


def test_unknown_names_and_vocab_files():
    with pytest.raises(DataError, match="unknown task"):
        load_task("sst2")
    with pytest.raises(DataError, match="unknown built-in corpus"):
        read_documents("builtin:wikipedia")
    assert "builtin:reviews+news" in list_corpora() and "builtin:ptb" in list_corpora()
    enc, merges = gpt2_files()
    assert enc.is_file() and merges.is_file()
    assert (minilm_dir() / "vocab.txt").is_file()
