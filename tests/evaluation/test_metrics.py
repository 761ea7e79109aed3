import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from transferlab.errors import ConfigError, DataError
from transferlab.evaluation.metrics import (
    bio_chunks,
    entity_scores,
    higher_is_better,
    mean_std,
    normalize_answer,
    perplexity,
)
from transferlab.finetune.metrics import compute_metrics, primary_metric


def test_classification_hand_computed():
    pred = [0, 1, 1, 0, 1, 2]
    gold = [0, 1, 0, 0, 1, 1]
    m = compute_metrics("classification", pred, gold)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class F1: c0: p=2/2 r=2/3 -> 0.8; c1: p=2/3 r=2/3 -> 2/3; c2: p=0 r=0 (no gold) -> 0
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(gold, pred))
    assert set(m) == {"accuracy", "macro_f1", "mcc"}


def test_classification_labels_include_unpredicted_classes():
    gold = ["pos", "pos", "neg", "neg"]
    pred = ["pos", "pos", "pos", "pos"]  # majority-style predictor
    m = compute_metrics("classification", pred, gold, labels=["neg", "pos", "neutral"])
    assert m["accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx((0 + 2 / 3 + 0) / 3)
    assert m["mcc"] == 0.0  # constant prediction: no correlation, not NaN
    two = compute_metrics("classification", pred, gold)
    assert two["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))


def test_classification_numpy_scalars_are_same_class():
    m = compute_metrics("pair-classification", list(np.array([1, 0, 1])), [1, 0, 1])
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}


def test_regression():
    p = [1.0, 2.0, 3.0, 4.0]
    r = [2.0, 4.0, 6.0, 9.0]
    m = compute_metrics("regression", p, r)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef(p, r)[0, 1])
    assert m["pearson"] < 1.0
    assert m["mse"] == pytest.approx((1 + 4 + 9 + 25) / 4)
    const = compute_metrics("regression", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert const["pearson"] == 0.0 and const["spearman"] == 0.0
    assert const["mse"] == pytest.approx((0 + 1 + 4) / 3)


def test_bio_chunks_edge_cases():
    # I- without B- starts an entity (conlleval)
    assert bio_chunks(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 3)]
    # adjacent entities of different types
    assert bio_chunks(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]
    assert bio_chunks(["B-PER", "B-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]
    # two adjacent entities of the same type
    assert bio_chunks(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]
    # entity running to the end; empty and all-O
    assert bio_chunks(["O", "B-ORG", "I-ORG"]) == [("ORG", 1, 3)]
    assert bio_chunks([]) == [] and bio_chunks(["O", "O"]) == []
    # types containing hyphens survive
    assert bio_chunks(["B-geo-loc", "I-geo-loc"]) == [("geo-loc", 0, 2)]
    # IOBES
    assert bio_chunks(["S-PER", "B-LOC", "E-LOC", "S-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]


def test_tagging_entity_f1_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "O"]]
    # gold: PER(0,2) LOC(3,4) ORG(1,3); pred: PER(0,2) ORG(3,4) ORG(1,2) -> 1 correct
    m = compute_metrics("tagging", pred, gold)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["token_accuracy"] == pytest.approx(5 / 7)
    per = entity_scores(pred, gold)
    assert per["PER"]["f1"] == 1.0 and per["LOC"]["recall"] == 0.0 and per["ORG"]["support"] == 1.0
    # I- without B- in the prediction matches a gold B-I entity of the same span
    assert compute_metrics("tagging", [["I-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == 1.0
    # no entities anywhere: 0, not a division error
    assert compute_metrics("tagging", [["O"]], [["O"]])["f1"] == 0.0


def test_tagging_length_mismatch():
    with pytest.raises(DataError, match="sentence 0"):
        compute_metrics("tagging", [["O", "O"]], [["O"]])


def test_qa_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    m = compute_metrics("qa", ["the Eiffel tower", "Paris France", "blue"], [["Eiffel Tower", "tower"], "Paris", "red"])
    assert m["exact_match"] == pytest.approx(1 / 3)
    # F1: 1.0 ; "paris france" vs "paris": p=1/2 r=1 -> 2/3 ; 0
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_rouge():
    m = compute_metrics("seq2seq", ["the cat sat on the mat"], ["the cat sat on the mat"])
    assert m == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    m = compute_metrics("seq2seq", ["the cat sat", "dogs bark"], ["the cat sat on", "cats meow"])
    # ex1: r1 p=3/3 r=3/4 -> 6/7; r2 2/2, 2/3 -> 0.8; rL = r1; ex2: all zero
    assert m["rouge1"] == pytest.approx(6 / 7 / 2)
    assert m["rouge2"] == pytest.approx(0.8 / 2)
    assert m["rougeL"] == pytest.approx(6 / 7 / 2)


def test_perplexity_and_helpers():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(1e4) == float("inf")
    assert primary_metric("classification") == "accuracy"
    assert primary_metric("regression") == "pearson"
    assert primary_metric("tagging") == "f1"
    assert primary_metric("qa") == "f1"
    assert primary_metric("seq2seq") == "rougeL"
    assert not higher_is_better("mse") and higher_is_better("accuracy")
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_errors():
    with pytest.raises(ConfigError, match="unknown task type"):
        compute_metrics("ranking", [1], [1])
    with pytest.raises(ConfigError):
        primary_metric("ranking")
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        compute_metrics("classification", [1, 0], [1])
    with pytest.raises(DataError, match="no examples"):
        compute_metrics("classification", [], [])


def test_metrics_come_from_the_task_type_registry():
    """A task type registered in place is scored and ranked without any edit to evaluation."""
    from transferlab.finetune.task_types import TASK_TYPES, Classification, register_task_type

    class Hits(Classification):
        name = "toy-hits"
        primary_metric = "hits"

        @classmethod
        def metrics(cls, predictions, references, labels):
            return {"hits": sum(p == r for p, r in zip(predictions, references)) / len(references)}

    register_task_type(Hits)
    try:
        assert compute_metrics("toy-hits", ["a", "b"], ["a", "c"]) == {"hits": 0.5}
        assert primary_metric("toy-hits") == "hits"
    finally:
        TASK_TYPES.pop("toy-hits", None)
    assert primary_metric("language-modeling") == "perplexity"
