"""Fine-tuning at scale: checkpoints and exact resume, gradient accumulation, activation
checkpointing, torchrun data parallelism (the pre-training machinery, shared).

The headline test kills a real ``python -m transferlab finetune`` run with SIGKILL after a
checkpoint (possibly in the middle of writing the next one), resumes it with the same command
plus ``--resume`` and checks that the saved model and every logged number are bit-identical to a
run that was never interrupted. Each of the three runs is a fresh process, as a user runs them.
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
from safetensors.torch import load_file

from tiny import finetune_cfg as _cfg
from tiny import finish, kill_at_checkpoint, run_cli
from transferlab.cli import main
from transferlab.finetune import finetune
from transferlab.training.checkpoint import list_checkpoints
from transferlab.training.runlog import read_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(finetune_env) -> dict[str, Path]:  # tests/conftest.py: one tiny model per family + task files
    return finetune_env

# ------------------------------------------------------------------------------ gradient accumulation
def _losses(res) -> list[float]:
    return [r["train_loss"] for r in res.history]


@pytest.mark.parametrize("case", ["classification", "tagging", "seq2seq-decoder", "seq2seq-encoder-decoder"])
def test_grad_accumulation_4x8_equals_one_batch_of_32(env, tmp_path, case):
    """The loss is normalised over the whole accumulated batch (examples or scored tokens), so
    4 micro-batches of 8 make the same steps as one batch of 32, for token-level losses too."""
    kw = {"classification": {},
          "tagging": dict(train_file=str(env["tag"]), validation_file=None),
          "seq2seq-decoder": dict(model=str(env["decoder"]), train_file=str(env["s2s"]), validation_file=None,
                                  max_length=40, max_target_length=8),
          "seq2seq-encoder-decoder": dict(model=str(env["encoder-decoder"]), train_file=str(env["s2s"]),
                                          validation_file=None, max_target_length=8)}[case]
    big = finetune(_cfg(env, batch_size=32, out_dir=str(tmp_path / "big"), **kw))
    acc = finetune(_cfg(env, batch_size=8, grad_accum=4, out_dir=str(tmp_path / "acc"), **kw))
    assert big.steps == acc.steps >= 2  # the last batch is ragged (72 or 64 examples, 57.6 after holding out)
    lb, la = _losses(big), _losses(acc)
    assert len(lb) == big.steps and max(abs(a - b) for a, b in zip(la, lb)) < 1e-6, (la, lb)
    wa = load_file(str(tmp_path / "acc" / "model.safetensors"))
    wb = load_file(str(tmp_path / "big" / "model.safetensors"))
    # the weights after the Adam steps agree to float rounding (Adam divides by sqrt(v), which
    # magnifies the last-bit differences of summing in another order, for near-zero gradients)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    if case == "tagging":  # the test can fail: a mean per micro-batch (token counts differ) is another loss
        from transferlab.finetune.task_types import Tagging, TaskType

        assert Tagging.loss_count is not TaskType.loss_count


def test_grad_accum_zero_is_a_one_line_error(env, tmp_path, capsys):
    rc = main(["finetune", "--model", str(env["encoder"]), "--train", str(env["cls_train"]),
               "--out", str(tmp_path / "o"), "--grad-accum", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: finetune.grad_accum must be positive") and err.count("\n") == 1


# ------------------------------------------------------------------------------ checkpoints and resume
def _argv(env, out: Path, *flags: str) -> list[str]:
    return ["finetune", "--model", str(env["encoder"]), "--train", str(env["cls_train"]),
            "--validation", str(env["cls_val"]), "--out", str(out), "--epochs", "2", "--batch-size", "4",
            "--lr", "1e-3", "--dtype", "fp32", "--device", "cpu", "--dropout", "0.1", "--save-every", "3",
            "--patience", "3", "--quiet", "--no-test", *flags]


def test_sigkill_during_finetuning_then_resume_is_bit_identical(env, tmp_path):
    ref = tmp_path / "ref"
    reference = run_cli(*_argv(env, ref))  # the uninterrupted run, alongside the one we kill
    out = tmp_path / "killed"
    proc = run_cli(*_argv(env, out))
    kill_at_checkpoint(proc, out / "checkpoints" / "step-00000006")
    assert not (out / "task.json").exists()  # it really was cut short
    done = max(s for s, _ in list_checkpoints(out / "checkpoints"))
    assert done >= 6

    resumed = finish(run_cli(*_argv(env, out, "--resume")))  # the same command
    assert f"resumed from {out / 'checkpoints'}" in resumed
    finish(reference)
    a = load_file(str(ref / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {done}"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert ma["validation"] == mb["validation"] and ma["steps"] == mb["steps"] and ma["best_epoch"] == mb["best_epoch"]
    strip = lambda d: [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}  # noqa: E731
                       for r in read_rows(d / "metrics.jsonl")]
    assert strip(ref) == strip(out) and len(strip(ref)) >= 2
    assert not (out / "checkpoints").exists()  # dropped with the final write (--keep-checkpoints keeps them)


def test_resume_refuses_another_task_or_model_and_a_fresh_start_over_checkpoints(env, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _argv(env, out, "--keep-checkpoints")
    argv[argv.index("--epochs") + 1] = "0.2"
    assert main(argv) == 0
    assert list_checkpoints(out / "checkpoints")
    capsys.readouterr()
    assert main(argv) == 2  # checkpoints there, no --resume
    assert "pass --resume" in capsys.readouterr().err
    other = list(argv)
    other[other.index("--model") + 1] = str(env["decoder"])
    other[other.index("--train") + 1] = str(env["tag"])
    other.remove("--validation"), other.remove(str(env["cls_val"]))
    assert main([*other, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and err.count("\n") == 1
    assert "cls_train" in err and "'tag'" in err and str(env["encoder"]) in err and str(env["decoder"]) in err
    changed = [*argv, "--resume"]
    changed[changed.index("--lr") + 1] = "0.5"
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and "finetune.lr" in err and err.count("\n") == 1
    assert main([*argv, "--resume"]) == 0  # the same command: the finished run is simply written again


def test_resume_in_process_after_an_error_matches(env, tmp_path, monkeypatch):
    """A run stopped by an exception at step 5 and resumed equals an uninterrupted one, with
    early-stopping state and best weights carried by the checkpoint (in-process, fast)."""
    import transferlab.finetune.loop as loop

    kw = dict(epochs=3, batch_size=8, dropout=0.1, save_every=2, patience=2, eval_every=0)
    ref = finetune(_cfg(env, out_dir=str(tmp_path / "a"), **kw))
    real = loop._train_step

    def boom(*a, **k):
        if a[-1] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_step", boom)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(env, out_dir=str(tmp_path / "b"), **kw))
    monkeypatch.setattr(loop, "_train_step", real)
    assert max(s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")) == 4
    res = finetune(_cfg(env, out_dir=str(tmp_path / "b"), resume=True, **kw))
    assert res.validation == ref.validation and res.steps == ref.steps and res.best_epoch == ref.best_epoch
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in ref.history]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ activation checkpointing
@pytest.mark.parametrize("family", ["encoder", "decoder", "encoder-decoder"])
def test_gradient_checkpointing_gives_the_same_gradients(env, family):
    from transferlab.models.blocks import set_gradient_checkpointing
    from transferlab.models.model import from_pretrained

    grads = []
    for on in (False, True):
        model = from_pretrained(env[family]).train()
        model.config.dropout = 0.1
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.1
        assert set_gradient_checkpointing(model, on) >= 1
        ids = torch.randint(5, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        torch.manual_seed(1)  # the same dropout masks: checkpointing replays them in the recomputation
        kw = {"decoder_input_ids": ids[:, :6]} if family == "encoder-decoder" else {}
        out = model(input_ids=ids, attention_mask=mask, head="lm", **kw).logits
        out.float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-6, atol=1e-7, msg=k)


# ------------------------------------------------------------------------------ torchrun
WORKER = """
import sys, time
from transferlab.cli import main
from transferlab.training.distributed import barrier, cleanup_distributed, init_distributed

