"""The fine-tuning loop (``evaluate`` / ``predict`` live in :mod:`.inference`, importable from here).

``finetune(cfg)`` is written out in one place, in the order it happens:

1. load the task (built-in, derived or files), subsample the training set (``train_size``,
   stratified, by seed) and optionally the validation set (``validation_size``, fixed subset);
2. load the model and tokenizer (a pre-trained folder, ``builtin:minilm``, or a preset with a
   tokenizer trained in-process on the training text for ``from_scratch``), keep only this
   task's head (fresh) and tokenise every split once;
3. AdamW with discriminative learning rates (``layer_lr_decay``), warm-up + linear / cosine /
   slanted-triangular schedule as a function of progress (steps, or wall time under
   ``max_minutes``), gradual unfreezing from the top, bf16 autocast, length-grouped batches with
   dynamic padding;
4. ``maybe_eval`` at each epoch end (or every ``eval_every`` steps) on the validation split with
   the task's primary metric; the best weights are kept (a CPU copy) and ``patience``
   evaluations without improvement stop the run;
5. the best weights are restored, the test split scored once, and ``out_dir`` written atomically:
   ``config.json`` + ``model.safetensors`` + tokenizer + ``task.json`` (so ``evaluate`` and
   ``predict`` need nothing else), ``finetune_config.json``, ``metrics.json``, the run log
   ``metrics.jsonl`` + ``tensorboard/`` and the cost report ``report.json`` (:mod:`transferlab.cost`:
   FLOPs, MFU, energy, CO2e, price of the training loop).

The run log is written live in the one schema of pre-training (:mod:`transferlab.training.runlog`),
one ``train`` and one ``val`` row per evaluation, under ``out_dir/checkpoints/`` beside the
resumable state while the run goes on (a previous folder at ``out_dir`` stays untouched until the
final write), and is linked into the new folder by that write.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..training.checkpoint import clean_stale, latest_checkpoint, list_checkpoints
from ..training.distributed import DistInfo, wrap_model
from ..utils import atomic_dir, atomic_write_text, set_seed
from .checkpoints import _fingerprint, _full_state, _resume, _save_checkpoint
from .config import CONFIG_FILE, FinetuneConfig, FinetuneResult, TaskSpec
from .inference import evaluate, load_finetuned, predict  # noqa: F401  (importable from .loop as before)
from .inputs import length_grouped_batches, position_limit
from .scoring import _autocast, _bar, _device, _resolved
from .scoring import score as _score  # a module global: tests spy on loop._score
from .task_types import TaskType, build_wiring, get_task_type
from .tasks import Columns, TaskData, load_builtin, load_files, subsample, task_defaults

__all__ = ["finetune", "evaluate", "predict", "load_task_data", "load_finetuned", "METRICS_FILE"]

METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"  #: resumable checkpoints of an unfinished run, under the output folder
#: the run log's entries (the one schema of training/runlog.py): under CHECKPOINTS while the run goes on
LOG_FILES = ("metrics.jsonl", "tensorboard")


# ------------------------------------------------------------------------------ helpers
def _status(message: str) -> None:
    """A log line above the progress bar (``tqdm.write``, as :class:`~transferlab.training.runlog.RunLog`
    prints pre-training's), never glued onto it."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def _set_dropout(model: torch.nn.Module, dropout: float | None, attention: float | None) -> None:
    """Override the backbone's dropout rates in place (and in its config, so they are saved)."""
    from ..models.backbone import backbone_of

    backbone_of(model).set_dropout(hidden=dropout, attention=attention)


def _set_attn_impl(model: torch.nn.Module, impl: str | None) -> None:
    """Choose the backbone's attention kernel (``None``: keep the model's)."""
    if impl is None:
        return
    from ..models.backbone import backbone_of

    backbone_of(model).set_attention(impl)


# ------------------------------------------------------------------------------ data
def load_task_data(cfg: FinetuneConfig) -> TaskData:
    """The task named by ``cfg.task`` or read from ``cfg.train_file`` (+ validation/test files).

    Raises:
        DataError: unreadable files, bad examples, a validation/test label unseen in training.
        ConfigError: ``cfg.task_type`` that contradicts a built-in task.
    """
    columns = Columns(cfg.text_column, cfg.pair_column, cfg.label_column)
    tt = str(cfg.task_type) if cfg.task_type is not None else None
    if cfg.task is not None:
        data = load_builtin(cfg.task)
        if tt is not None and tt != data.task_type:
            raise ConfigError(f"task {cfg.task!r} is a {data.task_type} task, not {tt}")
        return data
    return load_files(cfg.train_file, cfg.validation_file, cfg.test_file, tt, columns)


def _tokenizer_texts(data: TaskData, examples: Sequence[dict[str, Any]]) -> list[str]:
    texts_of = get_task_type(data.task_type).tokenizer_texts
    out = [t for e in examples for t in texts_of(e)]
    # a trailing space keeps Tokenizer.train from mistaking a one-word text ("notes.txt") for a path
    return [t + " " for t in out]


def _tokenizer_kind(mcfg: Any) -> str:
    from ..config import Family, Norm, Position

    fam = str(getattr(mcfg.family, "value", mcfg.family))  # a registered family need not be a Family member
    if fam == Family.ENCODER.value:
        return "wordpiece"
    if fam == Family.ENCODER_DECODER.value and (Position(mcfg.position) == Position.RELATIVE
                                              or Norm(mcfg.norm) == Norm.RMSNORM):
        return "unigram"  # T5-style
    return "bpe"


def _load_model(cfg: FinetuneConfig, data: TaskData, train: Sequence[dict[str, Any]]) -> tuple[Any, Any, str]:
    """``(model, tokenizer, where_the_tokenizer_came_from)``."""
    from ..config import PRESETS, get_preset
    from ..interop.loading import load_pretrained
    from ..models.model import TransferModel
    from ..specials import SpecialIds
    from ..tokenizer import Tokenizer

    name = cfg.model
    if name in PRESETS:
        if not cfg.from_scratch:
            raise ConfigError(
                f"{name!r} is a preset: it has no pre-trained weights; pass --from-scratch for the "
                "no-pre-training control, or a pre-trained model folder / builtin:minilm"
            )
        base = get_preset(name)
        if cfg.tokenizer:
            tok, tok_src = Tokenizer.from_pretrained(cfg.tokenizer), cfg.tokenizer
        else:
            kind = _tokenizer_kind(base)
            tok = Tokenizer.train(_tokenizer_texts(data, train), kind=kind, vocab_size=cfg.tokenizer_vocab_size,
                                  n_sentinels=0)
            tok_src = f"trained in-process ({kind}, {tok.vocab_size} tokens) on the {len(train)} training examples"
        # the one special-id rule (specials.py); the preset's own ids belong to no tokenizer
        over: dict[str, Any] = {"vocab_size": tok.vocab_size, "heads": {}}
        ids = SpecialIds.resolve(tokenizer=tok).config_fields()
        if not base.is_encoder_decoder:
            ids.pop("decoder_start_token_id", None)
        over.update(ids)
        return TransferModel(get_preset(name, **over)), tok, tok_src

    if not name.startswith("builtin:") and not Path(name).exists():
        raise ConfigError(
            f"--model {name!r} is neither a model folder nor a preset; presets: {', '.join(PRESETS)}; "
            "or builtin:minilm"
        )
    # the one loader (interop/loading.py) checks the tokenizer against the model it was built with
    model, tok = load_pretrained(name, tokenizer=cfg.tokenizer or None, device="cpu")
    if cfg.from_scratch:  # same architecture, fresh weights: the honest no-pre-training control
        mcfg = copy.deepcopy(model.config)
        mcfg.heads = {}
        model = TransferModel(mcfg)
    return model, tok, str(cfg.tokenizer or name)


def _make_spec(cfg: FinetuneConfig, data: TaskData, train: Sequence[dict[str, Any]], mcfg: Any) -> TaskSpec:
    max_len, max_tgt = task_defaults(data.name if cfg.task else None, data.task_type)
    max_len = cfg.max_length or max_len
    limit = position_limit(mcfg)
    if limit is not None and max_len > limit:
        max_len = limit
    spec = TaskSpec(
        task_type=data.task_type, labels=list(data.labels), task=cfg.task, name=data.name, columns=dict(data.columns),
        files=dict(data.files), max_length=max_len, max_target_length=cfg.max_target_length or max_tgt,
        doc_stride=cfg.doc_stride, max_answer_length=cfg.max_answer_length, pooling=cfg.pooling,
        truncation=cfg.truncation, head_dropout=cfg.head_dropout,
        prompt_suffix=cfg.prompt_suffix, num_beams=cfg.num_beams, bio_decoding=cfg.bio_decoding,
        derived=data.derived,
    )
    get_task_type(data.task_type).fit_spec(spec, train)  # e.g. regression's target scale
    return spec


def _check_out_dir(cfg: FinetuneConfig) -> Path | None:
    if cfg.out_dir is None:
        return None
    from ..outputs import Output

    out = Path(cfg.out_dir)
    if Path(cfg.model).exists() and out.resolve() == Path(cfg.model).resolve():
        raise ConfigError(f"--out {out} is the model folder itself; write the fine-tuned model somewhere else")
    # the one output rule (docs/outputs.md): not an input, only an earlier fine-tune unless force
    Output(out, "finetune", force=cfg.force, inputs=[cfg.model, cfg.tokenizer, cfg.train_file,
                                                      cfg.validation_file, cfg.test_file]).check()
    ckpts = list_checkpoints(out / CHECKPOINTS)
    if ckpts and not cfg.resume:
        raise ConfigError(f"--out {out} holds checkpoints of a run (last: step {ckpts[-1][0]}); pass --resume to "
                          f"continue it, or choose another folder")
    return out


# ------------------------------------------------------------------------------ gradual unfreezing
def _layer_groups(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """Parameter name -> depth (0 embeddings, 1..L layers, L+1 top of the backbone and the heads),
    and L, from the backbone's :meth:`~transferlab.models.backbone.Backbone.layer_groups`."""
    from ..models.backbone import backbone_of

    groups = backbone_of(model).layer_groups()  # [embeddings, layer 1..L, top]
    L = len(groups) - 2
    depth_of = {id(p): d for d, group in enumerate(groups) for p in group}
    # parameters outside the backbone (the task heads) sit on top, with the final norm / pooler
    names = {n: depth_of.get(id(p), L + 1) for n, p in model.named_parameters()}
    return names, L


class _Unfreezer:
    """ULMFiT gradual unfreezing: groups join from the top, one every ``frac / (L + 1)`` of the run."""

    def __init__(self, model: torch.nn.Module, frac: float):
        self.frac = frac
        self.depth, self.L = _layer_groups(model)
        self.params = dict(model.named_parameters())
        self.level = -1

    def __call__(self, progress: float) -> None:
        if self.frac <= 0:
            return
        # number of groups trainable: 1 (head) at progress 0, all L+2 at progress >= frac
        # the epsilon keeps a boundary that is exact in decimals (step 12 of 20 at frac 0.8) from
        # rounding down to the group before
        k = min(self.L + 2, 1 + int(progress / self.frac * (self.L + 1) + 1e-9))
        if k == self.level:
            return
        self.level = k
        lowest = self.L + 2 - k  # depths >= lowest train
        for n, p in self.params.items():
            p.requires_grad_(self.depth[n] >= lowest)


# ------------------------------------------------------------------------------ evaluation core
# ------------------------------------------------------------------------------ finetune
def finetune(cfg: FinetuneConfig, info: DistInfo | None = None) -> FinetuneResult:
    """Fine-tune a model on a task; keep the best checkpoint by validation score.

    Every ``save_every`` steps and after every evaluation a checkpoint (the pre-training format:
    :mod:`transferlab.training.checkpoint`) goes to ``out_dir/checkpoints``; a run killed at any
    point continues from the latest one when ``resume`` (bit-identically in fp32/bf16). Under
    ``torchrun`` (``info`` from :func:`~transferlab.training.distributed.init_distributed`) every
    rank trains on its slice of each global batch (DDP, or FSDP2 with ``fsdp``), evaluation is
    split over the ranks and gathered, and rank 0 writes the outputs.

    Args:
        cfg: the run's settings (see :class:`FinetuneConfig`).
        info: this process's place in a torchrun job (default: one process on ``cfg.device``).

    Returns:
        :class:`FinetuneResult` with validation and test metrics of the best checkpoint, timing,
        token counts and the per-evaluation history.

    Raises:
        ConfigError: inconsistent settings (a preset without ``from_scratch``, seq2seq on an
            encoder, an ``out_dir`` that would overwrite a model folder, ...).
        DataError: bad task data (names the file and line).
        CheckpointError: an unreadable model folder.
    """
    from ..evaluation.metrics import higher_is_better
    from ..training.optim import build_optimizer, lr_multiplier, set_lr

    cfg.validate()
    if info is None:
        info = DistInfo(device=_device(cfg.device))
    device = info.device
    if info.world_size > 1 and cfg.gradual_unfreeze > 0:
        raise ConfigError("finetune.gradual_unfreeze cannot run under torchrun (DDP/FSDP fix the trainable "
                          "parameters when they wrap the model); run it in one process")
    out_dir = _check_out_dir(cfg)
    quiet = cfg.quiet or not info.is_main  # one process logs
    log = (lambda *_: None) if quiet else _status  # above the progress bar, never glued onto it

    data = load_task_data(cfg)
    train = subsample(data.train, cfg.train_size, cfg.seed, data.task_type)
    # the validation subset does not depend on the seed: every seed is selected on the same data
    val = subsample(data.validation, cfg.validation_size, 0, data.task_type)
    test = subsample(data.test, cfg.test_size, 0, data.task_type) if data.test else data.test
    if not train:
        raise DataError(f"task {data.name!r}: no training examples")

    set_seed(cfg.seed)
    model, tok, tok_src = _load_model(cfg, data, train)
    if cfg.init_embeddings:  # word2vec vectors into the token table, matched by token
        from ..models.init_embeddings import init_embeddings

        init_embeddings(model, tok, cfg.init_embeddings, quiet=quiet)
    _set_dropout(model, cfg.dropout, cfg.attention_dropout)  # before the head: it reads config.dropout
    spec = _make_spec(cfg, data, train, model.config)
    wiring = build_wiring(spec, tok, model.config)
    set_seed(cfg.seed)  # the new head's initialisation depends only on the seed
    wiring.setup_model(model, fresh=True)
    spec.head = wiring.head
    _set_attn_impl(model, cfg.attn_impl)
    lora_info = None
    if cfg.lora_r is not None:
        from .lora import apply_lora, base_hash

        lora_info = {"base_sha256": base_hash(model)}  # of the pre-trained weights, head excluded
        lora_info.update(apply_lora(model, cfg.lora_config(), seed=cfg.seed))
    if cfg.gradient_checkpointing:
        from ..models.backbone import backbone_of

        backbone_of(model).set_gradient_checkpointing(True)
    model.to(device)

    feats = wiring.encode(train, train=True)
    lengths = [len(f["input_ids"]) for f in feats]
    # batch_size examples per micro-batch and rank: an optimizer step sees G examples
    G = cfg.batch_size * cfg.grad_accum * info.world_size
    steps_per_epoch = math.ceil(len(feats) / G)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    metric = wiring.primary_metric
    better = higher_is_better(metric)
    log(f"finetune: {data.name} ({spec.task_type}{', derived' if data.derived else ''}) | train {len(train)}"
        f" ({len(feats)} sequences) | validation {len(val)} | test {len(test)} | model {cfg.model}"
        f"{' from scratch' if cfg.from_scratch else ''} ({model.num_parameters() / 1e6:.1f}M params) | tokenizer "
        f"{tok_src} | max_length {wiring.max_length} | {total_steps} steps of {G} examples"
        + (f" ({cfg.batch_size} x {cfg.grad_accum} micro-batches x {info.world_size} processes)"
           if G != cfg.batch_size else ""))
    for note in data.notes:
        log(f"note: {note}")
    if lora_info is not None:
        log(f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {lora_info['adapted_layers']} layers: "
            f"{lora_info['trainable']:,} trainable parameters of {lora_info['total']:,} "
            f"({100 * lora_info['trainable'] / lora_info['total']:.2f}%)")

    # DDP/FSDP wrap the loss module (the wiring's summed loss as its forward), as pre-training does;
    # before the optimizer: FSDP2 replaces the parameters by sharded ones in place
    engine = wrap_model(_TaskLoss(model, wiring), info, fsdp=cfg.fsdp)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, layer_lr_decay=cfg.layer_lr_decay)
    unfreeze = _Unfreezer(model, cfg.gradual_unfreeze)
    min_ratio = 1.0 / 32 if str(cfg.schedule) == "slanted" else 0.0  # ULMFiT's ratio
    dtype = _resolved(cfg.dtype, device)
    ctx = _autocast(device, dtype)
    scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes else None
    rng = np.random.default_rng(cfg.seed)
    tracker = _cost_tracker(cfg, model, device)
    ckpt_root = out_dir / CHECKPOINTS if out_dir is not None else None
    fingerprint = _fingerprint(cfg, data)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": None, "metrics": {}, "state": None, "epoch": 0, "step": 0}
    run: dict[str, Any] = {"step": 0, "tokens": 0, "epoch": 0, "pos": 0, "bad_evals": 0, "loss_sum": 0.0,
                           "loss_n": 0, "elapsed": 0.0, "epoch_rng": rng.bit_generator.state}
    batches: list[list[int]] | None = None
    stopped = "epochs"
    if ckpt_root is not None and info.is_main:
        clean_stale(ckpt_root)
    last = latest_checkpoint(ckpt_root) if ckpt_root is not None and cfg.resume else None
    if last is not None:
        batches = _resume(last, cfg, fingerprint, model, optimizer, info, rng, run, best, history, lengths, G, scaler)
        if info.is_main:  # printed even when quiet, as pre-training does: the run did not start over
            _status(f"resumed from {last} (step {run['step']}, epoch {run['epoch']})")
        if total_steps <= run["step"]:
            stopped = run.get("stopped", stopped)
    runlog = _open_run_log(ckpt_root if info.is_main else None, cfg, run["step"])
    t0 = time.perf_counter() - run["elapsed"]
    sharded = cfg.fsdp and info.world_size > 1
    plain: list[Any] = []  # under FSDP: one unsharded copy per rank for evaluation and saving

    def full_state() -> dict[str, torch.Tensor]:
        """A CPU copy of the whole weights (gathered from the shards under FSDP, on every rank)."""
        return _full_state(model, sharded)

    def scoring_model(state: dict[str, torch.Tensor] | None = None) -> Any:
        """The model to evaluate / save: the model itself, loaded with ``state`` if given; under
        FSDP a plain copy holding the gathered weights (evaluation reads whole parameters)."""
        if not sharded:
            if state is not None:
                model.load_state_dict(state)
            return model
        if not plain:
            with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the streams
                plain.append(type(model)(copy.deepcopy(model.config)).to(device))
        plain[0].load_state_dict(state if state is not None else full_state())
        return plain[0]

    def elapsed() -> float:
        return time.perf_counter() - t0

    def maybe_eval(epoch: int) -> bool:
        """Score the validation split, keep the best weights; True when patience ran out."""
        row: dict[str, Any] = {"epoch": epoch, "step": run["step"], "train_loss": run["loss_sum"] / max(1, run["loss_n"]),
                               "lr": optimizer.param_groups[0]["lr"], "tokens": run["tokens"],
                               "seconds": round(elapsed(), 3)}
        run["loss_sum"], run["loss_n"] = 0.0, 0
        if not val:
            history.append(row)
            _log_rows(runlog, row)
            best.update(state=full_state(), epoch=epoch, step=run["step"])
            return False
        with tracker.pause():  # evaluation counts for wall time and energy, not throughput / MFU
            metrics, _ = _score(wiring, scoring_model(), val, cfg.eval_batch_size, ctx, cfg.quiet or not info.is_main,
                                "validation", info=info)
        row.update({f"validation_{k}": v for k, v in metrics.items()})
        history.append(row)
        _log_rows(runlog, row)
        score = metrics[metric]
        run["last_val"] = score  # the bar shows it while the run goes on, as pre-training shows its val loss
        improved = best["score"] is None or (score > best["score"] if better else score < best["score"])
        log(f"epoch {epoch} step {run['step']}: train loss {row['train_loss']:.4f} | validation "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + (" (best)" if improved else ""))
        if improved:
            best.update(score=score, metrics=metrics, state=full_state(), epoch=epoch, step=run["step"])
            run["bad_evals"] = 0
        else:
            run["bad_evals"] += 1
        return cfg.patience is not None and run["bad_evals"] >= cfg.patience

    def save(done: bool) -> None:
        if ckpt_root is None:
            return
        run["elapsed"] = elapsed()
        _save_checkpoint(ckpt_root, cfg, fingerprint, model, optimizer, info, run, best, history, stopped, done,
                         scaler)

    try:
        model.train()
        bar = _bar(total_steps, "finetune", cfg.quiet or not info.is_main)
        bar.update(run["step"])
        done = run["step"] >= total_steps
        while not done:
            if batches is None or run["pos"] >= len(batches):  # a new epoch: its batch order
                run["epoch"] += 1
                run["epoch_rng"] = rng.bit_generator.state
                batches, run["pos"] = length_grouped_batches(lengths, G, rng), 0
            epoch, idx = run["epoch"], batches[run["pos"]]
            run["pos"] += 1
            progress = run["step"] / total_steps
            if budget is not None:
                progress = max(progress, elapsed() / budget)
            set_lr(optimizer, cfg.lr, lr_multiplier(progress, cfg.warmup, str(cfg.schedule), min_ratio))
            unfreeze(progress)
            loss, n = _train_step(engine, wiring, feats, idx, cfg, info, dtype, device, optimizer, model, scaler,
                                  run["step"])
            run["step"] += 1
            step = run["step"]
            run["tokens"] += int(n[1])
            tracker.add(tokens=int(n[1]), flops=float(n[2]))
            run["loss_sum"] += loss
            run["loss_n"] += 1
            bar.update(1)
            shown = {"loss": f"{run['loss_sum'] / run['loss_n']:.4f}"}
            if run.get("last_val") is not None:
                shown[f"val_{metric}"] = f"{run['last_val']:.4f}"
            bar.set_postfix(shown, refresh=False)
            evaluated = False
            if budget is not None and _agree(elapsed(), info) >= budget:
                stopped, done = "time", True
            elif step >= total_steps:
                done = True
            if cfg.eval_every and step % cfg.eval_every == 0 and not done:
                evaluated = True
                if maybe_eval(epoch):
                    stopped, done = "patience", True
            if (done or run["pos"] >= len(batches)) and (not history or history[-1]["step"] != step):
                evaluated = True
                if maybe_eval(epoch) and not done:
                    stopped, done = "patience", True
            if evaluated or (cfg.save_every and step % cfg.save_every == 0) or done:
                save(done)
        bar.close()
    except BaseException:  # an error or Ctrl-C mid-run: stop codecarbon's thread, then re-raise
        tracker.stop(interrupted=True)
        raise
    finally:
        if runlog is not None:
            runlog.close()  # flushed before the final write links the files in
    step, tokens = run["step"], run["tokens"]
    train_seconds = elapsed()
    cost = tracker.stop()

    # restore the best weights (a CPU copy) for the test split and the saved checkpoint
    if best["state"] is not None:
        final = scoring_model(best["state"])
    else:
        final = scoring_model()
    test_metrics: dict[str, float] = {}
    if cfg.eval_on_test and test:
        test_metrics, _ = _score(wiring, final, test, cfg.eval_batch_size, ctx, quiet, "test", info=info)
        log("test: " + " ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))

    result = FinetuneResult(
        validation=best["metrics"], test=test_metrics, out_dir=out_dir, train_seconds=train_seconds,
        train_tokens=tokens, n_train=len(train), best_epoch=best["epoch"], history=history,
        task_type=spec.task_type, metric=metric, steps=step, stopped=stopped, cost=cost,
    )
    if out_dir is not None and info.is_main:  # one process writes the outputs
        _save(out_dir, final, tok, spec, cfg, result, data, lora_info)
        log(f"saved the best checkpoint (epoch {best['epoch']}, step {best['step']}) to {out_dir}")
    if info.world_size > 1:
        from ..training.distributed import barrier

        barrier(info)
    if not quiet:
        from ..cost import format_report

        print(format_report(cost), flush=True)
    return result


def _cost_tracker(cfg: FinetuneConfig, model: Any, device: torch.device) -> Any:
    from ..cost import CostConfig, CostTracker

    try:
        cc = CostConfig(**cfg.cost)
    except TypeError as e:
        raise ConfigError(f"finetune.cost: {e}") from None
    # out_dir=None: report.json goes into the atomically written output folder with the rest
    return CostTracker(model, kind="finetune", out_dir=None, config=cc, dtype=_resolved(cfg.dtype, device), device=device).start()


def _batch_flops(w: TaskType, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one batch (the task type knows what the model reads and predicts)."""
    return w.batch_flops(batch)


# ------------------------------------------------------------------------------ the shared trainer core
class _TaskLoss(torch.nn.Module):
    """The model and its task type as one module whose ``forward(**batch)`` returns the summed
    loss: what DDP/FSDP wrap and the accumulation core of
    :class:`~transferlab.training.loop.Trainer` calls, as an objective's ``wrap_model`` module does
    in pre-training (DDP must see the whole loss computation as its forward)."""

    def __init__(self, model: torch.nn.Module, wiring: TaskType):
        super().__init__()
        self.model = model
        self.wiring = wiring  # not a module: no parameters of its own

    def forward(self, **batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.wiring.loss_sum(self.model, batch), {}


def _micro_batches(idx: list[int], cfg: FinetuneConfig, info: DistInfo) -> list[tuple[list[int], float]]:
    """This rank's micro-batches of global batch ``idx`` as ``(indices, weight)``.

    Micro-batch ``m`` of rank ``r`` holds positions ``[(m * W + r) * B, ... + B)`` of the global
    batch (the pre-training sampler's layout), so the union over ranks and micro-batches is the
    global batch whatever the split. A ragged last batch can leave a slot empty: it then runs the
    batch's first example with weight 0 (no contribution), because under DDP every rank must
    take part in the gradient all-reduce.
    """
    B, W = cfg.batch_size, info.world_size
    out = []
    for m in range(cfg.grad_accum):
        start = (m * W + info.rank) * B
        part = idx[start:start + B]
        out.append((part, 1.0) if part else (idx[:1], 0.0))
    return out


def _train_step(engine: Any, wiring: TaskType, feats: list[dict[str, Any]], idx: list[int], cfg: FinetuneConfig,
                info: DistInfo, dtype: str, device: torch.device, optimizer: Any, model: Any, scaler: Any,
                step: int) -> tuple[float, list[float]]:
    """One optimizer step over global batch ``idx``; ``(mean loss, [targets, tokens, flops])``."""
    from ..training.distributed import all_reduce
    from ..training.loop import accumulate_gradients, clip_gradients

    micro = _micro_batches(idx, cfg, info)
    batches, weights = [], []
    local = torch.zeros(4, dtype=torch.float64)  # targets, tokens, flops, loss_sum
    for part, w in micro:
        b = wiring.collate([feats[i] for i in part])
        b["n_targets"] = wiring.loss_count(b)
        if w:
            local[0] += b["n_targets"]
            local[1] += wiring.n_tokens(b)
            local[2] += _batch_flops(wiring, b)
        batches.append({k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in b.items()})
        weights.append(w)
    counts = all_reduce(local[:3].clone().to(device), info).cpu()
    n_total = float(counts[0])
    parts = accumulate_gradients(engine, batches, n_total, info, dtype, weights, scaler)
    loss_sum = torch.stack([p.double() for p, _ in parts]).sum().reshape(1)
    loss = float(all_reduce(loss_sum, info)[0]) / max(n_total, 1.0)
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        raise ConfigError(f"the loss became {loss} at step {step}; lower --lr (now {cfg.lr})"
                          + (" or try --dtype fp32" if dtype != "fp32" else ""))
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    clip_gradients(model, cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, counts.tolist()


def _agree(seconds: float, info: DistInfo) -> float:
    """The slowest rank's elapsed time, so a time budget stops every rank at the same step."""
    if info.world_size == 1 or not info.enabled:
        return seconds
    from ..training.distributed import all_reduce

    return float(all_reduce(torch.tensor([seconds], dtype=torch.float64, device=info.device), info, op="max")[0])


def _save(out: Path, model: Any, tok: Any, spec: TaskSpec, cfg: FinetuneConfig, res: FinetuneResult,
          data: TaskData, lora_info: dict[str, Any] | None = None) -> None:
    """Write the fine-tuned folder in one atomic step (a complete old or new folder, never half).

    With LoRA the folder holds the adapter alone (``adapter.safetensors`` + ``adapter_config.json``
    naming the base model and its weights' hash) and the merged model in the plain layout, so
    ``evaluate``, ``predict`` and ``convert --to-hf`` read it like a full fine-tune."""
    from ..interop import label_config

    with atomic_dir(out) as tmp:
        if lora_info is not None:
            from .lora import merge_lora, save_adapter

            save_adapter(tmp, model, cfg.lora_config(), cfg.model, lora_info["base_sha256"])
            merge_lora(model)
        ckpts = out / CHECKPOINTS
        if cfg.keep_checkpoints and ckpts.is_dir():
            # hard links: the old folder's checkpoints stay intact until the rename below
            shutil.copytree(ckpts, tmp / CHECKPOINTS, copy_function=os.link,
                            ignore=shutil.ignore_patterns(".*", *LOG_FILES))
        _link_run_log(ckpts, tmp)
        # id2label/label2id: transformers clients name the classes (convert --to-hf carries them)
        from ..checks import tokenizer_record

        model.save_pretrained(tmp, extra_config={**label_config(spec.labels), **tokenizer_record(tok)})
        tok.save(tmp)
        spec.save(tmp)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
        summary = {k: v for k, v in res.to_dict().items() if k not in ("history", "out_dir", "cost")}
        summary.update(task=data.name, derived=data.derived, sizes=data.sizes(), notes=data.notes)
        atomic_write_text(tmp / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
        if res.cost:
            atomic_write_text(tmp / "report.json", json.dumps(res.cost, indent=2) + "\n")


def schema_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation history in the one log schema of pre-training and fine-tuning
    (:mod:`transferlab.training.runlog`): per evaluation a ``train`` row (the mean training loss
    since the last one, lr, tokens, epoch) and, with a validation split, a ``val`` row with the
    metric names unprefixed (``loss`` null: fine-tuning validates by task metrics).

    Args:
        history: :attr:`FinetuneResult.history` rows (``step``, ``train_loss``, ``seconds``,
            ``tokens``, ``lr``, ``epoch``, ``validation_<metric>``).

    Returns:
        Rows ``{step, split, loss, elapsed_s, tokens_per_s, ...}``.
    """
    out: list[dict[str, Any]] = []
    for h in history:
        secs = float(h.get("seconds", 0.0))
        tps = float(h.get("tokens", 0)) / secs if secs > 0 else 0.0
        base = {"step": int(h["step"]), "elapsed_s": secs, "tokens_per_s": tps}
        out.append({**base, "split": "train", "loss": h.get("train_loss"), "lr": h.get("lr"),
                    "tokens": h.get("tokens"), "epoch": h.get("epoch")})
        val = {k.removeprefix("validation_"): v for k, v in h.items() if k.startswith("validation_")}
        if val:
            out.append({**base, "split": "val", "loss": val.pop("loss", None), **val})
    return out


def _open_run_log(root: Path | None, cfg: FinetuneConfig, resumed_step: int) -> Any:
    """The live run log under ``root`` (the checkpoints folder; None: no log, on other ranks or
    without ``out_dir``), as ``pretrain`` keeps its own.

    Args:
        root: the folder the log lives in until the final write.
        cfg: the run's settings (TensorBoard hparams of a fresh run).
        resumed_step: the step a resumed run continues from (0: fresh); later rows are dropped.

    Returns:
        The open :class:`~transferlab.training.runlog.RunLog`, or None.
    """
    if root is None:
        return None
    from ..training.runlog import RunLog

    if not resumed_step:  # no complete checkpoint: events left by a killed earlier attempt go
        shutil.rmtree(root / "tensorboard", ignore_errors=True)
    log = RunLog(root, tensorboard=True, progress=False)
    log.open(keep_upto_step=resumed_step)
    if not resumed_step:
        log.log_hparams({k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict)}, metrics=("loss/train",))
    return log


def _log_rows(log: Any, row: dict[str, Any]) -> None:
    """Append one evaluation's :attr:`FinetuneResult.history` row to the live log (None: no log)."""
    if log is None:
        return
    for r in schema_rows([row]):
        fields = {k: v for k, v in r.items() if k not in ("step", "split", "loss", "elapsed_s", "tokens_per_s")}
        log.row(r["split"], r["step"], r["loss"], r["elapsed_s"], r["tokens_per_s"], **fields)


def _link_run_log(root: Path, folder: Path) -> None:
    """Hard-link the live log under ``root`` into ``folder`` (the one being written): the
    checkpoints keep theirs until the rename, so a kill before it loses nothing."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # a file system without hard links
            shutil.copy2(a, b)

    for name in LOG_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, folder / name, copy_function=link)
        elif src.is_file():
            link(str(src), str(folder / name))
