"""Experiments above fine-tuning: comparison grids, baselines, tables, plots, studies, reports.

* :mod:`.config` -- the comparison file (:func:`load_compare_config`), its methods, tasks and cells
* :mod:`.grid` -- :func:`run_compare`: the resumable grid runner and its results log
* :mod:`.tables` -- mean ± std summaries as markdown / CSV, and the plots of a comparison
* :mod:`.baselines` -- majority class, lead, TF-IDF + logistic regression / linear SVM
* :mod:`.plots` -- learning curves and metric-vs-cost Pareto plots
* :mod:`.study` -- ``transferlab study``: the lecture's tables in one shared setting
* :mod:`.report` -- ``report.md`` and the self-contained ``report.html``

Dependency direction: this package imports :mod:`transferlab.finetune` and
:mod:`transferlab.evaluation`, never the reverse. Heavy dependencies (scikit-learn, matplotlib,
torch) are imported inside the functions that use them.
"""

from .baselines import BASELINES, run_baseline
from .config import load_compare_config, parse_compare_config
from .grid import run_compare

__all__ = ["BASELINES", "load_compare_config", "parse_compare_config", "run_baseline", "run_compare"]
