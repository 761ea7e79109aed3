"""``transferlab ulmfit``: ULMFiT's three stages (Howard & Ruder, 2018) into one resumable folder.

1. general-domain LM pre-training: ``clm`` on an AWD-LSTM preset over a prepared corpus
   (``--data``), or a given LM (``--lm``);
2. target-task LM fine-tuning: the task's own texts (train + validation, never test) written as a
   corpus, prepared with the LM's tokenizer, and ``clm`` continued on them from stage 1;
3. the classifier: concat pooling ``[h_T, max, mean]`` (and by default the paper's batch-norm /
   dropout / linear x2 head), gradual unfreezing one layer group per epoch from the top,
   discriminative learning rates ``lr / 2.6`` per group down and slanted triangular learning
   rates (cut_frac 0.1, ratio 32): the ``finetune`` options that transformers use.

``--bidirectional`` runs stages 1-3 a second time for a backward LM (the AWD-LSTM reads right to
left, ``family_options.backwards``) and writes the ensemble of both classifiers (their averaged
probabilities) on the test split to ``ensemble.json``. Every stage writes its own subfolder; a
stage whose result exists is skipped, an interrupted one resumes from its checkpoints, so the same
command continues a killed run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import COUNT, NONNEG_INT, POSITIVE, Range

_EPILOG = """\
examples:
  transferlab prepare --tokenizer runs/tok --input builtin:ptb --out runs/ptb-data
  transferlab ulmfit --data runs/ptb-data --task rotten-tomatoes --preset awd-lstm-mini --out runs/ulmfit \\
      --lm-steps 2000 --task-lm-steps 300 --epochs 5 --bidirectional
  transferlab ulmfit --lm runs/ulmfit/lm-fwd/model --task imdb --out runs/ulmfit-imdb   # stage 1 given

