"""Task metrics: the scorers each task type calls (dispatch by task type:
:func:`transferlab.finetune.metrics.compute_metrics`).

Every score is a plain ``float`` on a 0-1 scale (not percent), so result rows are JSON and a
table can average them across seeds. Well-kept implementations are used where they exist:

* classification / pair-classification: accuracy, macro-F1 and Matthews correlation from
  scikit-learn;
* regression: Pearson and Spearman from SciPy, mean squared error;
* tagging: entity-level precision / recall / F1 over BIO chunks with the chunking rules of the
  CoNLL-2000 ``conlleval`` script (written out below: ~30 lines, and ``seqeval`` is not a
  dependency we can install offline), plus token accuracy;
* qa: exact match and token F1 after SQuAD v1.1 answer normalisation (lower case, strip
  punctuation, articles and extra white space), max over the gold answers of each question;
* seq2seq: ROUGE-1/2/L F-measures from Google's ``rouge-score`` package (Porter stemming on,
  as in the summarisation literature), averaged over examples;
* language modelling: :func:`perplexity` of a mean negative log-likelihood (nats per token).
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Hashable, Iterable, Sequence

import numpy as np

from ..errors import DataError

#: the pre-training rows of a results log: not a fine-tuning task type, ranked by perplexity
LANGUAGE_MODELING = "language-modeling"
#: metrics where a smaller value is better (everything else: larger is better)
LOWER_IS_BETTER = frozenset({"mse", "perplexity", "loss"})


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (False for mse, perplexity, loss)."""
    return metric not in LOWER_IS_BETTER


# ------------------------------------------------------------------------------ classification
def classification_metrics(
    predictions: Sequence[Hashable], references: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> dict[str, float]:
    """Accuracy, macro-F1 (over ``labels`` if given) and Matthews correlation (multi-class).

    A class that is never predicted gets F1 0 (not a warning), which is what makes macro-F1 of a
    majority-class predictor low on an imbalanced task.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y_true, y_pred = _as_labels(references), _as_labels(predictions)
    lab = None if labels is None else list(labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=lab, average="macro", zero_division=0)),
        # MCC is 0 (not NaN) when one side is constant: sklearn handles that case itself.
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
    }


def _as_labels(xs: Sequence[Hashable]) -> list[Hashable]:
    # numpy / torch scalars -> Python values, so 1 and np.int64(1) are the same class
    return [x.item() if hasattr(x, "item") else x for x in xs]


# ------------------------------------------------------------------------------ regression
def regression_metrics(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Pearson r, Spearman rho and mean squared error.

    A constant prediction (or reference) has no defined correlation; it is reported as 0.0 so
    averages over seeds stay finite (SciPy would return NaN with a warning).
    """
    from scipy.stats import pearsonr, spearmanr

    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    r = np.asarray(references, dtype=np.float64).reshape(-1)
    constant = len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(p, r)[0]),
        "spearman": 0.0 if constant else float(spearmanr(p, r)[0]),
        "mse": float(np.mean((p - r) ** 2)),
    }


# ------------------------------------------------------------------------------ tagging
def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``; a bare ``"PER"`` counts as I-PER."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_" and tag[0] in "BIESO":
        return tag[0], tag[2:]
    return "I", tag