info = init_distributed("cpu")
rcs = []
for argv in {runs!r}:
    rcs.append(main(argv))
    barrier(info)
# leaving the group waits for every rank (a gloo process that exits while a peer still works can
# abort at exit); main() cleaned up already, this is a no-op then
cleanup_distributed()
sys.exit(max(rcs))
"""


def _dist_argv(env, out: Path, batch: int, *extra: str) -> list[str]:
    return ["finetune", "--model", str(env["encoder"]), "--train", str(env["cls_train"]),
            "--validation", str(env["cls_val"]), "--test", str(env["cls_val"]), "--out", str(out),
            "--epochs", "2", "--batch-size", str(batch), "--lr", "1e-3", "--dtype", "fp32", "--device", "cpu",
            "--eval-every", "3", "--eval-batch-size", "7", "--warmup", "0", "--quiet", *extra]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_twice_the_batch(env, tmp_path):
    """2 gloo ranks (DDP, and FSDP2) with batch 4 x accumulation 2 follow the same trajectory and reach the same
    validation/test metrics as one process with batch 16; evaluation is split over the ranks and
    gathered (each example once), rank 0 alone writes the folder."""
    assert main(_dist_argv(env, tmp_path / "ref", 16)) == 0
    runs = [_dist_argv(env, tmp_path / "ddp", 4, "--grad-accum", "2"),
            _dist_argv(env, tmp_path / "fsdp", 4, "--grad-accum", "2", "--fsdp")]
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(runs=runs))
    penv = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=penv, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    (tmp_path / "torchrun.log").write_text(out)
    head = out.split("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")[0]
    assert res.returncode == 0, "\n".join(l for l in head.splitlines() if "elastic" not in l)[-4000:]
    for name in ("ddp", "fsdp"):
        ref, got = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ref", name))
        assert got["steps"] == ref["steps"] == 10  # 2 epochs of ceil(72 / 16); ragged last batches
        assert got["validation"] == pytest.approx(ref["validation"], abs=1e-9)
        assert got["test"] == pytest.approx(ref["test"], abs=1e-9)
        hr, hg = ([r for r in read_rows(tmp_path / d / "metrics.jsonl") if r["split"] == "train"]
                  for d in ("ref", name))
        assert [r["step"] for r in hg] == [r["step"] for r in hr]
        assert max(abs(a["loss"] - b["loss"]) for a, b in zip(hg, hr)) < 1e-6, (hg, hr)
        a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ref", name))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


# ------------------------------------------------------------------------------ fp16
def test_fp16_runs_with_a_grad_scaler(env, tmp_path, monkeypatch):
    """fp16 autocast with loss scaling (a GPU feature; on CPU the path runs): every step goes
    through GradScaler.step/update, the scale is checkpointed, and the run learns something."""
    calls = []
    real = torch.amp.GradScaler.step

    def step(self, optimizer, *a, **k):
        calls.append(float(self.get_scale()))
        return real(self, optimizer, *a, **k)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    res = finetune(_cfg(env, dtype="fp16", batch_size=16, epochs=1, out_dir=str(tmp_path / "o"), save_every=2,
                        keep_checkpoints=True))
    assert len(calls) == res.steps >= 4 and all(c > 1 for c in calls)
    state = json.loads((list_checkpoints(tmp_path / "o" / "checkpoints")[-1][1] / "trainer.json").read_text())
    assert state["scaler"]["scale"] > 1
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
