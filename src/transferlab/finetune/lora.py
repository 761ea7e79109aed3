"""LoRA (Hu et al., 2021): fine-tune low-rank updates of the attention and MLP projections.

Each targeted ``nn.Linear`` (``W``: out x in) gains two trainable matrices ``A`` (r x in, small
random) and ``B`` (out x r, zeros) and computes ``x W^T + b + (alpha / r) * dropout(x) A^T B^T``;
every other backbone weight is frozen, the task head trains in full. At the start ``B = 0``, so
the model is exactly the pre-trained one.

The layers stay ``nn.Linear`` objects under their usual names (their class is switched to
:class:`LoRALinear`, which adds ``lora_A`` / ``lora_B``), so the backbone's state-dict names do
not change: checkpoints, the optimizer and FSDP see the usual layout plus the adapter tensors.

* :func:`merge_lora` folds ``(alpha / r) * B A`` into ``W`` and removes the adapter: the merged
  model has the plain layout (``convert --to-hf`` sees a full fine-tune's tensors).
* :func:`save_adapter` writes only the adapter and the head (``adapter.safetensors``) with
  ``adapter_config.json``: the settings, the base model's name and a hash of its weights;
  :func:`load_adapter` refuses a base model whose weights hash differently, naming both.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: every projection inside a transformer block: fused q/k/v (self-attention), q and k/v
#: (cross-attention), the attention output and both MLP layers
DEFAULT_TARGETS = ("qkv", "q", "kv", "out", "fc1", "fc2")


@dataclass
class LoRAConfig:
    """LoRA settings (``finetune.lora_*``)."""

    r: int = 8
    """Rank of the update (> 0)."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter's input (not on the frozen path)."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Names (last component) of the block linears that get an adapter."""

    def validate(self) -> "LoRAConfig":
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"finetune.lora_r must be a positive integer (the adapter's rank), got {self.r!r}")
        if self.alpha <= 0:
            raise ConfigError(f"finetune.lora_alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune.lora_dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.target_modules) - set(DEFAULT_TARGETS))
        if unknown or not self.target_modules:
            raise ConfigError(f"finetune.lora_targets: unknown {unknown or 'empty list'}; choose from "
                              f"{', '.join(DEFAULT_TARGETS)}")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank trainable update (made by :func:`apply_lora`, not built)."""

    lora_A: nn.Parameter  # (r, in)
    lora_B: nn.Parameter  # (out, r)
    lora_scale: float
    lora_dropout: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.lora_scale


def _block_linears(model: nn.Module, targets: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """``(qualified name, linear)`` of every linear named in ``targets`` inside the backbone's
    :meth:`~transferlab.models.backbone.Backbone.adapter_units`, in module order."""
    from ..models.backbone import backbone_of

    targets = set(targets)
    qualified = {id(m): n for n, m in model.named_modules()}
    out = []
    for unit in backbone_of(model).adapter_units():
        uname = qualified[id(unit)]
        for name, m in unit.named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                out.append((f"{uname}.{name}" if uname else name, m))
    return out


def base_hash(model: nn.Module) -> str:
    """SHA-256 over the backbone's weights (names, shapes, dtypes, bytes), heads and adapters
    excluded: identifies the base model an adapter was trained on."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k.startswith("heads.") or ".lora_" in k:
            continue
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> dict[str, int]:
    """Add adapters to the targeted block linears in place and freeze the rest of the backbone.

    Args:
        model: a TransferModel (its ``heads`` stay trainable).
        cfg: the settings.
        seed: seeds the adapters' ``A`` initialisation (Kaiming-uniform, as in the paper's code).

    Returns:
        ``{"trainable": n, "total": n, "adapted_layers": n}`` parameter counts.
    """
    cfg.validate()
    layers = _block_linears(model, cfg.target_modules)
    if not layers:
        raise ConfigError(f"finetune.lora_targets {cfg.target_modules}: no such layer in the model's blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for _, m in layers:
        a = torch.empty(cfg.r, m.in_features)
        bound = 1.0 / math.sqrt(m.in_features)  # kaiming_uniform_(a=sqrt(5)) of an (r, in) matrix
        a.uniform_(-bound, bound, generator=g)
        m.__class__ = LoRALinear
        m.lora_A = nn.Parameter(a.to(m.weight.device, m.weight.dtype))
        m.lora_B = nn.Parameter(torch.zeros(m.out_features, cfg.r, device=m.weight.device, dtype=m.weight.dtype))
        m.lora_scale = cfg.scale
        m.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
    for p in getattr(model, "heads").parameters():
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "adapted_layers": len(layers)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W += (alpha / r) * B A``) and drop it, in place:
    the model gets back the plain layout and computes the same function. All parameters are
    left trainable (as a plainly loaded model)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.weight += (m.lora_B.float() @ m.lora_A.float()).to(m.weight.dtype) * m.lora_scale
            del m.lora_A, m.lora_B, m.lora_dropout, m.lora_scale
            m.__class__ = nn.Linear
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors and the task head: what training changed."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
            if ".lora_" in k or k.startswith("heads.")}


def save_adapter(directory: str | Path, model: nn.Module, cfg: LoRAConfig, base_model: str, base_sha256: str) -> Path:
    """Write ``adapter.safetensors`` (adapters + head) and ``adapter_config.json`` into ``directory``."""
    from safetensors.torch import save as save_bytes

    from ..utils import atomic_write_bytes, atomic_write_text

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / ADAPTER_WEIGHTS, save_bytes(adapter_state(model)))
    meta = {"format": "transferlab-lora", "version": 1, **asdict(cfg), "base_model": base_model,
            "base_sha256": base_sha256, "heads": getattr(model, "config").heads}
    atomic_write_text(d / ADAPTER_CONFIG, json.dumps(meta, indent=2) + "\n")
    return d


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    p = Path(directory) / ADAPTER_CONFIG
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no LoRA adapter here") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != "transferlab-lora":
        raise CheckpointError(f"{p}: not a transferlab LoRA adapter config")
    return meta


def load_adapter(model: nn.Module, directory: str | Path, base_name: str | None = None) -> nn.Module:
    """Put the adapter saved in ``directory`` onto ``model`` (the base model, with the head the
    adapter was trained with), in place.

    Raises:
        CheckpointError: ``model``'s weights are not the adapter's base (names both), or the files
            are missing or do not fit.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_adapter_config(d)
    got = base_hash(model)
    if got != meta["base_sha256"]:
        raise CheckpointError(
            f"{d}: this LoRA adapter was trained on {meta['base_model']} (weights sha256 {meta['base_sha256'][:12]}), "
            f"not on {base_name or 'this model'} (sha256 {got[:12]})")
    cfg = LoRAConfig(r=meta["r"], alpha=meta["alpha"], dropout=meta["dropout"],
                     target_modules=list(meta["target_modules"])).validate()
    for name, settings in meta.get("heads", {}).items():
        if name not in model.heads:
            kind = dict(settings)
            model.add_head(name, **kind)
    apply_lora(model, cfg)
    p = d / ADAPTER_WEIGHTS
    if not p.is_file():
        raise CheckpointError(f"{p}: missing")
    state = load_file(str(p))
    own = model.state_dict()
    bad = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
    if bad:
        raise CheckpointError(f"{p}: tensors that do not fit the model: {bad[:3]}")
    model.load_state_dict(state, strict=False)
    return model
