"""Evaluation: task metrics, baselines, multi-seed comparisons (tables, plots).

* :mod:`.metrics` -- :func:`compute_metrics`, :func:`primary_metric`, :func:`perplexity`
* :mod:`.baselines` -- majority class, TF-IDF + logistic regression / linear SVM
* :mod:`.compare` -- the ``transferlab compare`` grid runner (resumable results.jsonl)
* :mod:`.plots` -- learning curves and metric-vs-cost Pareto plots
"""

from .metrics import compute_metrics, perplexity, primary_metric

__all__ = ["compute_metrics", "perplexity", "primary_metric"]
