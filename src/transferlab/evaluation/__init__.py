"""Evaluation: task metrics and in-context evaluation.

* :mod:`.metrics` -- :func:`compute_metrics`, :func:`primary_metric`, :func:`perplexity`
* :mod:`.icl` -- in-context (zero-, one-, few-shot) classification with a decoder, no training

Comparisons, baselines, tables, plots, studies and reports live one level up, in
:mod:`transferlab.experiments` (they run fine-tuning; evaluation stays below it).

Heavy dependencies (torch, scikit-learn) are imported inside the functions that use them, so
importing this package is cheap.
"""

from .metrics import compute_metrics, perplexity, primary_metric

__all__ = ["compute_metrics", "perplexity", "primary_metric"]
