"""Data parallelism is exact: 2 gloo processes with per-rank batch B follow the same loss
trajectory (fp32, within 1e-5) as 1 process with batch 2B — with DDP and gradient accumulation
(no_sync micro-steps) on an objective whose number of targets varies per example, and with FSDP2
through the real ``torchrun -m transferlab pretrain`` command.

One torchrun launch runs both distributed runs (process start-up dominates the cost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_trainer import TINY_MODEL, ToyLM, prepared_data, tcfg, toy_data, toy_model
from transferlab.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_trainer import ToyLM, tcfg, toy_data, toy_model
from transferlab.cli import main
from transferlab.training.distributed import init_distributed
from transferlab.training.loop import Trainer

info = init_distributed("cpu")
# 1) DDP: per-rank batch 2 x accumulation 2 (no_sync on the first micro-batch)
Trainer(toy_model(), ToyLM(), toy_data(), tcfg(batch_size=2, grad_accum=2, num_threads=1), {ddp!r}, info=info).fit()
# 2) FSDP2 through the command line (pretrain() leaves the process group at the end)
sys.exit(main({argv!r}))
"""


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def _clm_argv(data: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["pretrain", "--preset", "gpt-mini", "--objective", "clm", "--data", str(data), "--out", str(out),
            "--max-steps", "5", "--batch-size", str(batch), "--seq-len", "32", "--dtype", "fp32", "--lr", "3e-3",
            *extra, *TINY_MODEL, "train.num_threads=1", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "train.eval_every=5"]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    from transferlab.cli import main

    data = prepared_data(tmp_path)
    # single-process references, in this process
    Trainer(toy_model(), ToyLM(), toy_data(), tcfg(batch_size=8), tmp_path / "ddp-ref").fit()
    assert main(_clm_argv(data, tmp_path / "fsdp-ref", 8)) == 0

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER).format(
        tests=str(TESTS), ddp=str(tmp_path / "ddp"), argv=_clm_argv(data, tmp_path / "fsdp", 4, "--fsdp")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]

    ddp, ddp_ref = _losses(tmp_path / "ddp"), _losses(tmp_path / "ddp-ref")
    assert len(ddp) == 6 and np.allclose(ddp, ddp_ref, rtol=0, atol=1e-5), (ddp, ddp_ref)
    fsdp, fsdp_ref = _losses(tmp_path / "fsdp"), _losses(tmp_path / "fsdp-ref")
    assert len(fsdp) == 5 and np.allclose(fsdp, fsdp_ref, rtol=0, atol=1e-5), (fsdp, fsdp_ref)
    assert fsdp[-1] < fsdp[0]

    # the FSDP run's artefacts are whole: gathered weights, a usable model, a 2-rank checkpoint
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 5 * 8 * 32
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "rng-rank0.json").is_file() and (ckpt / "rng-rank1.json").is_file()
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "fsdp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp-ref" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