Folder: lm-fwd/ (stage 1 run), task-corpus-fwd.txt + task-data-fwd/ + task-lm-fwd/ (stage 2),
cls-fwd/ (stage 3, a finetune folder: evaluate/predict read it), the same with -bwd for the
backward model, ensemble.json (--bidirectional) and ulmfit.json (settings and stages done).
"""


@dataclass
class ULMFiTConfig:
    """Settings of ``transferlab ulmfit`` (flags, ``--config FILE``, ``key=value``)."""

    out: str = ""
    """Run folder (every stage writes a subfolder; rerun the same command to continue)."""
    data: str | None = None
    """Prepared general-domain corpus (``transferlab prepare``) for stage 1."""
    lm: str | None = None
    """A pre-trained forward AWD-LSTM LM folder: skips stage 1 for the forward model."""
    lm_backward: str | None = None
    """A pre-trained backward LM folder: skips stage 1 for the backward model."""
    preset: str = "awd-lstm-tiny"
    """AWD-LSTM preset for stage 1."""
    task: str | None = None
    """Built-in task (e.g. rotten-tomatoes, imdb) or a file task through train_file."""
    train_file: str | None = None
    """Training file of a file task (csv/tsv/jsonl with text and label)."""
    validation_file: str | None = None
    """Validation file of a file task."""
    test_file: str | None = None
    """Test file of a file task."""
    lm_steps: int = 1000
    """Stage 1 optimiser steps."""
    task_lm_steps: int = 200
    """Stage 2 optimiser steps on the task's texts."""
    lm_lr: float = 3e-3
    """Peak learning rate of stages 1 and 2."""
    lm_batch_size: int = 32
    """Windows per step in stages 1 and 2."""
    seq_len: int = 70
    """Window (BPTT) length in stages 1 and 2."""
    epochs: int = 5
    """Classifier epochs; with gradual unfreezing one more layer group thaws each epoch, so at
    least n_layers + 2 (5 for three LSTM layers) to train every group."""
    lr: float = 1e-2
    """Classifier peak learning rate (of the head; each group below gets lr / 2.6 of the one above)."""
    batch_size: int = 32
    """Classifier batch size."""
    train_size: int | None = None
    """Keep only N labelled training examples (stratified, by seed)."""
    max_length: int | None = None
    """Longest classifier input in tokens (default per task)."""
    pooling: str = "ulmfit"
    """ulmfit (concat pooling + the paper's two-block head) or concat (concat pooling, one linear)."""
    gradual_unfreeze: bool = True
    """Thaw one layer group per epoch from the top (off: train everything from the start)."""
    bidirectional: bool = False
    """Also train the backward model and report the forward + backward ensemble."""
    seed: int = 0
    """Seed of every stage."""
    dtype: str = "auto"
    """auto | bf16 | fp32 for every stage."""
    quiet: bool = False
    """No progress bars (one line per stage is still printed)."""
    force: bool = False
    """Write into an --out that holds other files."""

    RANGES: ClassVar[dict[str, Range]] = {
        "lm_steps": COUNT, "task_lm_steps": NONNEG_INT, "lm_lr": POSITIVE, "lm_batch_size": COUNT,
        "seq_len": Range(int, ge=2), "epochs": COUNT, "lr": POSITIVE, "batch_size": COUNT, "train_size": COUNT,
        "max_length": COUNT, "seed": NONNEG_INT,
    }

    def validate(self) -> "ULMFiTConfig":
        """One-line errors for settings that cannot run."""
        from ..config import check_fields
        from ..errors import ConfigError

        check_fields(self, "ulmfit", self.RANGES)
        if not self.out:
            raise ConfigError("ulmfit: --out DIR is required")
        if not self.task and not self.train_file:
            raise ConfigError("ulmfit: give --task NAME (built in) or --train-file FILE")
        if self.lm is None and self.data is None:
            raise ConfigError("ulmfit: give --data DIR (a prepared corpus for stage 1) or --lm DIR (a pre-trained LM)")
        if self.bidirectional and self.lm_backward is None and self.data is None:
            raise ConfigError("ulmfit: --bidirectional needs --data DIR (to pre-train the backward LM) or --lm-backward DIR")
        if self.pooling not in ("ulmfit", "concat"):
            raise ConfigError(f"ulmfit.pooling must be ulmfit or concat, got {self.pooling!r}")
        return self


def register(subparsers: Any) -> None:
    from ..cli import add_config_arguments

    p = subparsers.add_parser(
        "ulmfit", help="ULMFiT: AWD-LSTM LM pre-training, task LM fine-tuning, classifier (resumable)",
        description="ULMFiT's three stages in one folder: general LM pre-training (clm on an AWD-LSTM), target-task "
                    "LM fine-tuning on the task's texts, then the classifier with concat pooling, gradual unfreezing, "
                    "discriminative and slanted triangular learning rates; --bidirectional adds the backward model "
                    "and the ensemble.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, ULMFiTConfig, options={"out": {"metavar": "DIR"}, "data": {"metavar": "DIR"},
                                                   "lm": {"metavar": "DIR"}, "lm_backward": {"metavar": "DIR"},
                                                   "pooling": {"choices": ("ulmfit", "concat")},
                                                   "dtype": {"choices": ("auto", "bf16", "fp32")}})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import config_from_args
    from ..outputs import Output

    cfg = config_from_args(args, ULMFiTConfig, "ulmfit")
    inputs = [cfg.data, cfg.lm, cfg.lm_backward, cfg.train_file, cfg.validation_file, cfg.test_file]
    out = Path(cfg.out)
    # a failed start leaves nothing; once a stage has finished, its results stay for the rerun
    with Output(cfg.out, "ulmfit", force=cfg.force, inputs=inputs, cleanup=True,
                keep_if=lambda: (out / "ulmfit.json").is_file()):
        result = ulmfit(cfg)
    print(json.dumps(result.get("summary", {}), sort_keys=True))
    return 0


