"""Fine-tuning: tasks, task types, the fine-tune loop, evaluate and predict, frozen features.

```
from transferlab.finetune import FinetuneConfig, finetune, evaluate, predict
res = finetune(FinetuneConfig(model="builtin:minilm", task="imdb", train_size=1000, epochs=3,
                              out_dir="runs/imdb-minilm"))
res.validation, res.test          # {"accuracy": ..., "macro_f1": ..., "mcc": ...}
evaluate("runs/imdb-minilm")      # test split of the task it was fine-tuned on
predict("runs/imdb-minilm", ["A wonderful film.", "Dull."])
```

* :mod:`.tasks` — task data: built-in and derived tasks, CSV/TSV/JSONL/CoNLL readers, type
  inference, stratified subsampling, clear errors naming file and line;
* :mod:`.task_types` — one module per task type (file rows, inputs, head, loss, predictions,
  metrics) and their registry (:func:`~.task_types.register_task_type`);
* :mod:`.inputs` — special-token layout, padding and length-grouped batching;
* :mod:`.loop` — ``finetune``; :mod:`.inference` — ``evaluate`` / ``predict`` / ``load_finetuned``;
  :mod:`.scoring` — the scoring core; :mod:`.checkpoints` — resumable checkpoints;
* :mod:`.config` — :class:`FinetuneConfig`, :class:`TaskSpec` (``task.json``),
  :class:`FinetuneResult`;
* :mod:`.features` — frozen features of any layer or a scalar mix (:class:`~.features.FeaturesConfig`);
  :mod:`.probes` — linear probes and contextual neighbours on them.
"""

from __future__ import annotations

from .config import DType, FinetuneConfig, FinetuneResult, Schedule, TaskSpec
from .inference import evaluate, load_finetuned, predict
from .loop import finetune, load_task_data
from .task_types import TaskType, register_task_type
from .tasks import TASK_TYPES, Columns, TaskData, list_tasks, load_builtin, load_files, read_examples, subsample

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TaskSpec",
    "TaskType",
    "Schedule",
    "DType",
    "finetune",
    "evaluate",
    "predict",
    "load_finetuned",
    "load_task_data",
    "TASK_TYPES",
    "register_task_type",
    "Columns",
    "TaskData",
    "list_tasks",
    "load_builtin",
    "load_files",
    "read_examples",
    "subsample",
]
