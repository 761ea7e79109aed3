"""Checkpoints: pickle-free round trips, atomicity, pruning, and exact resume.

The headline test kills a real ``python -m transferlab pretrain`` run with SIGKILL after its
second checkpoint (possibly in the middle of writing a later one), resumes it with the same
command plus ``--resume``, and checks the final weights are bit-identical to a run that was never
interrupted.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tiny import TINY_MODEL, ToyLM, finish, kill_at_checkpoint, prepared_data, run_cli, tcfg, toy_data, toy_model
from transferlab.errors import CheckpointError
from transferlab.training.checkpoint import (capture_rng, clean_stale, latest_checkpoint, list_checkpoints,
                                             load_checkpoint, restore_rng, save_checkpoint)
from transferlab.training.distributed import DistInfo
from transferlab.training.loop import Trainer
from transferlab.training.optim import build_optimizer


def _trained(seed: int = 0):
    model = toy_model(seed)
    opt = build_optimizer(model, 1e-3)
    obj = ToyLM()
    b = obj.collate(toy_data(4), np.random.default_rng(0))
    obj.loss(model, b).loss_sum.backward()
    opt.step()
    return model, opt


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    model, opt = _trained()
    rng = np.random.default_rng(7)
    rng.random(3)
    torch.manual_seed(11)
    random.seed(13)
    state = capture_rng(rng)
    path = save_checkpoint(tmp_path, 5, model, opt, {"step": 5, "world_size": 1}, state, DistInfo())
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.json", "optimizer.safetensors",
                                                       "rng-rank0.json", "trainer.json"]
    expected = (rng.random(4), torch.rand(4), random.random())

    model2, opt2 = toy_model(seed=1), None
    opt2 = build_optimizer(model2, 1e-3)
    rng2 = np.random.default_rng(0)
    ts, rs = load_checkpoint(path, model2, opt2, DistInfo())
    restore_rng(rs, rng2)
    assert ts["step"] == 5
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)
    assert [g["weight_decay"] for g in s1["param_groups"]] == [g["weight_decay"] for g in s2["param_groups"]]
    got = (rng2.random(4), torch.rand(4), random.random())
    assert np.array_equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and got[2] == expected[2]


def test_shared_tensors_are_stored_once(tmp_path):
    class Pair(torch.nn.Module):  # ELECTRA-like: two modules sharing one embedding
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Embedding(10, 4)
            self.b = torch.nn.Embedding(10, 4)
            self.b.weight = self.a.weight
            self.lin = torch.nn.Linear(4, 4)

    m = Pair()
    opt = torch.optim.AdamW(m.parameters())
    m.lin(m.a(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, m, opt, {"step": 1, "world_size": 1}, capture_rng(None), DistInfo())
    m2 = Pair()
    opt2 = torch.optim.AdamW(m2.parameters())
    load_checkpoint(path, m2, opt2, DistInfo())
    assert torch.equal(m2.a.weight, m.a.weight) and m2.b.weight is m2.a.weight


def test_atomicity_pruning_and_stale_leftovers(tmp_path):
    model, opt = _trained()
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(root, step, model, opt, {"step": step, "world_size": 1}, capture_rng(None), DistInfo(),
                        keep_last=2)
    assert [s for s, _ in list_checkpoints(root)] == [4, 6]
    # what a kill leaves behind: a half-written temp folder, a half-deleted old one, a folder
    # without trainer.json (never produced by us, but must not be taken as complete)
    (root / ".step-00000008.tmp").mkdir()
    (root / ".step-00000008.tmp" / "model.safetensors").write_bytes(b"partial")
    (root / ".trash-step-00000002-123").mkdir()
    (root / "step-00000010").mkdir()
    assert latest_checkpoint(root).name == "step-00000006"
    clean_stale(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004", "step-00000006", "step-00000010"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model, opt = _trained()
    path = save_checkpoint(tmp_path, 1, model, opt, {"step": 1, "world_size": 1}, capture_rng(None), DistInfo())
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path, toy_model(), build_optimizer(toy_model(), 1e-3), DistInfo())
    with pytest.raises(CheckpointError, match="2 process"):
        (path / "trainer.json").write_text(json.dumps({"step": 1, "world_size": 2}))
        load_checkpoint(path, toy_model(), build_optimizer(toy_model(), 1e-3), DistInfo())


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_in_process_is_bit_identical(tmp_path, num_workers):
    """Dropout, random collation, bf16, accumulation, background collation: all resume exactly."""
    def cfg():
        return tcfg(max_steps=10, save_every=3, eval_every=4, grad_accum=2, dtype="bf16", num_workers=num_workers)

    def make(out, **kw):
        return Trainer(toy_model(dropout=0.1), ToyLM(random_cut=True), toy_data(), cfg(), out,
                       val_data=toy_data(16, seed=1), **kw)

    full = make(tmp_path / "a")
    full.fit()

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["step"] == 5:  # after the checkpoint at 3, before the one at 6
            raise Killed

    with pytest.raises(Killed):
        make(tmp_path / "b", on_step=[kill]).fit()
    resumed = make(tmp_path / "b")
    s = resumed.fit(resume=True)
    assert s["steps"] == 10
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    la = (tmp_path / "a/metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "tokens_per_s")}
                           for x in lines]
    assert strip(la) == strip(lb)  # the log was cut back to the checkpoint and re-done identically


# ----------------------------------------------------------------------------- kill -9
def _argv(data: Path, out: Path, *flags: str, steps: int = 48) -> list[str]:
    return ["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(data), "--out", str(out), *flags,
            "--max-steps", str(steps), "--save-every", "4", "--eval-every", "10", "--batch-size", "4", "--seq-len", "32",
            "--dtype", "fp32", *TINY_MODEL, "model.dropout=0.1", "train.num_threads=1", "train.keep_last=2",
            "train.progress=false", "train.tensorboard=false", "train.log_every=1"]


def test_sigkill_during_training_then_resume_is_bit_identical(wp_data, tmp_path):
    ref = tmp_path / "ref"
    reference = run_cli(*_argv(wp_data, ref))  # the uninterrupted run, alongside the one we kill

    out = tmp_path / "killed"
    proc = run_cli(*_argv(wp_data, out))
    kill_at_checkpoint(proc, out / "checkpoints" / "step-00000008", poll=0.005)
    assert not (out / "model").exists()  # it really was cut short
    done = max(s for s, _ in list_checkpoints(out / "checkpoints"))
    assert 8 <= done < 48

    resumed = finish(run_cli(*_argv(wp_data, out, "--resume")))  # the same command
    assert f"resumed from {out / 'checkpoints'}" in resumed
    finish(reference)

    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {done}"
    ra = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss", r.get("val_loss")) for r in ra] == [r.get("loss", r.get("val_loss")) for r in rb]


def test_resume_with_a_different_config_is_refused(wp_data, tmp_path, capsys):
    from transferlab.cli import main

    out = tmp_path / "run"
    assert main(_argv(wp_data, out, steps=2)) == 0
    capsys.readouterr()
    assert main(_argv(wp_data, out, steps=2)) == 2  # same out without --resume
    assert "already holds a run" in capsys.readouterr().err
    assert main(_argv(wp_data, out, "--resume", "--lr", "0.1", steps=2)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and "train.lr" in err and err.count("\n") == 1
    assert main([*_argv(wp_data, out, "--resume", steps=2), "train.log_every=5"]) == 0  # logging-only fields may change


def test_init_from_a_model_with_another_tokenizer_is_refused(wp_data, tmp_path, capsys):
    from transferlab.cli import main

    other = prepared_data(tmp_path, kind="bpe", n_docs=30)
    out = tmp_path / "run"
    assert main(_argv(wp_data, out, steps=2)) == 0
    capsys.readouterr()
    rc = main(["pretrain", "--init", str(out / "model"), "--objective", "mlm", "--data", str(other),
               "--out", str(tmp_path / "cont"), "--max-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not the one" in err and str(other) in err
    # the right data continues fine, from the saved weights
    rc = main(["pretrain", "--init", str(out / "model"), "--objective", "mlm", "--data", str(wp_data),
               "--out", str(tmp_path / "cont2"), "--max-steps", "2", "--batch-size", "2", "--seq-len", "32",
               "train.progress=false", "train.tensorboard=false"])
    assert rc == 0, capsys.readouterr().err


def test_init_from_a_folder_without_its_tokenizer_checks_the_record(tmp_path, capsys):
    """A model folder whose tokenizer files are gone still names its tokenizer in config.json: data
    prepared with another one is refused even where the vocabulary sizes agree."""
    import shutil

    from transferlab.cli import main
    from transferlab.data import TokenShards

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    data = prepared_data(tmp_path / "a", kind="bpe")
    other = prepared_data(tmp_path / "b", kind="bpe", n_docs=40)  # other text: other merges, as many tokens
    n = [TokenShards(d, "train").tokenizer.vocab_size for d in (data, other)]
    assert n[0] == n[1], n  # the vocabulary sizes alone would pass
    out = tmp_path / "run"
    assert main(_argv(data, out, steps=2)) == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(out / "model" / f, bare / f)
    capsys.readouterr()
    rc = main(["pretrain", "--init", str(bare), "--objective", "mlm", "--data", str(other),
               "--out", str(tmp_path / "cont"), "--max-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: --init {bare} with the data in {other}: a bpe tokenizer") and \
        "saved with a bpe one" in err and err.count("\n") == 1, err
