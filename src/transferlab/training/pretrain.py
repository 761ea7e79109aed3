"""``pretrain``: prepared shards + a preset (or a saved model) + an objective -> a pre-trained model.

The library function behind ``transferlab pretrain``. It

1. opens the prepared data (``TokenShards``) and takes the vocabulary size and special ids
   (pad/bos/eos/decoder start) from the tokenizer the data was made with;
2. builds the model (a preset with the pre-training defaults below, or ``init``: a saved or
   converted model, e.g. ``builtin:minilm``, whose tokenizer must be the data's) and checks the
   objective fits it (clm needs a decoder, denoise an encoder-decoder, ...);
3. writes the resolved config to ``<out>/config.json`` (on ``resume`` it must match);
4. trains with :class:`~transferlab.training.loop.Trainer` (DDP/FSDP under torchrun);
5. saves ``<out>/model`` (``save_pretrained`` + the tokenizer, so fine-tuning loads it
   directly), ``<out>/loss_curve.png`` and ``<out>/summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, apply_overrides, get_preset, to_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..objectives.base import Objective
from ..runtime import resolve_device
from ..specials import SpecialIds
from ..utils import atomic_write_text
from .config import TrainConfig

#: Settings that make pre-training faster on this kind of hardware, applied to presets before
#: user overrides (measured in benchmarks/train_throughput.py, see BENCHMARKS.md):
#: ``attn_impl="math"``: plain matmul attention beats SDPA at length <= 512 in bf16 on CPUs;
#: no dropout during pre-training (Cramming, Geiping & Goldstein 2023: with a single pass over
#: the data dropout only slows learning down); fine-tuning sets its own dropout.
PRETRAIN_MODEL_DEFAULTS_CPU: dict[str, Any] = {"attn_impl": "math", "dropout": 0.0, "attention_dropout": 0.0}
PRETRAIN_MODEL_DEFAULTS_GPU: dict[str, Any] = {"attn_impl": "sdpa", "dropout": 0.0, "attention_dropout": 0.0}


def pretrain_model_config(preset: str | ModelConfig, overrides: list[str] | dict[str, str] | None = None,
                          device: str | torch.device | None = None,
                          heads: dict[str, dict] | None = None) -> ModelConfig:
    """A preset with the pre-training defaults, then the user's ``model.*`` overrides.

    Args:
        preset: a preset name (``bert-mini``) or a ModelConfig to start from.
        overrides: dotted overrides (``["model.n_layers=2"]``; the ``model.`` prefix is optional).
        device: where training runs (picks the attention implementation); default: CUDA if available.
        heads: the heads the objective needs; they replace the preset's (which serve the preset's
            usual objective) unless an override sets ``model.heads``.

    Returns:
        The ModelConfig (vocabulary and special ids are set later from the data's tokenizer).
    """
    cfg = get_preset(preset) if isinstance(preset, str) else dataclasses.replace(preset)
    cuda = resolve_device(device).type == "cuda"
    for k, v in (PRETRAIN_MODEL_DEFAULTS_GPU if cuda else PRETRAIN_MODEL_DEFAULTS_CPU).items():
        setattr(cfg, k, v)
    if heads:
        cfg.heads = json.loads(json.dumps(heads))
    if overrides:
        apply_overrides(cfg, overrides, prefix="model")
    return cfg.validate()


def _finetune_settings(preset: str, overrides: list[str] | dict[str, str] | None) -> dict[str, Any]:
    """The preset's values of the pre-training-only defaults the user did not override: they go
    into the saved model's config, so fine-tuning uses the usual dropout (Cramming does the same)."""
    keys = {str(o).split("=", 1)[0].strip().removeprefix("model.")
            for o in (overrides if isinstance(overrides, list) else list(overrides or {}))}
    base = get_preset(preset)
    return {k: getattr(base, k) for k in ("dropout", "attention_dropout") if k not in keys}


def fit_config_to_tokenizer(cfg: ModelConfig, tok: Any, objective: Objective | None = None) -> ModelConfig:
    """Vocabulary size and special ids from the tokenizer (in place; returns ``cfg``).

    Special ids by :meth:`~transferlab.specials.SpecialIds.resolve` from the tokenizer; the
    decoder start token of encoder-decoders is the one the objective's collator starts decoding
    with (``objective.start``: BART eos, T5 pad), else the rule's default.

    Args:
        cfg: the model config to fit.
        tok: the data's tokenizer.
        objective: the objective that will train the model (for its decoder start), or None.

    Returns:
        ``cfg``, validated.
    """
    cfg.vocab_size = int(tok.vocab_size)
    start = objective.start if objective is not None and cfg.is_encoder_decoder else None
    ids = SpecialIds.resolve(tokenizer=tok, decoder_start=start)
    fields = ids.config_fields()
    if not cfg.is_encoder_decoder:
        fields.pop("decoder_start_token_id", None)  # decoders keep the preset's (unused) value
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg.validate()


def _check_init_tokenizer(init: str, model: Any, tok: Any, data_dir: Path) -> None:
    """The model being continued must use the data's tokenizer (same ids for the same text): the
    tokenizer saved beside it, else the record its ``config.json`` keeps of it, else the vocabulary size."""
    from ..checks import check_tokenizer_record
    from ..tokenizer import Tokenizer

    init_tok = None
    if init.startswith("builtin:") or (Path(init) / "tokenizer.json").is_file() or (Path(init) / "vocab.txt").is_file():
        try:
            init_tok = Tokenizer.from_pretrained(init)
        except DataError:
            init_tok = None
    data_fp = tok.fingerprint
    if init_tok is not None and init_tok.fingerprint != data_fp:
        raise ConfigError(
            f"--init {init}: its tokenizer (fingerprint {init_tok.fingerprint[:12]}, {init_tok.vocab_size} tokens) "
            f"is not the one {data_dir} was prepared with (fingerprint {data_fp[:12]}, {tok.vocab_size} tokens); "
            f"re-run `transferlab prepare --tokenizer {init}`")
    if not init.startswith("builtin:") and Path(init).is_dir():  # a folder without its tokenizer still has the record
        check_tokenizer_record(init, tok, f"--init {init} with the data in {data_dir}")
    if model.config.vocab_size < tok.vocab_size or (init_tok is None and model.config.vocab_size != tok.vocab_size):
        raise ConfigError(
            f"--init {init}: model.vocab_size={model.config.vocab_size} does not match the vocabulary of the "
            f"tokenizer {data_dir} was prepared with ({tok.vocab_size} tokens); prepare the data with the model's tokenizer")


def _load_init(init: str, overrides: list[str] | dict[str, str] | None, objective: Objective) -> Any:
    """Load a saved/converted model; apply model overrides (dropout, attn_impl, ...) by rebuilding
    it from the overridden config and loading the weights; add heads the objective needs."""
    from ..interop.loading import from_pretrained
    from ..models.model import TransferModel, check_state_dict

    src = from_pretrained(init)
    cfg = dataclasses.replace(src.config)
    cfg.heads = json.loads(json.dumps(cfg.heads))
    if overrides:
        apply_overrides(cfg, overrides, prefix="model")
        model = TransferModel(cfg)
        state = src.state_dict()
        check_state_dict(model, state, f"--init {init} with model overrides")
        model.load_state_dict(state)
    else:
        model = src
    for name, settings in objective.heads.items():
        if name not in model.heads:  # e.g. MiniLM has no MLM head: start one fresh
            model.add_head(name, **dict(settings))
    return model


def resolved_config(model_cfg: ModelConfig, objective: Objective, objective_name: str, train_cfg: TrainConfig,
                    data_dir: Path, shards: Any, init: str | None, world_size: int) -> dict[str, Any]:
    """Everything that decides the numbers of a run, as written to ``<out>/config.json``."""
    from .._version import __version__

    ocfg = objective.config
    return {
        "transferlab_version": __version__,
        "model": model_cfg.to_dict(),
        "objective": {"name": objective.name or objective_name,
                      **(to_dict(ocfg) if dataclasses.is_dataclass(ocfg) else {})},
        "train": train_cfg.to_dict(),
        "data": {"dir": str(Path(data_dir).resolve()),
                 "tokenizer_fingerprint": shards.meta.get("tokenizer", {}).get("fingerprint"),
                 "train_tokens": shards.n_tokens},
        "init": init,
        "world_size": world_size,
    }


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields that differ between two resolved configs, ignoring ones a resume may change."""
    skip = {("train", k) for k in TrainConfig.RESUME_SAFE} | {("data", "dir"), ("transferlab_version",)}
    diffs = []
    for sec in sorted(set(old) | set(new)):
        a, b = old.get(sec), new.get(sec)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if (sec, k) not in skip and a.get(k) != b.get(k):
                    diffs.append(f"{sec}.{k}: {a.get(k)!r} in the run, {b.get(k)!r} now")
        elif (sec,) not in skip and a != b:
            diffs.append(f"{sec}: {a!r} in the run, {b!r} now")
    return diffs


def pretrain(model_cfg: ModelConfig | str | None, objective_name: str, objective_settings: dict[str, Any] | None,
             train_cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
             init: str | None = None, model_overrides: list[str] | dict[str, str] | None = None,
             cost: Any = None, force: bool = False) -> dict[str, Any]:
    """Pre-train a model on prepared shards; see the module docstring.

    Args:
        model_cfg: a ModelConfig, a preset name (gets :data:`PRETRAIN_MODEL_DEFAULTS_CPU`/GPU and
            ``model_overrides``), or None with ``init``.
        objective_name: one of :func:`~transferlab.objectives.objective_names` (or an alias).
        objective_settings: fields of the objective's config (``{"mask_prob": 0.2}``).
        train_cfg: a :class:`TrainConfig` (``dtype=auto`` is resolved and recorded).
        data_dir: a folder written by ``transferlab prepare``.
        out_dir: the run folder (config.json, metrics.jsonl, tensorboard/, checkpoints/, model/).
        resume: continue from the latest checkpoint in ``out_dir`` (bit-identical to a run that
            was never interrupted, for step/token budgets).
        init: continue pre-training a saved or converted model (a folder or ``builtin:minilm``).
        model_overrides: dotted ``model.*`` overrides (applied to the preset or the init model).
        cost: a :class:`~transferlab.cost.CostConfig` (price, grid intensity, energy tracking);
            the run's cost report lands in ``<out>/report.json`` and ``summary["cost"]``.
        force: without ``resume``: start over in a folder that holds an earlier run (its
            config, logs, checkpoints and model are deleted; other files are left alone).

    Returns:
        The run summary (also written to ``<out>/summary.json``): steps, tokens, time, tokens/s,
        final train/validation loss and perplexity, why it stopped, paths. A run stopped by
        SIGTERM returns ``interrupted=True`` with its last ``checkpoint`` and writes neither
        ``model/`` nor ``summary.json`` (it is not finished: continue it with ``resume=True``).

    Raises:
        ConfigError / DataError / CheckpointError: user mistakes, each with a one-line message.
    """
    from ..data import TokenShards
    from ..models.model import TransferModel
    from ..objectives import build_objective
    from .distributed import barrier, cleanup_distributed, init_distributed
    from .loop import Trainer, plot_loss_curve, resolve_dtype

    train_cfg = dataclasses.replace(train_cfg).validate()
    train_cfg.require_budget()
    data_dir, out = Path(data_dir), Path(out_dir)
    shards = TokenShards(data_dir, "train")
    if shards.n_tokens == 0:
        raise DataError(f"{data_dir}: the train split has no tokens; prepare a non-empty corpus")
    tok = shards.tokenizer
    meta_fp = shards.meta.get("tokenizer", {}).get("fingerprint")
    if meta_fp and meta_fp != tok.fingerprint:
        raise DataError(f"{data_dir}/tokenizer: is not the tokenizer meta.json says the shards were made with; "
                        "re-run `transferlab prepare --force`")
    objective = build_objective(objective_name, tok, **(objective_settings or {}))

    def run(info) -> dict[str, Any]:
        saved_settings: dict[str, Any] = {}
        train_cfg.dtype = resolve_dtype(train_cfg.dtype, info.device)  # record what actually runs
        # model: same initial weights on every rank (DDP also broadcasts rank 0's at wrap time)
        torch.manual_seed(train_cfg.seed)
        if init:
            model = _load_init(init, model_overrides, objective)
            _check_init_tokenizer(init, model, tok, data_dir)
        else:
            if model_cfg is None:
                raise ConfigError("pretrain needs a preset (--preset NAME) or a model to continue (--init DIR)")
            need = objective.heads
            if isinstance(model_cfg, str):
                cfg = pretrain_model_config(model_cfg, model_overrides, info.device, heads=need)
                saved_settings = _finetune_settings(model_cfg, model_overrides)
            else:  # an explicit config: keep its heads, add the ones the objective needs
                cfg = dataclasses.replace(model_cfg, heads=json.loads(json.dumps(model_cfg.heads)))
                if model_overrides:
                    apply_overrides(cfg, model_overrides, prefix="model")
                for name, settings in need.items():
                    cfg.heads.setdefault(name, dict(settings))
            fit_config_to_tokenizer(cfg, tok, objective)
            objective.check_model(cfg)
            model = TransferModel(cfg)
        objective.check_model(model.config)
        if train_cfg.init_embeddings:  # word2vec vectors into the token table (a resume loads its checkpoint over them)
            from ..models.init_embeddings import init_embeddings

            init_embeddings(model, tok, train_cfg.init_embeddings, quiet=not info.is_main)
        if train_cfg.seq_len > model.config.max_positions and model.config.position in ("learned", "sinusoidal"):
            raise ConfigError(f"train.seq_len={train_cfg.seq_len} is longer than model.max_positions="
                              f"{model.config.max_positions}")

        resolved = resolved_config(model.config, objective, objective_name, train_cfg, data_dir, shards, init,
                                   info.world_size)
        cfg_file = out / "config.json"
        from .checkpoint import latest_checkpoint

        has_run = latest_checkpoint(out / "checkpoints") is not None
        if resume and not cfg_file.is_file() and not has_run:
            raise CheckpointError(f"--resume {out}: holds no run to resume (no config.json, no checkpoint); "
                                  "drop --resume to start one")
        if resume and not has_run and info.is_main:
            print(f"note: {out} has no checkpoint yet: the run starts again from step 0", file=sys.stderr)
        if resume and cfg_file.is_file():
            from ..config import read_json

            old = read_json(cfg_file, dict, "run config", CheckpointError)
            diffs = _config_diff(old, resolved)
            if diffs:
                raise ConfigError(f"--resume {out}: this command differs from the run's config.json: "
                                  + "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""))
        elif not resume and (has_run or cfg_file.is_file()):
            if not force:
                raise ConfigError(f"{out}: already holds a run (config.json/checkpoints); pass --resume to continue "
                                  "it, --force to start over (deleting it), or choose a new --out")
            if info.is_main:
                from ..outputs import remove_own

                gone = remove_own(out, "pretrain")
                print(f"note: --force: deleted the earlier run in {out} ({', '.join(gone)})", file=sys.stderr)
        barrier(info)  # every rank has checked the folder before rank 0 writes into it
        if info.is_main:
            atomic_write_text(cfg_file, json.dumps(resolved, indent=2) + "\n")

        train_ds = objective.dataset(shards, train_cfg.seq_len)
        if len(train_ds) == 0:
            raise DataError(f"{data_dir}: the train split ({shards.n_tokens} tokens) is shorter than one "
                            f"window of train.seq_len={train_cfg.seq_len}")
        val_ds = None
        try:
            val_ds = objective.dataset(TokenShards(data_dir, "validation"), train_cfg.seq_len)
            if len(val_ds) == 0:
                val_ds = None
        except DataError:
            val_ds = None
        if val_ds is None and info.is_main:
            print(f"warning: {data_dir} has no validation windows of {train_cfg.seq_len} tokens; "
                  "no validation loss will be reported", file=sys.stderr)

        trainer = Trainer(model, objective, train_ds, train_cfg, out, val_data=val_ds, info=info)
        tracker = _cost_tracker(trainer, model, objective, train_cfg, out, cost, info) if info.is_main else None
        summary = trainer.fit(resume=resume)
        if summary.get("stopped_by") == "signal":  # SIGTERM: not finished; keep the checkpoint, write no model
            if tracker is not None:
                summary["cost"] = tracker.stop()
            summary.update(interrupted=True, out_dir=str(out))
            return summary
        final = trainer.export_model()
        if tracker is not None:
            from ..cost import format_report

            summary["cost"] = tracker.stop()
            # without the cost block's wall-clock throughput row: the run's one summary line
            # (runlog.summary_line, printed by the command) reports time and tokens/s
            print(format_report(summary["cost"], throughput=False))
        if info.is_main:
            from ..utils import atomic_dir

            if saved_settings:  # e.g. the preset's dropout, for fine-tuning (pre-training ran without)
                final.config = dataclasses.replace(final.config, **saved_settings)
            model_dir = out / "model"
            with atomic_dir(model_dir) as tmp:  # weights, config and tokenizer together, or none of them
                from ..checks import tokenizer_record

                final.save_pretrained(tmp, extra_config=tokenizer_record(tok))  # the model knows its tokenizer
                tok.save(tmp)
            png = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png",
                                  f"{objective_name} · {model_cfg if isinstance(model_cfg, str) else init or 'model'}")
            summary.update(out_dir=str(out), model_dir=str(model_dir), loss_curve=str(png) if png else None,
                           params=final.num_parameters(), objective=objective.name or objective_name)
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    # The run's modules (DDP reducer, FSDP state) hold the process group: run() returns, and so
    # releases them, before the group we joined is destroyed. A group the caller set up is theirs.
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed()
    try:
        summary = run(info)
    except BaseException:
        if ours:
            cleanup_distributed(wait=False)
        raise
    if ours:
        cleanup_distributed()
    return summary


def _cost_tracker(trainer: Any, model: Any, objective: Objective, train_cfg: TrainConfig, out: Path, cost: Any,
                  info: Any) -> Any:
    """A started CostTracker fed by the trainer's step records (main process only).

    Step records carry the global (all-reduced) token and target counts, so one tracker on rank 0
    accounts for the whole job. The objective bills its own steps when the default estimate
    cannot see its shapes (``step_flops``: ELECTRA's generator, plm's query slots, mass's short
    decoder); otherwise ``step_tokens / seq_len`` sequences are billed, with only the targets
    projected to the vocabulary for ``sparse_targets`` objectives (MLM-style).
    """
    from ..cost import CostConfig, CostTracker

    enc_dec = model.config.is_encoder_decoder
    T = train_cfg.seq_len
    tracker = CostTracker(model, kind="pretrain", out_dir=out, config=cost or CostConfig(), dtype=train_cfg.dtype,
                          device=info.device, seq_len=T, decoder_len=T if enc_dec else None)

    def on_step(record: dict[str, Any]) -> None:
        tokens = int(record.get("step_tokens", 0))
        flops = objective.step_flops(model.config, T, tokens, float(record.get("n_targets", 0)))
        if flops is not None:
            tracker.add(tokens=tokens, flops=flops)
            return
        n_pred = float(record["n_targets"]) if objective.sparse_targets and "n_targets" in record else None
        tracker.add(tokens=tokens, flops=None, n_predicted=n_pred)

    trainer.on_step.append(on_step)
    return tracker.start()
