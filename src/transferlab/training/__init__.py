"""Training: optimiser + schedules (optim.py), the explicit loop (loop.py), atomic checkpoints
(checkpoint.py), torchrun DDP/FSDP (distributed.py), typed settings (config.py), the one log
schema (runlog.py) and the
``pretrain`` entry point (pretrain.py). Names are imported lazily so ``optim`` stays light."""

from __future__ import annotations

_EXPORTS = {
    "TrainConfig": "config", "Schedule": "config", "DType": "config",
    "Trainer": "loop", "fit": "loop", "TrainingDiverged": "loop", "plot_loss_curve": "loop",
    "pretrain": "pretrain", "pretrain_model_config": "pretrain",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint",
    "init_distributed": "distributed", "GlobalSampler": "distributed",
    "RunLog": "runlog", "read_rows": "runlog", "summary_line": "runlog",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
