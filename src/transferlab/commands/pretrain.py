"""``transferlab pretrain``: pre-train a preset (or continue a saved model) on prepared shards."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

_EPILOG = """\
overrides (key=value, after the flags; dotted sections):
  model.*      architecture of a preset, e.g. model.n_layers=2 model.dropout=0.1 model.attn_impl=sdpa
  train.*      any TrainConfig field, e.g. train.lr=1e-3 train.schedule=cosine train.warmup=0.1
  objective.*  the objective's settings, e.g. objective.mask_prob=0.2 objective.whole_word=true

examples:
  transferlab pretrain --preset bert-mini --objective mlm --data runs/data --out runs/bert --max-minutes 10
  transferlab pretrain --preset gpt-mini --objective clm --data runs/data --out runs/gpt --max-steps 2000 \\
      train.schedule=cosine train.min_lr_ratio=0.1
  transferlab pretrain --init builtin:minilm --objective mlm --data runs/minilm-data --out runs/minilm-cont \\
      --max-steps 500 --lr 1e-4
  torchrun --nproc_per_node=2 -m transferlab pretrain --preset bert-mini --objective mlm \\
      --data runs/data --out runs/bert-ddp --max-steps 1000

A run folder holds config.json (the resolved config), metrics.jsonl, tensorboard/, checkpoints/,
loss_curve.png, summary.json and model/ (weights + tokenizer, loadable by finetune). A killed run
continues with the same command plus --resume, ending bit-identical to an uninterrupted one. A run
stopped by SIGTERM saves a checkpoint, writes no model/ and exits 143; a start that fails (bad data,
bad settings) leaves nothing behind. --out must not hold anything but an earlier run (docs/outputs.md).
"""

# TrainConfig fields that are also flags (--max-steps ...), in --help order; the rest: train.KEY=VALUE
_TRAIN_FLAGS = ("max_steps", "max_minutes", "max_tokens", "save_every", "eval_every", "batch_size", "seq_len", "lr",
                "grad_accum", "dtype", "seed", "fsdp", "compile", "gradient_checkpointing")


def register(subparsers: Any) -> None:
    from ..cli import add_config_arguments
    from ..training.config import TrainConfig

    p = subparsers.add_parser(
        "pretrain", help="pre-train a model with an objective (mlm, nsp, electra, clm, denoise, span-corruption, plm, mtlm, mass)",
        description="Pre-train a preset, or continue pre-training a saved/converted model, on data prepared "
                    "with `transferlab prepare`. Runs under torchrun unchanged (DDP, or FSDP with --fsdp).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="model preset (bert-mini, gpt-mini, bart-mini, t5-mini, ...; see `transferlab info`)")
    p.add_argument("--init", metavar="DIR", help="continue pre-training a saved or converted model (a model folder, "
                                                "an HF folder, or builtin:minilm) instead of a fresh preset")
    p.add_argument("--objective",
                   help="mlm | nsp (mlm+nsp) | electra | clm | denoise | span-corruption | plm | mtlm | mass")
    p.add_argument("--data", required=True, metavar="DIR", help="folder written by `transferlab prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start over in --out even if it holds an earlier run (deleted) or other files (kept)")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON with optional preset/init/objective and "
                                                   "model/train/objective sections (flags and key=value win)")
    # the common TrainConfig fields as flags, generated from the config (help = field docstrings)
    add_config_arguments(p, TrainConfig, only=tuple(_TRAIN_FLAGS), config=False, overrides=False,
                         metavars={"save_every": "STEPS", "eval_every": "STEPS"})
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides: model.n_layers=2 train.lr=1e-3 objective.mask_prob=0.2")
    from ..cost import add_cost_arguments

    add_cost_arguments(p)
    p.set_defaults(func=run)


def _sections(items: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    from ..config import _split
    from ..errors import ConfigError

    model, train, objective = [], [], {}
    for item in items:
        key, value = _split(item)
        section, _, rest = key.partition(".")
        if section == "model" and rest:
            model.append(f"{key}={value}")  # keep the section: error messages name model.X / train.X
        elif section == "train" and rest:
            train.append(f"{key}={value}")
        elif key == "data.language_alpha":  # the spelling: the sampler is a data setting
            train.append(f"train.language_alpha={value}")
        elif section == "objective" and rest:
            objective[rest] = value
        else:
            raise ConfigError(f"override {item!r}: expected model.KEY=VALUE, train.KEY=VALUE, "
                              "objective.KEY=VALUE or data.language_alpha=A")
    return model, train, objective


def run(args: argparse.Namespace) -> int:
    import json

    from ..config import apply_overrides, in_file, load_config_file
    from ..errors import ConfigError
    from ..training.config import TrainConfig
    from ..training.pretrain import pretrain

    file_cfg: dict[str, Any] = load_config_file(args.config) if args.config else {}
    unknown = set(file_cfg) - {"preset", "init", "objective", "model", "train"}
    if unknown:
        raise ConfigError(f"{args.config}: unknown section(s) {', '.join(sorted(unknown))}; "
                          "expected preset, init, objective, model, train")
    for key, kinds, want in (("preset", (str,), "a preset name"), ("init", (str,), "a model folder"),
                             ("objective", (str, dict), "an objective name or a mapping with name and settings"),
                             ("model", (dict,), "a mapping of model fields"), ("train", (dict,), "a mapping of train fields")):
        if file_cfg.get(key) is not None and not isinstance(file_cfg[key], kinds):
            raise ConfigError(f"{args.config}: {key}: expected {want}, got {file_cfg[key]!r}")
    preset = args.preset or file_cfg.get("preset")
    init = args.init or file_cfg.get("init")
    if bool(preset) == bool(init):
        raise ConfigError("give exactly one of --preset NAME (a fresh model) or --init DIR (continue a saved model)")
    obj_file = file_cfg.get("objective") or {}
    if isinstance(obj_file, str):
        obj_file = {"name": obj_file}
    obj_settings = {k: v for k, v in obj_file.items() if k != "name"}
    objective = args.objective or obj_file.get("name")
    if not objective:
        raise ConfigError("no objective: pass --objective (mlm, nsp, electra, clm, denoise, span-corruption, plm, mtlm, mass)")

    model_o, train_o, obj_o = _sections(args.overrides)
    model_o = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (file_cfg.get("model") or {}).items()] + model_o

    with in_file(args.config or ""):
        train = TrainConfig.from_dict(file_cfg["train"]) if file_cfg.get("train") else TrainConfig()
    for name in _TRAIN_FLAGS:
        v = getattr(args, name, None)
        if v is not None:
            setattr(train, name, v)
    if train_o:
        apply_overrides(train, train_o, prefix="train")
    train.validate()
    obj_settings.update(obj_o)

    from ..cost import cost_config_from_args
    from ..outputs import Output
    from ..training.checkpoint import latest_checkpoint

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 holds the lock for the job
    out = Path(args.out)
    # the run folder is written in place (checkpoints accumulate); a start that fails before the
    # first checkpoint removes what it created, so the corrected command is not refused
    claim = Output(out, "pretrain", force=args.force, inputs=[args.data, init], locked=main, cleanup=main,
                   keep_if=lambda: latest_checkpoint(out / "checkpoints") is not None)
    try:
        with claim, _terminate_as_exception():
            summary = pretrain(preset, objective, obj_settings, train, args.data, args.out, resume=args.resume,
                               init=init, model_overrides=model_o, cost=cost_config_from_args(args),
                               force=args.force)
    except Terminated:
        ck = latest_checkpoint(out / "checkpoints")
        print("error: stopped by SIGTERM; " + (f"last checkpoint {ck}; continue with the same command plus --resume"
                                                 if ck else "nothing to resume (no checkpoint yet)"), file=sys.stderr)
        return 143
    if summary.get("interrupted"):
        if main:
            ck = summary.get("checkpoint") or "none"
            print(f"error: stopped by SIGTERM after step {summary['steps']}: not finished, no model/ written; "
                  f"last checkpoint {ck}; continue with the same command plus --resume", file=sys.stderr)
        return 143  # 128 + SIGTERM, as if the signal had ended the process
    if summary.get("model_dir"):  # main process
        from ..training.runlog import summary_line

        print(summary_line(summary))
        print(f"model: {summary['model_dir']}")
    return 0


class Terminated(BaseException):
    """SIGTERM outside the training loop (which handles it itself: checkpoint, then stop)."""



@contextlib.contextmanager
def _terminate_as_exception():
    """Turn SIGTERM while the run starts or saves into an exception, so the output claim removes
    a half-started run; the CLI then exits 143. The trainer installs its own handler while it trains."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
