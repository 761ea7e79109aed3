"""Honest baselines: what a pre-trained model has to beat.

* ``majority`` — the most frequent training label (classification), the training mean
  (regression), or for tagging each word's most frequent training tag (``O`` for unseen words:
  a unigram tagger, in the spirit of the CoNLL-2003 baseline that tags entities seen in training);
* ``lead`` — seq2seq only: the first words of the source, as many as the median training target
  (the "lead" baseline of summarisation and headline generation);
* ``vectors-logreg`` — the bag-of-vectors classifier: the mean of a text's word vectors (a
  ``word2vec`` model folder, or a word2vec text file, named by the method's ``vectors``),
  standardised, then logistic regression with C picked on validation as for TF-IDF;
* ``tfidf-logreg`` / ``tfidf-svm`` — TF-IDF of word 1-2 grams and character 2-5 grams (within
  word boundaries), joined by a scikit-learn ``FeatureUnion``, then logistic regression or a
  linear SVM, with the inverse regularisation strength C picked on the validation split from a
  small grid. Sentence pairs are joined with a separator token. The vectoriser is fitted once on
  the training texts; only the classifier is refitted per C.

The from-scratch transformer baseline (same architecture, no pre-training) is a fine-tuning run
with ``from_scratch=True``; :mod:`transferlab.experiments.grid` schedules it.

Every baseline sees exactly the training subset fine-tuning sees for the same seed and size
(:func:`transferlab.finetune.tasks.subsample`).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..evaluation.metrics import higher_is_better
from ..finetune.metrics import compute_metrics, primary_metric

if TYPE_CHECKING:  # annotations only: the task types load torch
    from ..finetune.task_types import TaskType

BASELINES = ("majority", "lead", "tfidf-logreg", "tfidf-svm", "vectors-logreg")
#: baselines that read a word-vector model (the method's ``vectors``)
VECTOR_BASELINES = ("vectors-logreg",)
#: C grids per classifier (log-spaced; SVMs want smaller C than logistic regression)
DEFAULT_C_GRID = {"tfidf-logreg": (0.1, 1.0, 10.0, 100.0), "tfidf-svm": (0.01, 0.1, 1.0, 10.0),
                  "vectors-logreg": (0.01, 0.1, 1.0, 10.0)}
PAIR_SEP = " [SEP] "


@dataclass
class BaselineResult:
    """Scores of one baseline run (the same shape as a fine-tuning result)."""

    method: str
    validation: dict[str, float]
    test: dict[str, float]
    train_seconds: float  #: fitting, including feature extraction and the C search
    n_train: int
    params: dict[str, Any] = field(default_factory=dict)  #: e.g. the chosen C, feature count
    eval_seconds: float = 0.0
    cost: dict[str, Any] = field(default_factory=dict)  #: the tracker's report, when one was given


def subsample(examples: Sequence[dict[str, Any]], n: int | None, seed: int, task_type: str) -> list[dict[str, Any]]:
    """The seeded training subset every method of a comparison shares (see finetune.tasks)."""
    from ..finetune.tasks import subsample as _subsample

    return _subsample(examples, n, seed, task_type)


def _task_type(name: str) -> "type[TaskType]":
    """The registered task type ``name`` (a one-line ConfigError naming the known ones otherwise)."""
    from ..finetune.task_types import get_task_type

    return get_task_type(name)


def _fitting_types(method: str) -> str:
    """The registered task types whose ``baselines`` list ``method``, in words ("a, b or c")."""
    from ..finetune.task_types import TASK_TYPES

    fit = [n for n, t in TASK_TYPES.items() if method in t.baselines]
    if len(fit) < 2:
        return fit[0] if fit else "no registered"
    return ", ".join(fit[:-1]) + " or " + fit[-1]


def _texts(exs: Sequence[dict[str, Any]]) -> list[str]:
    return [e["text"] + (PAIR_SEP + e["pair"] if e.get("pair") else "") for e in exs]


# ------------------------------------------------------------------------------ estimators
class MajorityBaseline:
    """The task type's trivial predictor (``TaskType.majority``): the most frequent training
    label, the training mean, each word's most frequent tag, ...

    Args:
        task_type: a registered task type whose ``baselines`` list ``majority``.
    """

    def __init__(self, task_type: str) -> None:
        tt = _task_type(task_type)
        if "majority" not in tt.baselines:
            raise ConfigError(f"the majority baseline needs a {_fitting_types('majority')} task, not {task_type}"
                              + (f"; use the {' or '.join(tt.baselines)} baseline for {task_type}" if tt.baselines else ""))
        self.task_type, self._type = task_type, tt

    def fit(self, examples: Sequence[dict[str, Any]]) -> "MajorityBaseline":
        """Fit on training examples; returns ``self``."""
        self._predict = self._type.majority(examples)
        return self

    def predict(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        """One plain prediction per example (the form the task type's metrics take)."""
        return self._predict(examples)


class LeadBaseline:
    """Text to text (``source`` -> ``target``): the first ``n`` words of the source, ``n`` = the
    median training target length."""

    def fit(self, examples: Sequence[dict[str, Any]]) -> "LeadBaseline":
        self.n_words = max(1, int(statistics.median(len(e["target"].split()) for e in examples)))
        return self

    def predict(self, examples: Sequence[dict[str, Any]]) -> list[str]:
        return [" ".join(e["source"].split()[: self.n_words]) for e in examples]


def tfidf_features(max_word_features: int = 200_000, max_char_features: int = 300_000) -> Any:
    """Word 1-2 gram + char 2-5 gram (``char_wb``) TF-IDF, sublinear tf, as one FeatureUnion."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode",
                                 max_features=max_word_features, dtype=np.float32)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                 strip_accents="unicode", max_features=max_char_features, dtype=np.float32)),
    ])


class TfidfBaseline:
    """TF-IDF features + logistic regression or linear SVM, C tuned on validation.

    Args:
        classifier: ``logreg`` or ``svm``.
        c_grid: C values tried; the best validation score of the task's primary metric wins
            (ties: the smaller C, i.e. the stronger regularisation). Logistic regression
            uses saga, warm-started along the grid; the SVM liblinear's dual solver.
        task_type: a registered task type whose ``baselines`` list ``tfidf-{classifier}``
            (one class label per text or pair; default: the single-text classification task).
        seed: for the solvers that use randomness.
    """

    def __init__(self, classifier: str = "logreg", c_grid: Sequence[float] | None = None,
                 task_type: str | None = None, seed: int = 0) -> None:
        if classifier not in ("logreg", "svm"):
            raise ConfigError(f"classifier {classifier!r}: expected logreg or svm")
        if task_type is None:
            from ..finetune.task_types import Classification

            task_type = Classification.name
        if f"tfidf-{classifier}" not in _task_type(task_type).baselines:
            raise ConfigError(f"TF-IDF baselines need a {_fitting_types(f'tfidf-{classifier}')} task, not {task_type}")
        self.classifier = classifier
        self.c_grid = tuple(c_grid or DEFAULT_C_GRID[f"tfidf-{classifier}"])
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ConfigError(f"c_grid must be positive numbers, got {list(self.c_grid)}")
        self.task_type = task_type
        self.seed = seed
        self.search: list[dict[str, float]] = []

    def _make(self, c: float) -> Any:
        if self.classifier == "svm":
            from sklearn.svm import LinearSVC

            return LinearSVC(C=c, random_state=self.seed, max_iter=5000)
        from sklearn.linear_model import LogisticRegression

        # saga handles sparse, high-dimensional TF-IDF and multinomial losses well; warm starts
        # along the increasing C grid cut the search time about 2x (lbfgs: ~30 s per C on 1000
        # BBC articles with 330k features, saga: 2-10 s). tol 1e-3 is ample for picking C.
        return LogisticRegression(C=c, solver="saga", tol=1e-3, max_iter=1000, warm_start=True,
                                  random_state=self.seed)

    def fit(self, train: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]],
            labels: Sequence[str] | None = None) -> "TfidfBaseline":
        y_tr = [e["label"] for e in train]
        y_va = [e["label"] for e in validation]
        if len(set(y_tr)) < 2:
            raise ConfigError(f"TF-IDF baseline: the {len(y_tr)} training examples have one class only; use more examples")
        if not validation:
            raise DataError("TF-IDF baseline: the validation split is empty (it picks C)")
        self.features = tfidf_features()
        try:
            x_tr = self.features.fit_transform(_texts(train))  # (N, F) sparse
        except ValueError as e:  # sklearn: "empty vocabulary; perhaps the documents only contain stop words"
            raise DataError(f"TF-IDF baseline: no features in the training texts ({e})") from None
        x_va = self.features.transform(_texts(validation))
        metric = primary_metric(self.task_type)
        sign = 1.0 if higher_is_better(metric) else -1.0
        best: tuple[float, float, Any] | None = None
        clf = None
        for c in sorted(self.c_grid):
            if clf is None or self.classifier == "svm":
                clf = self._make(c)
            else:  # continue from the previous C's solution
                clf.set_params(C=c)
            clf.fit(x_tr, y_tr)
            score = compute_metrics(self.task_type, clf.predict(x_va), y_va, labels)[metric]
            self.search.append({"C": c, metric: score})
            if best is None or sign * score > sign * best[0]:
                best = (score, c, copy.deepcopy(clf))
        assert best is not None
        self.best_c, self.model = best[1], best[2]
        self.n_features = int(x_tr.shape[1])
        return self

    def predict(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return list(self.model.predict(self.features.transform(_texts(examples))))


class VectorsBaseline:
    """Mean of the text's word vectors -> standardised -> logistic regression (C on validation).

    Args:
        vectors: a ``word2vec`` model folder (its tokenizer splits the texts) or a word2vec text
            file (texts split into lower-cased words and punctuation).
        c_grid: C values tried (default ``DEFAULT_C_GRID["vectors-logreg"]``).
        task_type: a task type with one class label per text or pair (those TF-IDF serves).
        seed: the solver's seed.
    """

    def __init__(self, vectors: str, c_grid: Sequence[float] | None = None, task_type: str | None = None,
                 seed: int = 0) -> None:
        from pathlib import Path

        if task_type is None:
            from ..finetune.task_types import Classification

            task_type = Classification.name
        if "tfidf-logreg" not in _task_type(task_type).baselines:
            raise ConfigError(f"vectors-logreg needs a {_fitting_types('tfidf-logreg')} task, not {task_type}")
        if not vectors:
            raise ConfigError("vectors-logreg: give the method's vectors (a word2vec model folder or text file)")
        from ..models.init_embeddings import load_vectors

        self.index, vecs, special = load_vectors(vectors)
        self.vectors = vecs.numpy()  # (N, d)
        self.tokenizer = None
        if Path(vectors).is_dir():
            from ..tokenizer import Tokenizer

            self.tokenizer = Tokenizer.from_pretrained(vectors)
        self.special = special
        self.c_grid = tuple(c_grid or DEFAULT_C_GRID["vectors-logreg"])
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ConfigError(f"c_grid must be positive numbers, got {list(self.c_grid)}")
        self.task_type, self.seed = task_type, seed
        self.search: list[dict[str, float]] = []

    def features(self, examples: Sequence[dict[str, Any]]) -> np.ndarray:
        """(N, d) mean word vector per text (zeros for a text with no known token)."""
        import re

        texts = _texts(examples)
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        if self.tokenizer is not None:
            rows = [[i for i in ids if self.tokenizer.convert_ids_to_tokens(i) not in self.special]
                    for ids in self.tokenizer.encode_batch(texts)]
            rows = [[i for i in r if i < len(self.vectors)] for r in rows]
        else:
            rows = [[self.index[w] for w in re.findall(r"\w+|[^\w\s]", t.lower()) if w in self.index] for t in texts]
        for n, r in enumerate(rows):
            if r:
                out[n] = self.vectors[r].mean(0)
        return out

    def fit(self, train: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]],
            labels: Sequence[str] | None = None) -> "VectorsBaseline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        y_tr = [e["label"] for e in train]
        y_va = [e["label"] for e in validation]
        if len(set(y_tr)) < 2:
            raise ConfigError(f"vectors-logreg: the {len(y_tr)} training examples have one class only; use more examples")
        if not validation:
            raise DataError("vectors-logreg: the validation split is empty (it picks C)")
        self.scaler = StandardScaler()
        x_tr = self.scaler.fit_transform(self.features(train))  # (N, d)
        x_va = self.scaler.transform(self.features(validation))
        metric = primary_metric(self.task_type)
        sign = 1.0 if higher_is_better(metric) else -1.0
        best: tuple[float, float, Any] | None = None
        for c in sorted(self.c_grid):
            clf = LogisticRegression(C=c, max_iter=2000, random_state=self.seed).fit(x_tr, y_tr)
            score = compute_metrics(self.task_type, clf.predict(x_va), y_va, labels)[metric]
            self.search.append({"C": c, metric: score})
            if best is None or sign * score > sign * best[0]:
                best = (score, c, clf)
        assert best is not None
        self.best_c, self.model = best[1], best[2]
        return self

    def predict(self, examples: Sequence[dict[str, Any]]) -> list[Any]:
        return list(self.model.predict(self.scaler.transform(self.features(examples))))


# ------------------------------------------------------------------------------ one run
def _task_data(task: Any) -> Any:
    if isinstance(task, str):
        from ..finetune.tasks import load_builtin

        return load_builtin(task)
    return task


def run_baseline(
    method: str,
    task: Any,
    train_size: int | None = None,
    seed: int = 0,
    eval_on_test: bool = True,
    c_grid: Sequence[float] | None = None,
    tracker: Any = None,
    vectors: str | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
) -> BaselineResult:
    """Fit one baseline on a seeded training subset and score it on validation (and test).

    Args:
        method: ``majority``, ``lead``, ``tfidf-logreg``, ``tfidf-svm`` or ``vectors-logreg``.
        task: a built-in task name or a :class:`~transferlab.finetune.tasks.TaskData`.
        train_size: labelled examples to train on (``None`` = all), subsampled by ``seed``
            exactly as fine-tuning subsamples.
        seed: subsample (and solver) seed.
        eval_on_test: also score the test split.
        c_grid: C values for the TF-IDF baselines (default :data:`DEFAULT_C_GRID`).
        tracker: a started :class:`~transferlab.cost.CostTracker`; it is stopped when fitting
            (feature extraction and the C search on validation) ends, so the final scoring is
            not billed, as fine-tuning does not bill its test evaluation.
        vectors: ``vectors-logreg``: a word2vec model folder or word2vec text file.
        validation_size, test_size: score on these fixed subsets of validation / test (``None`` =
            all), the ones fine-tuning draws with the same sizes, so every row of a comparison is
            scored on the same examples.

    Returns:
        :class:`BaselineResult` with metric dicts from :func:`compute_metrics`.
    """
    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; expected one of: {', '.join(BASELINES)}")
    data = _task_data(task)
    kind = data.task_type
    tt = _task_type(kind)
    train = subsample(data.train, train_size, seed, kind)
    if not train:
        raise ConfigError(f"task {data.name!r} has no training examples")
    # fine-tuning's subsets (finetune/loop.py: seed 0, whatever the cell's seed)
    data = dataclasses.replace(data, validation=subsample(data.validation, validation_size, 0, kind),
                               test=subsample(data.test, test_size, 0, kind) if data.test else data.test)
    labels = list(data.labels) if tt.has_classes else None
    t0 = time.perf_counter()
    params: dict[str, Any] = {}
    if method == "majority":
        est: Any = MajorityBaseline(kind).fit(train)
    elif method == "lead":
        if "lead" not in tt.baselines:
            raise ConfigError(f"the lead baseline is for {_fitting_types('lead')} tasks, {data.name!r} is {kind}")
        est = LeadBaseline().fit(train)
        params["n_words"] = est.n_words
    elif method == "vectors-logreg":
        est = VectorsBaseline(vectors or "", c_grid, kind, seed).fit(train, data.validation, labels)
        params.update(C=est.best_c, width=int(est.vectors.shape[1]), search=est.search)
    else:
        est = TfidfBaseline(method.split("-")[1], c_grid, kind, seed).fit(train, data.validation, labels)
        params.update(C=est.best_c, n_features=est.n_features, search=est.search)
    train_seconds = time.perf_counter() - t0
    cost = tracker.stop() if tracker is not None else {}
    t0 = time.perf_counter()
    val = compute_metrics(kind, est.predict(data.validation), [tt.reference(e) for e in data.validation], labels)
    test: dict[str, float] = {}
    if eval_on_test and data.test:
        test = compute_metrics(kind, est.predict(data.test), [tt.reference(e) for e in data.test], labels)
    return BaselineResult(method, val, test, train_seconds, len(train), params, time.perf_counter() - t0, cost)
