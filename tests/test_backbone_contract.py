"""The Backbone contract: consumers ask the backbone, and a family registered in this file (a
1-layer GRU language model) runs pre-training, fine-tuning, features and generation."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from transferlab.config import get_preset
from transferlab.models.model import TransferModel
from transferlab.training.optim import param_groups


def _old_depth_fn(model: nn.Module):
    """``training/optim.py``'s name-based ``_depth_fn`` at 331fe7c, kept as the reference."""
    n = 0
    for name, _ in model.named_parameters():
        m = re.search(r"\.blocks\.(\d+)\.", name)
        if m:
            n = max(n, int(m.group(1)) + 1)

    def depth(name: str) -> tuple[int, int]:
        m = re.search(r"\.blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1, n
        if name.startswith("heads.") or ".pooler." in name or ".final_norm." in name:
            return n + 1, n
        return 0, n

    return depth


def _tiny(preset: str, **kw) -> TransferModel:
    cfg = get_preset(preset, vocab_size=64, d_model=32, n_heads=2, d_ff=64, max_positions=64, **kw)
    if cfg.is_encoder_decoder:
        cfg = cfg.replace(decoder_start_token_id=0)
    return TransferModel(cfg)


@pytest.mark.parametrize("preset,kw", [
    ("bert-mini", {}), ("bert-mini", {"heads": {"lm": {}, "classification": {"num_labels": 3}}}),
    ("gpt-mini", {}), ("bart-mini", {"n_decoder_layers": 3}), ("t5-mini", {"d_head": 16}),
])
def test_param_groups_equal_the_name_based_depths(preset, kw):
    torch.manual_seed(0)
    model = _tiny(preset, **kw)
    decay = 0.8
    old = _old_depth_fn(model)
    groups = param_groups(model, 0.01, 1e-3, layer_lr_decay=decay)
    got = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(got) == {id(p) for p in names.values()}
    for name, p in names.items():
        d, L = old(name)
        assert got[id(p)] == decay ** (L + 1 - d), name


def test_depth_fn_by_name_equals_the_name_based_depths():
    from transferlab.training.optim import depth_fn

    model = _tiny("bart-mini", n_decoder_layers=3)
    old, new = _old_depth_fn(model), depth_fn(model)
    for name, _ in model.named_parameters():
        assert new(name) == old(name), name
    assert new("heads.x") == old("heads.x")
