"""Evaluation: task metrics, baselines, multi-seed comparisons (tables, plots).

* :mod:`.metrics` -- :func:`compute_metrics`, :func:`primary_metric`, :func:`perplexity`
* :mod:`.baselines` -- majority class, lead, TF-IDF + logistic regression / linear SVM
* :mod:`.compare` -- the ``transferlab compare`` grid runner (resumable results.jsonl)
* :mod:`.plots` -- learning curves and metric-vs-cost Pareto plots

Heavy dependencies (scikit-learn, matplotlib, torch) are imported inside the functions that use
them, so importing this package is cheap.
"""

from .baselines import BASELINES, run_baseline
from .compare import load_compare_config, run_compare
from .metrics import compute_metrics, perplexity, primary_metric

__all__ = ["BASELINES", "compute_metrics", "load_compare_config", "perplexity", "primary_metric", "run_baseline",
           "run_compare"]
