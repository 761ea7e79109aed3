"""Using a fine-tuned folder: :func:`load_finetuned`, :func:`evaluate` and :func:`predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError, ConfigError, DataError
from .config import TaskSpec
from .scoring import _autocast, _bar, _inference
from .scoring import score as _score
from .task_types import TASK_TYPES, TaskType, build_wiring, get_task_type
from .tasks import Columns, check_labels, load_builtin, read_examples

__all__ = ["load_finetuned", "evaluate", "predict"]


def load_finetuned(model_dir: str | Path, device: str = "auto") -> tuple[Any, Any, TaskSpec, TaskType]:
    """``(model, tokenizer, spec, wiring)`` of a folder written by :func:`finetune`.

    Raises:
        CheckpointError: the folder lacks task.json, the model files or the tokenizer.
    """
    from ..interop.loading import load_pretrained

    d = Path(model_dir)
    spec = TaskSpec.load(d)
    model, tok = load_pretrained(d, device=device)  # the one loader: device first, tokenizer checked
    wiring = build_wiring(spec, tok, model.config)
    if wiring.head not in model.heads:
        raise CheckpointError(f"{d}: the model has no {wiring.head!r} head, which task.json ({spec.task_type}) needs")
    return model, tok, spec, wiring


def _eval_examples(spec: TaskSpec, task: str | None, test_file: str | Path | None, split: str,
                   columns: Columns) -> tuple[list[dict[str, Any]], str]:
    if task is not None and test_file is not None:
        raise ConfigError("evaluate: give either a task or a test file, not both")
    if test_file is not None:
        cols = Columns(columns.text or spec.columns.get("text"), columns.pair or spec.columns.get("pair"),
                       columns.label or spec.columns.get("label"))
        ex, _ = read_examples(test_file, spec.task_type, cols)
        return ex, str(test_file)
    name = task or spec.task
    if name is not None:
        data = load_builtin(name)
        if data.task_type != spec.task_type:
            raise ConfigError(f"task {name!r} is {data.task_type} but the model was fine-tuned for {spec.task_type}")
        if split not in ("train", "validation", "test"):
            raise ConfigError(f"split must be train, validation or test, got {split!r}")
        return data[split], f"{name}/{split}"
    if spec.files.get(split):
        cols = Columns(spec.columns.get("text"), spec.columns.get("pair"), spec.columns.get("label"))
        ex, _ = read_examples(spec.files[split], spec.task_type, cols)
        return ex, spec.files[split]
    raise ConfigError(f"evaluate: the model was fine-tuned on files without a {split} file; pass --test FILE")


def evaluate(
    model_dir: str | Path,
    task: str | None = None,
    test_file: str | Path | None = None,
    split: str = "test",
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    dtype: str = "auto",
    device: str = "auto",
    quiet: bool = True,
) -> dict[str, float]:
    """Score a fine-tuned folder on a task split or a labelled file.

    Args:
        model_dir: a folder written by :func:`finetune` (it holds task.json).
        task: a built-in task name; default: the one the model was fine-tuned on.
        test_file: a labelled file instead of a built-in task (columns default to task.json's).
        split: which split of the task (or which recorded file): test, validation or train.
        text_column, pair_column, label_column: override the column names of ``test_file``.
        batch_size: evaluation batch size.
        dtype: auto (bf16 where native, else fp32), bf16 or fp32.
        device: cpu, cuda or auto.
        quiet: no progress bar.

    Returns:
        ``{metric: value}`` as :func:`~transferlab.finetune.metrics.compute_metrics` gives for
        the task type (e.g. accuracy, macro_f1, mcc).

    Raises:
        CheckpointError: not a fine-tuned folder. DataError: bad data or labels the model does
        not know (names the file and line). ConfigError: no data to evaluate on.
    """
    model, tok, spec, w = load_finetuned(model_dir, device)
    examples, where = _eval_examples(spec, task, test_file, split, Columns(text_column, pair_column, label_column))
    if not examples:
        raise DataError(f"{where}: no examples to evaluate")
    check_labels(examples, spec.task_type, spec.labels, f"labels of {model_dir}/task.json")
    dev = next(model.parameters()).device
    metrics, _ = _score(w, model, examples, batch_size, _autocast(dev, dtype), quiet, "evaluate")
    return metrics


def predict(
    model_dir: str | Path,
    inputs: str | Path | Sequence[str] | Sequence[dict[str, Any]],
    batch_size: int = 64,
    dtype: str = "auto",
    device: str = "auto",
    quiet: bool = True,
    text_column: str | None = None,
    pair_column: str | None = None,
) -> list[dict[str, Any]]:
    """Predict with a fine-tuned folder.

    Args:
        model_dir: a folder written by :func:`finetune`.
        inputs: a file path (same formats as training; labels not needed), a list of texts
            (classification/regression/seq2seq sources; tagging: whitespace-tokenised), or a
            list of example dicts (``{"text", "pair"}``, ``{"tokens"}``, ``{"context",
            "question"}``, ``{"source"}``).
        batch_size, dtype, device, quiet: as in :func:`evaluate`.
        text_column, pair_column: column names of an input file (default: task.json's).

    Returns:
        One dict per input: ``prediction`` plus ``probabilities`` (classification) or
        ``entities`` (tagging).
    """
    model, tok, spec, w = load_finetuned(model_dir, device)
    examples = _predict_examples(spec, inputs, text_column, pair_column)
    dev = next(model.parameters()).device
    feats = w.encode(examples, train=False)
    bar = _bar(len(feats), "predict", quiet, leave=False)
    try:
        preds = w.predict(model, examples, feats, batch_size, _inference(_autocast(dev, dtype)), bar)
    finally:
        bar.close()
    return [w.describe(p, e) for p, e in zip(preds, examples)]


def _predict_examples(spec: TaskSpec, inputs: Any, text_column: str | None, pair_column: str | None) -> list[dict[str, Any]]:
    tt = spec.task_type
    if isinstance(inputs, (str, Path)) and Path(inputs).is_file():
        cols = Columns(text_column or spec.columns.get("text"), pair_column or spec.columns.get("pair"),
                       spec.columns.get("label"))
        ex, _ = read_examples(inputs, tt, cols, labelled=False)
        return ex
    if isinstance(inputs, (str, Path)):
        raise DataError(f"{inputs}: no such input file (pass a list of texts to predict on strings)")
    out: list[dict[str, Any]] = []
    kind = get_task_type(tt)
    # predictions never look at labels: drop every task type's answer fields
    answers = {f for t in TASK_TYPES.values() for f in t.label_fields}
    for k, x in enumerate(inputs):
        where = f"input {k + 1}"
        if isinstance(x, dict):
            e = dict(x)
        elif isinstance(x, str):
            e = kind.from_text(x, where)
        else:
            raise DataError(f"{where}: expected a string or a dict, got {type(x).__name__}")
        for n in kind.input_fields:
            v = e.get(n)
            if v is None or (isinstance(v, (str, list)) and not v) or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{where}: empty or missing {n!r}")
        e["_where"] = where
        for lab in answers:
            e.pop(lab, None)
        out.append(e)
    if not out:
        raise DataError("predict: no inputs")
    return out
