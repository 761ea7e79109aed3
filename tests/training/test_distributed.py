"""Data parallelism is exact: 2 gloo processes with per-rank batch B follow the same loss
trajectory (fp32, within 1e-5) as 1 process with batch 2B — with DDP and gradient accumulation
(no_sync micro-steps) on an objective whose number of targets varies per example, and with FSDP2
through the real ``torchrun -m transferlab pretrain`` command. A killed FSDP run resumes
bit-identically.

One torchrun launch runs all three (process start-up dominates the cost).
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

from tiny import TINY_MODEL, ToyLM, prepared_data, tcfg, toy_data, toy_model
from transferlab.training.loop import Trainer

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # tests/: tiny.py

WORKER = """
import json, sys, time
sys.path.insert(0, {tests!r})
import torch
from tiny import ToyLM, tcfg, toy_data, toy_model
from transferlab.cli import main
from transferlab.training.distributed import barrier, cleanup_distributed, init_distributed
from transferlab.training.loop import Trainer

info = init_distributed("cpu")


def ddp():  # per-rank batch 2 x accumulation 2 (no_sync on the first micro-batch)
    Trainer(toy_model(), ToyLM(), toy_data(), tcfg(batch_size=2, grad_accum=2, num_threads=1), {ddp!r},
            info=info).fit()


def fsdp_resume():  # FSDP2 with dropout, random collation, bf16: killed after step 4, resumed
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    def make(out, **kw):
        cfg = tcfg(batch_size=2, grad_accum=2, max_steps=6, save_every=3, num_threads=1, fsdp=True, dtype="bf16")
        return Trainer(toy_model(dropout=0.1), ToyLM(random_cut=True), toy_data(), cfg, out, info=info, **kw)

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["step"] == 4:
            raise Killed

    full = make({resume!r} + "/full")
    full.fit()
    try:
        make({resume!r} + "/killed", on_step=[kill]).fit()
    except Killed:
        pass
    resumed = make({resume!r} + "/killed")
    resumed.fit(resume=True)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    a, b = get_model_state_dict(full.model, options=opts), get_model_state_dict(resumed.model, options=opts)
    if info.is_main:
        same = sorted(k for k in a if torch.equal(a[k], b[k]))
        json.dump({{"tensors": len(a), "identical": len(same)}}, open({resume!r} + "/result.json", "w"))


ddp()
barrier(info)
fsdp_resume()
barrier(info)
rc = main({argv!r})  # FSDP2 through the command line
# leaving the group waits for every rank: rank 1 must not exit while rank 0 still works (a gloo
# process that does can abort at exit, failing the finished run)
if info.is_main:
    time.sleep(1.0)
t0 = time.perf_counter()
cleanup_distributed()
if not info.is_main:
    json.dump({{"cleanup_s": time.perf_counter() - t0}}, open({resume!r} + "/cleanup.json", "w"))
sys.exit(rc)
"""


def _first_failure(out: str) -> str:
    """The workers' own error lines, before torchrun's summary of which rank died."""
    head = out.split("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")[0]
    lines = [l for l in head.splitlines() if l.strip() and "elastic" not in l]
    return "\n".join(lines[-60:])[-4000:]


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
        tests=str(TESTS), ddp=str(tmp_path / "ddp"), resume=str(tmp_path / "resume"),
        argv=_clm_argv(data, tmp_path / "fsdp", 4, "--fsdp")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    (tmp_path / "torchrun.log").write_text(out)
    assert res.returncode == 0, _first_failure(out)

    ddp, ddp_ref = _losses(tmp_path / "ddp"), _losses(tmp_path / "ddp-ref")
    assert len(ddp) == 6 and np.allclose(ddp, ddp_ref, rtol=0, atol=1e-5), (ddp, ddp_ref)
    fsdp, fsdp_ref = _losses(tmp_path / "fsdp"), _losses(tmp_path / "fsdp-ref")
    assert len(fsdp) == 5 and np.allclose(fsdp, fsdp_ref, rtol=0, atol=1e-5), (fsdp, fsdp_ref)
    assert fsdp[-1] < fsdp[0]

    # resuming a killed FSDP run is bit-identical too (sharded optimizer state, per-rank RNG)
    result = json.loads((tmp_path / "resume" / "result.json").read_text())
    assert result["tensors"] > 10 and result["identical"] == result["tensors"], result

    # rank 1 waited in cleanup_distributed for rank 0 (which arrived 1 s late)
    assert json.loads((tmp_path / "resume" / "cleanup.json").read_text())["cleanup_s"] > 0.5

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