# ---------------------------------------------------------------------------------- the stages
def ulmfit(cfg: ULMFiTConfig) -> dict[str, Any]:
    """Run (or continue) the three stages for the forward model and, if asked, the backward one.

    Args:
        cfg: the settings.

    Returns:
        The run record (also ``out/ulmfit.json``): settings, stages done and a summary of the
        classifiers' (and the ensemble's) test metrics.
    """
    cfg.validate()
    _preflight(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record = _read_record(out)
    record["settings"] = dataclasses.asdict(cfg)
    directions = ["fwd", "bwd"] if cfg.bidirectional else ["fwd"]
    summary: dict[str, Any] = {}
    for d in directions:
        lm = _stage1(cfg, out, d, record)
        task_lm = _stage2(cfg, out, d, lm, record)
        metrics = _stage3(cfg, out, d, task_lm, record)
        summary[d] = metrics.get("test") or metrics.get("validation") or {}
    if cfg.bidirectional:
        summary["ensemble"] = _ensemble(cfg, out, record)
    record["summary"] = summary
    _write_record(out, record)
    return record


def _preflight(cfg: ULMFiTConfig) -> None:
    """The inputs every stage will need, checked before any long work (one-line errors)."""
    from ..errors import ConfigError, DataError
    from ..models.model import read_config

    if cfg.data is not None and not (Path(cfg.data) / "meta.json").is_file():
        raise DataError(f"{cfg.data}: not a prepared dataset (no meta.json); run `transferlab prepare` first")
    for lm in (cfg.lm, cfg.lm_backward):
        if lm is not None:
            family = read_config(Path(lm)).get("family")
            if family != "awd-lstm":
                raise ConfigError(f"{lm}: ulmfit needs an awd-lstm language model, got family {family!r}")
    data = _task_data(cfg)
    if data.task_type not in ("classification", "pair-classification"):
        raise ConfigError(f"ulmfit: task {data.name!r} is {data.task_type}; ULMFiT's classifier needs a "
                          "classification task")


def _say(cfg: ULMFiTConfig, msg: str) -> None:
    print(f"ulmfit: {msg}", file=sys.stderr, flush=True)


def _read_record(out: Path) -> dict[str, Any]:
    p = out / "ulmfit.json"
    if p.is_file():
        from ..config import read_json

        return read_json(p, expect=dict, what="ulmfit run record")
    return {"stages": {}}


def _write_record(out: Path, record: dict[str, Any]) -> None:
    from ..utils import atomic_write_text

    atomic_write_text(out / "ulmfit.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _done(record: dict[str, Any], out: Path, stage: str) -> None:
    record["stages"][stage] = True
    _write_record(out, record)


def _pretrained(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "model" / "config.json").is_file()


def _train_config(cfg: ULMFiTConfig, steps: int) -> Any:
    from ..training.config import TrainConfig

    return TrainConfig(batch_size=cfg.lm_batch_size, seq_len=cfg.seq_len, max_steps=steps, lr=cfg.lm_lr, warmup=0.1,
                       eval_every=0, save_every=max(1, steps // 4), log_every=max(1, steps // 20), dtype=cfg.dtype,
                       seed=cfg.seed, progress=not cfg.quiet, tensorboard=False)


def _run_clm(cfg: ULMFiTConfig, model_cfg: Any, data: Path, run_dir: Path, steps: int, init: str | None) -> None:
    """``pretrain`` with clm into ``run_dir``; resumes when it holds checkpoints of an unfinished run."""
    from ..training.pretrain import pretrain

    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    pretrain(model_cfg, "clm", {}, _train_config(cfg, steps), data, run_dir, resume=resume, init=init,
             cost=None, force=not resume)


def _stage1(cfg: ULMFiTConfig, out: Path, d: str, record: dict[str, Any]) -> Path:
    """The general-domain LM of direction ``d``: given (``--lm``) or pre-trained on ``--data``."""
    from ..config import get_preset
    from ..errors import ConfigError

    given = cfg.lm if d == "fwd" else cfg.lm_backward
    if given is not None:
        from ..models.model import read_config

        raw = read_config(Path(given))
        if raw.get("family") != "awd-lstm":
            raise ConfigError(f"{given}: ulmfit needs an awd-lstm LM, got family {raw.get('family')!r}")
        backwards = bool((raw.get("family_options") or {}).get("backwards", False))
        if backwards != (d == "bwd"):
            raise ConfigError(f"{given}: a {'backward' if backwards else 'forward'} LM given for the "
                              f"{'backward' if d == 'bwd' else 'forward'} model (family_options.backwards)")
        return Path(given)
    run_dir = out / f"lm-{d}"
    if not _pretrained(run_dir):
        _say(cfg, f"stage 1 ({d}): general LM pre-training, {cfg.preset}, {cfg.lm_steps} steps on {cfg.data}")
        model_cfg = get_preset(cfg.preset)
        if str(model_cfg.family) != "awd-lstm":
            raise ConfigError(f"ulmfit.preset: expected an awd-lstm preset (awd-lstm-tiny, awd-lstm-mini), got {cfg.preset!r}")
        model_cfg.family_options = dataclasses.replace(model_cfg.family_options, backwards=d == "bwd")
        _run_clm(cfg, model_cfg, Path(str(cfg.data)), run_dir, cfg.lm_steps, None)
    _done(record, out, f"lm-{d}")
    return run_dir / "model"


def _task_data(cfg: ULMFiTConfig) -> Any:
    from ..finetune import FinetuneConfig, load_task_data

    return load_task_data(FinetuneConfig(model="-", task=cfg.task, train_file=cfg.train_file,
                                         validation_file=cfg.validation_file, test_file=cfg.test_file,
                                         seed=cfg.seed, quiet=True))


def write_task_corpus(data: Any, path: Path) -> int:
    """The task's train and validation texts as a corpus (documents separated by blank lines);
    the test split is left out, so stage 2 never reads the texts the classifier is scored on.

    Args:
        data: a :class:`~transferlab.finetune.tasks.TaskData`.
        path: the corpus file to write (atomically).

    Returns:
        Number of documents written.
    """
    from ..utils import atomic_write_text

    docs = []
    for ex in [*data.train, *data.validation]:
        for key in ("text", "pair"):
            text = " ".join(str(ex.get(key) or "").split())  # one paragraph: blank lines separate documents
            if text:
                docs.append(text)
    atomic_write_text(path, "\n\n".join(docs) + "\n")
    return len(docs)


def _stage2(cfg: ULMFiTConfig, out: Path, d: str, lm: Path, record: dict[str, Any]) -> Path:
    """Target-task LM fine-tuning: clm continued from ``lm`` on the task's own texts."""
    from ..data.prepare import prepare_corpus

    run_dir = out / f"task-lm-{d}"
    if _pretrained(run_dir):
        _done(record, out, f"task-lm-{d}")
        return run_dir / "model"
    if cfg.task_lm_steps == 0:
        return lm
    corpus, prepared = out / f"task-corpus-{d}.txt", out / f"task-data-{d}"
    if not (prepared / "meta.json").is_file():
        n = write_task_corpus(_task_data(cfg), corpus)
        _say(cfg, f"stage 2 ({d}): {n} task texts -> {prepared}")
        prepare_corpus(corpus, lm, prepared, val_fraction=0.05, seed=cfg.seed, workers=0, force=True,
                       progress=not cfg.quiet)
    _say(cfg, f"stage 2 ({d}): target-task LM fine-tuning, {cfg.task_lm_steps} steps from {lm}")
    _run_clm(cfg, None, prepared, run_dir, cfg.task_lm_steps, str(lm))
    _done(record, out, f"task-lm-{d}")
    return run_dir / "model"


def unfreeze_fraction(n_layers: int, epochs: int) -> float:
    """``finetune.gradual_unfreeze`` that thaws one layer group per epoch from the top.

    The unfreezer adds a group every ``frac / (L + 1)`` of the run over ``L + 2`` depths (head,
    layer L, ..., layer 1, embeddings), so ``frac = (L + 1) / epochs`` adds one per epoch.

    Args:
        n_layers: LSTM layers L.
        epochs: classifier epochs (more than ``L + 1``).

    Returns:
        The fraction in (0, 1).
    """
    from ..errors import ConfigError

    if epochs <= n_layers + 1:
        raise ConfigError(f"ulmfit.epochs={epochs}: gradual unfreezing thaws one of {n_layers + 2} layer groups per "
                          f"epoch, so it needs at least {n_layers + 2} epochs (or --no-gradual-unfreeze)")
    return (n_layers + 1) / epochs


def classifier_config(cfg: ULMFiTConfig, model_dir: Path, out_dir: Path) -> Any:
    """The stage-3 :class:`~transferlab.finetune.FinetuneConfig`: ULMFiT's schedule on ``finetune``.

    Args:
        cfg: the settings.
        model_dir: the task-tuned LM.
        out_dir: the classifier folder.

    Returns:
        The FinetuneConfig (slanted triangular LR with cut_frac 0.1 and ratio 32, layer_lr_decay
        1/2.6, gradual unfreezing one group per epoch, concat pooling).
    """
    from ..finetune import FinetuneConfig
    from ..models.model import read_config

    n_layers = int(read_config(model_dir).get("n_layers", 3))
    resume = (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").iterdir())
    return FinetuneConfig(
        model=str(model_dir), task=cfg.task, train_file=cfg.train_file, validation_file=cfg.validation_file,
        test_file=cfg.test_file, out_dir=str(out_dir), epochs=float(cfg.epochs), lr=cfg.lr, batch_size=cfg.batch_size,
        schedule="slanted", warmup=0.1, layer_lr_decay=1 / 2.6,
        gradual_unfreeze=unfreeze_fraction(n_layers, cfg.epochs) if cfg.gradual_unfreeze else 0.0,
        pooling=cfg.pooling, train_size=cfg.train_size, max_length=cfg.max_length, seed=cfg.seed, dtype=cfg.dtype,
        quiet=cfg.quiet, resume=resume, force=True)


def _stage3(cfg: ULMFiTConfig, out: Path, d: str, task_lm: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The classifier of direction ``d``; its metrics.json once done."""
    from ..finetune import finetune

    cls_dir = out / f"cls-{d}"
    if not (cls_dir / "metrics.json").is_file():
        _say(cfg, f"stage 3 ({d}): classifier on {task_lm} ({cfg.epochs} epochs, pooling {cfg.pooling})")
        finetune(classifier_config(cfg, task_lm, cls_dir))
    _done(record, out, f"cls-{d}")
    return json.loads((cls_dir / "metrics.json").read_text())


def _ensemble(cfg: ULMFiTConfig, out: Path, record: dict[str, Any]) -> dict[str, float]:
    """The forward + backward ensemble: averaged class probabilities on the test split
    (validation when the task has none), scored like the classifiers."""
    from ..evaluation.metrics import classification_metrics
    from ..finetune import predict
    from ..utils import atomic_write_text

    data = _task_data(cfg)
    split, examples = ("test", data.test) if data.test else ("validation", data.validation)
    rows = [{"text": e["text"], **({"pair": e["pair"]} if "pair" in e else {})} for e in examples]
    fwd = predict(out / "cls-fwd", rows, dtype=cfg.dtype)
    bwd = predict(out / "cls-bwd", rows, dtype=cfg.dtype)
    preds = []
    for a, b in zip(fwd, bwd):
        probs = {k: (a["probabilities"][k] + b["probabilities"][k]) / 2 for k in a["probabilities"]}
        preds.append(max(sorted(probs), key=lambda k: probs[k]))
    metrics = classification_metrics(preds, [e["label"] for e in examples], data.labels)
    result = {"split": split, "n": len(examples), **metrics}
    atomic_write_text(out / "ensemble.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    _done(record, out, "ensemble")
    _say(cfg, f"ensemble ({split}, {len(examples)} examples): "
         + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
