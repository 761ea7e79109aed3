"""runtime.py: the one device and dtype choice; interop.loading: the one loader."""

import pytest
import torch

from transferlab.errors import CheckpointError, ConfigError
from transferlab.interop.loading import load_pretrained, model_dir
from transferlab.runtime import DTYPES, cpu_has_native_bf16, resolve_dtype, torch_dtype


def test_dtype_spellings():
    assert DTYPES == ("auto", "bf16", "fp16", "fp32")
    cpu = torch.device("cpu")
    assert resolve_dtype("fp16", cpu) == "fp16"
    assert resolve_dtype("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert torch_dtype("bf16", cpu) is torch.bfloat16 and torch_dtype("fp32", cpu) is torch.float32
    with pytest.raises(ConfigError, match="--dtype float32: expected auto, bf16, fp16, fp32"):
        resolve_dtype("float32", cpu)


def test_loader_names_the_folder_it_cannot_use(tmp_path):
    with pytest.raises(CheckpointError, match="not a model directory"):
        model_dir(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="unknown built-in model 'builtin:nope'"):
        load_pretrained("builtin:nope")
    with pytest.raises(ConfigError, match="--device gpu"):
        load_pretrained(tmp_path, device="gpu")  # the device is checked before anything is read
