"""Every pre-training objective: 4 x 8 accumulation == one batch of 32 and 2 gloo ranks == one
process, within 1e-6 in fp32, because every random choice is keyed by (seed, global example
position) or, for what is drawn once per step (mtlm's attention mode), by (seed, step).

mlm, electra and denoise are also covered by tests/objectives/test_example_rng.py; this file holds
the rest and the collate-level check for all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import golden_run_losses as _losses
from tiny import golden_shards as shards
from tiny import golden_specials as specials
from transferlab.objectives import build_objective
from transferlab.objectives.example_rng import ExampleRNG, example_rng
from transferlab.training.distributed import GlobalSampler

ALL = ["mlm", "nsp", "electra", "clm", "denoise", "span-corruption", "plm", "mtlm", "mass"]
# mtlm's mode is drawn per step: exact only once the trainer passes the step's first stream
# position to example_rng (training/loop.py, Trainer._collate: step_start=...); until then a mode is
# drawn per micro-batch and the trajectories differ
def _worst(got: list[float], ref: list[float]) -> float:
    # relative beyond 1: ELECTRA's loss is ~39, where one fp32 ulp is already 3.8e-6
    return max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(got, ref))


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("mlm", "electra", "denoise")])
def test_accumulation_4x8_equals_32(name, tmp_path):
    big = _losses(name, tmp_path / "big", 32, 1)
    acc = _losses(name, tmp_path / "acc", 8, 4)
    assert len(big) == len(acc) == 3
    assert _worst(acc, big) < 1e-6, (name, big, acc)


def _equal_rows(whole: dict, part: dict, lo: int, what: str) -> None:
    """``part``'s tensors are rows ``lo:lo+B`` of ``whole``'s (cut to part's widths: the rest is padding)."""
    for k, v in part.items():
        if k == "n_targets":
            continue
        w = whole[k]
        if v.dim() == 0:  # one value for the batch (mtlm's mode)
            assert torch.equal(v, w), (what, k)
            continue
        w = w[lo:lo + v.shape[0]]
        w = w[tuple(slice(0, s) for s in v.shape)]
        assert torch.equal(v, w), (what, k)


@pytest.mark.parametrize("name", ALL)
def test_a_step_collates_the_same_however_it_is_split(name):
    """One step of 8 examples, collated whole, as 4 micro-batches of 2, or on rank 1 of 2 as 2
    micro-batches of 2: the same inputs, masks, labels and per-step draws for every example
    (plm: the content part; mass/span-corruption: the decoder side too)."""
    obj = build_objective(name, specials(name))
    data = obj.dataset(shards(), 32)
    seed, step = 3, 5
    one = GlobalSampler(len(data), 8, seed)
    whole = obj.collate([data[i] for i in one.indices(step)],
                        example_rng(obj, seed, one.positions(step), np.random.default_rng(0), step_start=8 * step))
    # grad_accum 4: global micro-batch 4*step + a, each of 2 examples
    acc = GlobalSampler(len(data), 2, seed)
    # 2 ranks x grad_accum 2: rank r reads micro-batch 2*step + a
    ranks = [GlobalSampler(len(data), 2, seed, rank=r, world_size=2) for r in (0, 1)]
    splits = [(acc, 4 * step + a, f"micro-batch {a}") for a in range(4)]
    splits += [(s, 2 * step + a, f"rank {s.rank} micro-batch {a}") for s in ranks for a in range(2)]
    for sampler, micro, what in splits:
        pos = sampler.positions(micro)
        lo = int(pos[0]) - 8 * step
        assert sampler.indices(micro) == one.indices(step)[lo:lo + 2]
        part = obj.collate([data[i] for i in sampler.indices(micro)],
                           example_rng(obj, seed, pos, np.random.default_rng(1), step_start=8 * step))
        if name == "plm":  # the query slots' width is the batch's; compare the content columns and targets
            T = part["input_ids"].shape[1] - part["target_index"].shape[1]
            assert torch.equal(part["input_ids"][:, :T], whole["input_ids"][lo:lo + 2, :T]), what
            assert torch.equal(part["target_index"], whole["target_index"][lo:lo + 2, :part["target_index"].shape[1]])
            assert int(part["n_targets"]) == int((whole["labels"][lo:lo + 2] != -100).sum())
            continue
        _equal_rows(whole, part, lo, what)


def test_per_step_draws_are_shared_by_the_step_and_differ_between_steps():
    a = ExampleRNG(0, [16, 17], step_start=16)
    b = ExampleRNG(0, [22, 23], step_start=16)  # a later micro-batch of the same step
    c = ExampleRNG(0, [24, 25], step_start=24)  # the next step
    x, y, z = (r.per_step().random(4) for r in (a, b, c))
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)
    # without step_start the batch's first example keys the step (one micro-batch per step)
    np.testing.assert_array_equal(ExampleRNG(0, [16, 17]).per_step().random(4), x)
    # the call number advances: the rows' next draws are those of a batch that made no per-step draw first
    d = ExampleRNG(0, [22, 23])
    d.calls = 1
    np.testing.assert_array_equal(b.random((2, 3)), d.random((2, 3)))


def test_mtlm_draws_its_mode_per_step():
    obj = build_objective("mtlm", specials("mtlm"))
    data = obj.dataset(shards(), 32)
    modes = {int(obj.collate([data[0], data[1]], ExampleRNG(0, [p, p + 1], step_start=64))["mtlm_mode"])
             for p in range(64, 96, 2)}
    assert len(modes) == 1  # every micro-batch of the step
    per_step = [int(obj.collate([data[0]], ExampleRNG(0, [s], step_start=s))["mtlm_mode"]) for s in range(0, 6400, 32)]
    freq = np.bincount(per_step, minlength=4) / len(per_step)
    np.testing.assert_allclose(freq, obj.probs, atol=0.1)  # and steps follow BART's proportions


WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from tiny import golden_run_losses as _losses
from transferlab.training.distributed import barrier, cleanup_distributed, init_distributed

info = init_distributed("cpu")
out = {{}}
for name in {names!r}:
    out[name] = _losses(name, __import__("pathlib").Path({root!r}) / name, 4, 2, info=info)
    barrier(info)
if info.is_main:
    json.dump(out, open({root!r} + "/losses.json", "w"))
cleanup_distributed()
"""

# mlm, electra, denoise: test_example_rng.py; mtlm: after the trainer passes step_start (above)
DDP = ["nsp", "clm", "span-corruption", "plm", "mass", "mtlm"]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    """2 gloo ranks x batch 4 x accumulation 2 == 1 process x batch 16, for the other objectives."""
    ref = {name: _losses(name, tmp_path / f"ref-{name}", 16, 1) for name in DDP}
    tests = Path(__file__).resolve().parents[1]  # tests/: tiny.py
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(tests), root=str(tmp_path / "ddp"), names=DDP))
    env = {**os.environ, "PYTHONPATH": str(tests.parent / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    for name in DDP:
        assert len(got[name]) == 3 and _worst(got[name], ref[name]) < 1e-6, (name, got[name], ref[name])