def bio_chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` of one BIO tag sequence, conlleval-style.

    The rules are those of the CoNLL ``conlleval`` script (and ``seqeval``'s default mode): a
    chunk starts at ``B-X``, and also at an ``I-X`` that does not continue a chunk of type X
    (after ``O`` or after a different type), so "I- without B-" is an entity, not an error;
    ``B-X B-X`` are two entities; ``B-X I-Y`` are two entities of different types.

    Args:
        tags: tags such as ``["B-PER", "I-PER", "O"]`` (IOBES ``E-``/``S-`` are read too).

    Returns:
        The chunks in order of appearance.
    """
    chunks: list[tuple[str, int, int]] = []
    start, cur = -1, ""
    prev_prefix = "O"
    for i, tag in enumerate(list(tags) + ["O"]):  # sentinel closes a chunk at the end
        prefix, typ = _split_tag(tag)
        # does a chunk end before token i?
        if cur and (
            prefix in ("O", "B", "S") or typ != cur or prev_prefix in ("E", "S")
        ):
            chunks.append((cur, start, i))
            cur = ""
        # does a chunk start at token i?
        if prefix != "O" and not cur:
            start, cur = i, typ
        prev_prefix = prefix
    return chunks


def tagging_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 (exact span and type) and token accuracy.

    Args:
        predictions: one list of predicted tags per sentence.
        references: one list of gold tags per sentence, the same lengths as ``predictions``.

    Returns:
        ``precision``, ``recall``, ``f1`` over entities (0 when there are none to find or none
        found) and ``token_accuracy``; see :func:`entity_scores` for per-type figures.
    """
    return entity_scores(predictions, references)["_total"]


def entity_scores(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Per entity type ``{type: {precision, recall, f1, support}}`` plus ``"_total"`` (micro).

    ``_total`` also carries ``token_accuracy``.
    """
    tp: collections.Counter[str] = collections.Counter()
    n_pred: collections.Counter[str] = collections.Counter()
    n_gold: collections.Counter[str] = collections.Counter()
    correct_tokens = n_tokens = 0
    for k, (p, g) in enumerate(zip(predictions, references)):
        p, g = list(p), list(g)
        if len(p) != len(g):
            raise DataError(f"tagging metrics: sentence {k} has {len(p)} predicted tags but {len(g)} gold tags")
        pc, gc = set(bio_chunks(p)), set(bio_chunks(g))
        for c in pc & gc:
            tp[c[0]] += 1
        for c in pc:
            n_pred[c[0]] += 1
        for c in gc:
            n_gold[c[0]] += 1
        correct_tokens += sum(a == b for a, b in zip(p, g))
        n_tokens += len(g)

    def prf(t: int, np_: int, ng: int) -> dict[str, float]:
        prec = t / np_ if np_ else 0.0
        rec = t / ng if ng else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"precision": prec, "recall": rec, "f1": f1}

    out: dict[str, dict[str, float]] = {}
    for typ in sorted(set(n_pred) | set(n_gold)):
        out[typ] = {**prf(tp[typ], n_pred[typ], n_gold[typ]), "support": float(n_gold[typ])}
    out["_total"] = {
        **prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())),
        "token_accuracy": correct_tokens / n_tokens if n_tokens else 0.0,
    }
    return out


# ------------------------------------------------------------------------------ QA
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:  # SQuAD v2 convention: both empty -> 1, one empty -> 0
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def qa_metrics(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1, each the max over a question's gold answers, averaged.

    Args:
        predictions: predicted answer strings.
        references: a gold answer string or a list of acceptable answers per question.

    Returns:
        ``{"exact_match": ..., "f1": ...}`` on a 0-1 scale.
    """
    em = f1 = 0.0
    for pred, gold in zip(predictions, references):
        golds = [gold] if isinstance(gold, str) else list(gold)
        if not golds:
            raise DataError("qa metrics: a question has no gold answer")
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(pred, g) for g in golds)
    n = len(predictions)
    return {"exact_match": em / n, "f1": f1 / n}


# ------------------------------------------------------------------------------ seq2seq
def rouge_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (``rouge-score``, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    tot = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        s = scorer.score(str(ref), str(pred))  # score(target, prediction)
        for k in tot:
            tot[k] += s[k].fmeasure
    return {k: v / len(predictions) for k, v in tot.items()}


# ------------------------------------------------------------------------------ LM
def perplexity(mean_nll: float) -> float:
    """``exp(mean negative log-likelihood)`` in nats per token; ``inf`` when it overflows."""
    if math.isnan(mean_nll):
        return float("nan")
    return math.exp(mean_nll) if mean_nll < 709.0 else float("inf")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
