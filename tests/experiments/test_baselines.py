import pytest

from transferlab.errors import ConfigError
from transferlab.experiments.baselines import (
    LeadBaseline,
    MajorityBaseline,
    TfidfBaseline,
    run_baseline,
    subsample,
    tfidf_features,
)
from transferlab.finetune.tasks import TaskData
from transferlab.finetune.tasks import subsample as finetune_subsample

POS = ["a wonderful film, loved it", "great acting and a great story", "wonderful, moving and funny",
       "I loved every minute", "great fun, wonderful cast"]
NEG = ["a terrible film, hated it", "boring plot and awful acting", "awful, dull and too long",
       "I hated every minute", "terrible script, boring cast"]


def _split(n, offset=0):
    out = []
    for i in range(n):
        y = (i + offset) % 2
        src = POS if y else NEG
        out.append({"text": f"{src[(i // 2) % 5]} #{i + offset}", "label": "pos" if y else "neg"})
    return out


def _task():
    return TaskData("toy", "classification", ["neg", "pos"], _split(40), _split(20, 100), _split(20, 200))


def test_majority_classification_regression_tagging():
    exs = [{"label": "b"}, {"label": "a"}, {"label": "b"}, {"label": "a"}, {"label": "c"}]
    # tie between a and b (2 each) is broken by name, so the result never depends on order
    assert MajorityBaseline("classification").fit(exs).predict([{}, {}]) == ["a", "a"]
    assert MajorityBaseline("classification").fit(exs[:3]).predict([{}]) == ["b"]
    assert MajorityBaseline("regression").fit([{"label": 1.0}, {"label": 4.0}]).predict([{}]) == [2.5]
    tag = MajorityBaseline("tagging").fit([
        {"tokens": ["Paris", "is", "big"], "tags": ["B-LOC", "O", "O"]},
        {"tokens": ["paris", "Hilton"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["Paris"], "tags": ["B-LOC"]},
    ])
    assert tag.predict([{"tokens": ["PARIS", "Hilton", "unknown"]}]) == [["B-LOC", "I-PER", "O"]]
    with pytest.raises(ConfigError, match="lead baseline for seq2seq"):
        MajorityBaseline("seq2seq")


def test_lead_uses_median_target_length():
    lead = LeadBaseline().fit([{"target": "a b"}, {"target": "a b c"}, {"target": "a b c d e f"}])
    assert lead.n_words == 3
    assert lead.predict([{"source": "one two three four five"}]) == ["one two three"]


def test_tfidf_features_union_of_word_and_char_ngrams():
    fu = tfidf_features()
    x = fu.fit_transform(["good movie", "bad movie"])
    word = fu.transformer_list[0][1].vocabulary_
    char = fu.transformer_list[1][1].vocabulary_
    assert "good movie" in word and "movie" in word  # word 1-2 grams
    assert " go" in char and "movi" in char and "movie" in char  # char_wb 2-5 grams
    assert max(len(k) for k in char) == 5
    assert x.shape == (2, len(word) + len(char))


@pytest.mark.parametrize("clf", ["logreg", "svm"])
def test_tfidf_learns_a_separable_task_and_tunes_c(clf):
    t = _task()
    est = TfidfBaseline(clf, c_grid=[0.01, 1.0, 100.0]).fit(t.train, t.validation, t.labels)
    assert [s["C"] for s in est.search] == [0.01, 1.0, 100.0]
    assert est.best_c in (0.01, 1.0, 100.0)
    best = max(s["accuracy"] for s in est.search)
    assert est.search[[s["C"] for s in est.search].index(est.best_c)]["accuracy"] == best
    pred = est.predict(t.test)
    assert sum(p == e["label"] for p, e in zip(pred, t.test)) / len(pred) == 1.0


def test_run_baseline_uses_the_shared_subsample_and_scores():
    t = _task()
    res = run_baseline("tfidf-logreg", t, train_size=12, seed=3)
    assert res.n_train == 12 and res.test["accuracy"] > 0.6 and set(res.validation) == {"accuracy", "macro_f1", "mcc"}
    assert res.params["C"] in (0.1, 1.0, 10.0, 100.0) and res.train_seconds > 0
    # exactly the subset fine-tuning draws for the same seed and size
    assert subsample(t.train, 12, 3, "classification") == finetune_subsample(t.train, 12, 3, "classification")
    maj = run_baseline("majority", t, train_size=None, seed=0, eval_on_test=False)
    assert maj.test == {} and maj.validation["accuracy"] == 0.5 and maj.validation["mcc"] == 0.0
    # pairs are joined into one text
    pairs = TaskData("p", "pair-classification", ["neg", "pos"],
                     [dict(e, pair="x") for e in t.train], [dict(e, pair="x") for e in t.validation], [])
    assert run_baseline("tfidf-svm", pairs, seed=0).validation["accuracy"] == 1.0


def test_baseline_errors():
    t = _task()
    with pytest.raises(ConfigError, match="unknown baseline"):
        run_baseline("bm25", t)
    with pytest.raises(ConfigError, match="lead baseline is for seq2seq"):
        run_baseline("lead", t)
    tag = TaskData("ner", "tagging", ["O"], [{"tokens": ["a"], "tags": ["O"]}], [], [])
    with pytest.raises(ConfigError, match="classification task, not tagging"):
        run_baseline("tfidf-logreg", tag)
    one_class = TaskData("one", "classification", ["pos"], [{"text": "x", "label": "pos"}] * 3,
                         [{"text": "y", "label": "pos"}], [])
    with pytest.raises(ConfigError, match="one class only"):
        run_baseline("tfidf-svm", one_class)
    with pytest.raises(ConfigError, match="positive"):
        TfidfBaseline("logreg", c_grid=[0.0])


def test_run_baseline_stops_a_cost_tracker_after_fitting():
    from transferlab.cost import CostConfig, CostTracker

    tracker = CostTracker(None, kind="baseline", config=CostConfig(track_energy=False, peak_flops=1.0),
                          device="cpu").start()
    res = run_baseline("tfidf-svm", _task(), train_size=20, seed=0, tracker=tracker)
    assert res.cost is tracker.report and res.cost["energy_kwh"] > 0 and res.cost["params_total"] == 0
    assert res.cost["wall_seconds"] >= res.train_seconds  # fitting is billed, the final scoring is not


def test_baselines_follow_the_task_types_declarations():
    """Which baselines fit a task and how the majority predicts come from its task type."""
    from transferlab.finetune.task_types import TASK_TYPES, Regression, register_task_type

    class Median(Regression):
        name = "toy-median"
        baselines = ("majority",)

        @classmethod
        def majority(cls, train):
            ys = sorted(e["label"] for e in train)
            return lambda examples: [ys[len(ys) // 2]] * len(examples)

    register_task_type(Median)
    try:
        exs = [{"text": "x", "label": float(y)} for y in (1, 2, 9)]
        t = TaskData("m", "toy-median", [], exs, exs, [])
        res = run_baseline("majority", t, eval_on_test=False)
        assert res.validation["mse"] == pytest.approx((1 + 0 + 49) / 3)
        with pytest.raises(ConfigError, match="TF-IDF baselines need a classification or pair-classification task"):
            run_baseline("tfidf-svm", t)
    finally:
        TASK_TYPES.pop("toy-median", None)


def test_baselines_are_scored_on_fine_tunings_evaluation_subsets(monkeypatch):
    """validation_size / test_size pick the same fixed subsets fine-tuning scores on (seed 0)."""
    from transferlab.experiments import baselines as B

    seen = []
    real = B.compute_metrics
    monkeypatch.setattr(B, "compute_metrics", lambda kind, p, refs, labels: seen.append(list(refs)) or real(kind, p, refs, labels))
    t = _task()
    run_baseline("majority", t, seed=5, validation_size=6, test_size=8)
    val, test = seen
    want_val = [e["label"] for e in subsample(t.validation, 6, 0, "classification")]
    want_test = [e["label"] for e in subsample(t.test, 8, 0, "classification")]
    assert (val, test) == (want_val, want_test) and len(val) == 6 and len(test) == 8
    seen.clear()
    run_baseline("majority", t, seed=5)  # no sizes: the whole splits
    assert [len(s) for s in seen] == [20, 20]
