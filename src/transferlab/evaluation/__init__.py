"""Evaluation: task metrics and in-context evaluation.

* :mod:`.metrics` -- the scorers (accuracy/F1/MCC, Pearson, BIO entity F1, SQuAD EM/F1, ROUGE),
  :func:`perplexity`; dispatch by task type is :mod:`transferlab.finetune.metrics`
* :mod:`.icl` -- in-context (zero-, one-, few-shot) classification with a decoder, no training

Comparisons, baselines, tables, plots, studies and reports live one level up, in
:mod:`transferlab.experiments` (they run fine-tuning; evaluation stays below it).

Heavy dependencies (torch, scikit-learn) are imported inside the functions that use them, so
importing this package is cheap.
"""

from .metrics import perplexity

__all__ = ["perplexity"]
