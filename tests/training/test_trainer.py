"""The explicit training loop: exact gradient accumulation, budgets and schedules, NaN handling,
deterministic evaluation, logs, and the config. Tiny models on synthetic data; seconds each.

The toy objective (a *variable* number of targets per example), tiny models and prepared data come
from tests/tiny.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import TINY_MODEL, ToyLM, prepared_data, tcfg, toy_data, toy_model
from transferlab.config import apply_overrides
from transferlab.errors import ConfigError
from transferlab.training.config import TrainConfig
from transferlab.training.distributed import GlobalSampler
from transferlab.training.loop import Trainer, TrainingDiverged, cpu_has_native_bf16, resolve_dtype
from transferlab.training.optim import lr_multiplier, param_groups


# ----------------------------------------------------------------------------- accumulation
def _first_step_grads(cfg: TrainConfig, objective, out: Path) -> tuple[dict[str, torch.Tensor], float]:
    trainer = Trainer(toy_model(), objective, toy_data(), cfg, out)
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def capture(*a, **k):
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in trainer.final_model().named_parameters()
                          if p.grad is not None})
        return step(*a, **k)

    trainer.optimizer.step = capture
    trainer.fit()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return grads, first["loss"]


def test_grad_accumulation_equals_the_large_batch(tmp_path):
    """batch 8 x accum 1 and batch 2 x accum 4 give the same gradients (loss over all targets)."""
    big, loss_big = _first_step_grads(tcfg(batch_size=8, grad_accum=1, max_steps=1, clip=0), ToyLM(), tmp_path / "a")
    acc, loss_acc = _first_step_grads(tcfg(batch_size=2, grad_accum=4, max_steps=1, clip=0), ToyLM(), tmp_path / "b")
    assert big.keys() == acc.keys() and len(big) > 5
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-7, msg=k)
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)

    # the test can fail: averaging per-micro-batch means instead differs by far more than the tolerance
    model, obj = toy_model(), ToyLM()
    data = toy_data()[:8]
    model.zero_grad()
    for i in range(4):
        b = obj.collate(data[2 * i: 2 * i + 2], np.random.default_rng(0))
        (obj.loss(model, b).loss_sum / b["n_targets"] / 4).backward()
    naive = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    worst = max(float((naive[k] - big[k]).abs().max() / big[k].abs().max().clamp(min=1e-12)) for k in big)
    assert worst > 1e-3


def test_grad_accumulation_trajectories_match_over_steps(tmp_path):
    a = Trainer(toy_model(), ToyLM(), toy_data(), tcfg(batch_size=8), tmp_path / "a")
    b = Trainer(toy_model(), ToyLM(), toy_data(), tcfg(batch_size=4, grad_accum=2), tmp_path / "b")
    a.fit(), b.fit()
    la = [json.loads(x)["loss"] for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines() if '"train"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert len(la) == 6 and np.allclose(la, lb, rtol=0, atol=1e-5)
    assert la[-1] < la[0]  # it learns


# ----------------------------------------------------------------------------- budgets, schedule
def test_schedule_follows_progress_and_stops_on_max_steps(tmp_path):
    cfg = tcfg(max_steps=10, warmup=0.3, schedule="cosine", min_lr_ratio=0.1)
    s = Trainer(toy_model(), ToyLM(), toy_data(), cfg, tmp_path).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in recs if r["split"] == "train"]
    expected = [cfg.lr * lr_multiplier(i / 10, 0.3, "cosine", 0.1) for i in range(10)]
    assert np.allclose(lrs, expected)
    assert s["steps"] == 10 and s["stopped_by"] == "max_steps"
    assert max(lrs) == pytest.approx(cfg.lr) and lrs[0] == 0.0


def test_max_tokens_budget_drives_schedule_and_stop(tmp_path):
    # 4 x 16 = 64 input tokens per step: 640 tokens -> 10 steps, with max_steps far away
    cfg = tcfg(max_steps=1000, max_tokens=640, warmup=0.0)
    s = Trainer(toy_model(), ToyLM(), toy_data(), cfg, tmp_path).fit()
    assert s["steps"] == 10 and s["tokens"] == 640 and s["stopped_by"] == "max_tokens"
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert np.allclose(lrs, [cfg.lr * (1 - i / 10) for i in range(10)])  # tokens, not steps, drive it


def test_max_minutes_budget(tmp_path):
    cfg = tcfg(max_steps=100000, max_minutes=0.5 / 60)  # half a second of training
    s = Trainer(toy_model(), ToyLM(), toy_data(), cfg, tmp_path).fit()
    assert s["stopped_by"] == "max_minutes"
    assert 0.5 <= s["train_seconds"] < 5.0 and 1 <= s["steps"] < 100000


def test_budget_is_required():
    with pytest.raises(ConfigError, match="no training budget"):
        Trainer(toy_model(), ToyLM(), toy_data(), tcfg(max_steps=0), "unused")


# ----------------------------------------------------------------------------- NaN
def test_nan_loss_stops_with_last_good_checkpoint_intact(tmp_path):
    from transferlab.training.checkpoint import latest_checkpoint, list_checkpoints

    obj = ToyLM(nan_at_call=4)  # steps 1-3 fine (one loss call each), step 4 NaN
    trainer = Trainer(toy_model(), obj, toy_data(), tcfg(max_steps=20, save_every=1, keep_last=2), tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 4: training loss is nan .*step-00000003"):
        trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 3]
    # the weights were not updated by the bad step: they equal the last checkpoint, which loads fine
    from safetensors.torch import load_file

    saved = load_file(str(latest_checkpoint(tmp_path / "checkpoints") / "model.safetensors"))
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(saved[k], v) and torch.isfinite(v).all(), k


# ----------------------------------------------------------------------------- evaluation, logs
def test_evaluation_is_fixed_and_does_not_perturb_training(tmp_path):
    val = toy_data(24, seed=1)
    obj = ToyLM(random_cut=True)  # the eval collation draws from an rng: it must be the fixed one
    a = Trainer(toy_model(dropout=0.1), obj, toy_data(), tcfg(eval_every=1, eval_batches=3), tmp_path / "a",
                val_data=val)
    e1, e2 = a.evaluate(), a.evaluate()
    assert e1 == e2 and math.isfinite(e1["val_loss"]) and e1["val_ppl"] == pytest.approx(math.exp(e1["val_loss"]))
    a.fit()
    b = Trainer(toy_model(dropout=0.1), ToyLM(random_cut=True), toy_data(), tcfg(eval_every=0), tmp_path / "b",
                val_data=val)
    b.fit()
    for k, v in a.model.state_dict().items():  # evaluating every step changed nothing
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_logs_metrics_tensorboard_and_plot(tmp_path):
    from transferlab.training.loop import plot_loss_curve

    cfg = tcfg(max_steps=8, eval_every=4, log_every=2, tensorboard=True, progress=True)
    s = Trainer(toy_model(), ToyLM(), toy_data(), cfg, tmp_path, val_data=toy_data(16, seed=1)).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 4, 6, 8] and [r["step"] for r in val] == [4, 8]
    assert all(r["tokens_per_s"] > 0 and r["tokens"] == r["step"] * 64 for r in train)
    assert s["val_loss"] == val[-1]["loss"]
    # one schema for both splits: the same leading fields, then the objective's metric names
    for r in recs:
        assert list(r)[:5] == ["step", "split", "loss", "elapsed_s", "tokens_per_s"], r
        assert "acc" in r
    assert val[-1]["ppl"] == pytest.approx(math.exp(val[-1]["loss"]))
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss/train", "loss/val", "acc/train", "acc/val"} <= set(tags)  # one chart per quantity
    assert [e.step for e in acc.Scalars("loss/val")] == [4, 8]
    assert acc.Scalars("loss/val")[-1].value == pytest.approx(s["val_loss"])
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_saves_and_stops(tmp_path):
    def term(rec):
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    t = Trainer(toy_model(), ToyLM(), toy_data(), tcfg(max_steps=50), tmp_path, on_step=[term])
    s = t.fit()
    assert s["stopped_by"] == "signal" and s["steps"] == 3
    assert s["checkpoint"].endswith("step-00000003")


# ----------------------------------------------------------------------------- pieces
def test_global_sampler_is_independent_of_the_rank_split():
    one = GlobalSampler(50, 8, seed=3)
    two = [GlobalSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for g in range(20):  # several epochs
        assert one.indices(g) == two[0].indices(g) + two[1].indices(g)
    stream = [i for g in range(13) for i in one.indices(g)]  # 104 positions: epochs 0, 1 and a bit of 2
    first, second = stream[:50], stream[50:100]
    assert sorted(first) == sorted(second) == list(range(50))  # each epoch is a permutation
    assert first != list(range(50)) and first != second  # shuffled, differently per epoch
    assert one.indices(0) != GlobalSampler(50, 8, seed=4).indices(0)


def test_weight_decay_only_on_matrices():
    model = toy_model()
    groups = param_groups(model, weight_decay=0.1)
    shapes = {id(p): p.dim() for p in model.parameters()}
    for g in groups:
        assert all((shapes[id(p)] >= 2) == (g["weight_decay"] == 0.1) for p in g["params"])
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}


def test_dtype_resolution_and_bf16_training(tmp_path):
    assert resolve_dtype("fp32", torch.device("cpu")) == "fp32"
    assert resolve_dtype("auto", torch.device("cpu")) == ("bf16" if cpu_has_native_bf16() else "fp32")
    s = Trainer(toy_model(), ToyLM(), toy_data(), tcfg(dtype="bf16", max_steps=3), tmp_path).fit()
    assert s["dtype"] == "bf16" and math.isfinite(s["final_train_loss"])


def test_train_config_fields_and_overrides():
    cfg = TrainConfig()
    apply_overrides(cfg, ["train.lr=1e-3", "train.schedule=cosine", "train.betas=[0.9,0.95]", "train.dtype=fp32"],
                    prefix="train")
    assert cfg.lr == 1e-3 and cfg.schedule == "cosine" and cfg.betas == [0.9, 0.95] and cfg.dtype == "fp32"
    docs = TrainConfig.field_docs()
    assert all(docs[f] for f in ("batch_size", "seq_len", "grad_accum", "lr", "weight_decay", "betas", "warmup",
                                  "schedule", "min_lr_ratio", "clip", "max_steps", "max_tokens", "max_minutes",
                                  "eval_every", "eval_batches", "save_every", "keep_last", "log_every", "dtype",
                                  "seed", "compile", "num_workers"))
    with pytest.raises(ConfigError, match="train.schedule"):
        apply_overrides(TrainConfig(), ["train.schedule=exp"], prefix="train")
    # one Schedule/DType for every command (transferlab.config); pre-training refuses the rest by field
    import transferlab.config as shared
    import transferlab.training.config as tc

    assert tc.Schedule is shared.Schedule and tc.DType is shared.DType
    for name, value in (("schedule", "slanted"), ("dtype", "fp16")):
        with pytest.raises(ConfigError, match=f"train.{name}={value}: pre-training supports"):
            TrainConfig(**{name: value}).validate()
    with pytest.raises(ConfigError, match="train.warmup"):
        TrainConfig(warmup=1.5).validate()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- pretrain end to end
def test_pretrain_cli_writes_a_loadable_model(wp_data, tmp_path, capsys):
    from transferlab import from_pretrained
    from transferlab.cli import main
    from transferlab.tokenizer import Tokenizer

    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(wp_data), "--out", str(out),
               "--max-steps", "6", "--batch-size", "4", "--seq-len", "32", "--eval-every", "3", "--save-every", "3",
               *TINY_MODEL, "train.log_every=1", "train.progress=false", "objective.mask_prob=0.2"])
    assert rc == 0, capsys.readouterr().err
    assert "trained 6 steps" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    tok = Tokenizer.from_pretrained(out / "model")
    assert cfg["model"]["vocab_size"] == tok.vocab_size and cfg["model"]["pad_token_id"] == tok.pad_token_id
    assert cfg["objective"]["name"] == "mlm" and cfg["objective"]["mask_prob"] == 0.2
    assert cfg["train"]["max_steps"] == 6 and cfg["model"]["n_layers"] == 1
    assert cfg["model"]["attn_impl"] == "math" and cfg["model"]["dropout"] == 0.0  # pre-training defaults
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["dropout"] == saved["attention_dropout"] == 0.1  # the preset's, for fine-tuning
    model = from_pretrained(out / "model")
    ids = torch.tensor([tok.encode("the cat sat on the mat", add_special_tokens=True)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], tok.vocab_size)
    for f in ("metrics.jsonl", "loss_curve.png", "summary.json", "checkpoints/step-00000006/model.safetensors"):
        assert (out / f).is_file(), f


@pytest.mark.parametrize("argv, message", [
    (["--preset", "gpt-mini", "--objective", "mlm"], "needs an encoder"),
    (["--preset", "bert-tiny", "--objective", "clm"], "needs a decoder"),
    (["--preset", "bert-tiny", "--objective", "nope"], "unknown objective"),
    (["--preset", "bert-tiny", "--objective", "mlm", "objective.mask_prob=2"], "mask_prob"),
    (["--preset", "bert-tiny", "--objective", "mlm", "train.lr=abc"], "train.lr"),
    (["--preset", "bert-tiny", "--objective", "mlm", "colour=red"], "expected model.KEY=VALUE"),
    (["--preset", "bert-tiny", "--objective", "mlm", "--seq-len", "4096"], "max_positions"),
])
def test_pretrain_cli_bad_input_is_one_line_exit_2(wp_data, tmp_path, capsys, argv, message):
    from transferlab.cli import main

    rc = main(["pretrain", *argv, "--data", str(wp_data), "--out", str(tmp_path / "r"), "--max-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_pretrain_cli_rejects_missing_or_empty_data(tmp_path, capsys):
    from transferlab.cli import main

    (tmp_path / "empty").mkdir()
    for d in ("missing", "empty"):
        rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(tmp_path / d),
                   "--out", str(tmp_path / "r"), "--max-steps", "2"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and str(tmp_path / d) in err


def test_pretrain_cli_no_budget(wp_data, tmp_path, capsys):
    from transferlab.cli import main

    rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(wp_data), "--out", str(tmp_path)])
    assert rc == 2 and "no training budget" in capsys.readouterr().err


@pytest.fixture(scope="module")
def all_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("objective-data")
    return {k: prepared_data(root, k, n_docs=60) for k in ("wordpiece", "bpe", "unigram")}


@pytest.mark.parametrize("preset, objective, data, heads", [
    ("bert-tiny", "nsp", "wordpiece", {"lm", "nsp"}),
    ("bert-tiny", "electra", "wordpiece", {"rtd"}),
    ("gpt-mini", "clm", "bpe", {"lm"}),
    ("bart-mini", "denoise", "bpe", {"lm"}),
    ("t5-mini", "span-corruption", "unigram", {"lm"}),
])
def test_every_objective_pretrains_from_its_family_preset(all_data, tmp_path, capsys, preset, objective, data, heads):
    """Heads, special ids and the decoder start token are wired from the objective and the data's
    tokenizer; the saved model is what fine-tuning loads (ELECTRA: the discriminator alone)."""
    from safetensors.torch import load_file

    from transferlab.cli import main
    from transferlab.tokenizer import Tokenizer

    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", preset, "--objective", objective, "--data", str(all_data[data]),
               "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", *TINY_MODEL,
               "model.d_head=16", "train.progress=false", "train.tensorboard=false"])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "model" / "config.json").read_text())
    tok = Tokenizer.from_pretrained(out / "model")
    assert set(cfg["heads"]) == heads and cfg["vocab_size"] == tok.vocab_size
    if cfg["family"] == "encoder-decoder":
        expected = tok.pad_token_id if objective == "span-corruption" else tok.eos_token_id
        assert cfg["decoder_start_token_id"] == expected
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert not any("generator" in k for k in weights)
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 2 and s["val_loss"] is not None and np.isfinite(s["val_ppl"])


def test_pretrain_cli_divergence_is_a_clear_error(wp_data, tmp_path, capsys):
    """An absurd learning rate blows the weights up; the run stops at the first non-finite loss
    with exit status 2, naming the last good checkpoint, which holds finite weights."""
    from safetensors.torch import load_file

    from transferlab.cli import main

    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(wp_data), "--out", str(out),
               "--max-steps", "10", "--batch-size", "4", "--seq-len", "32", "--save-every", "1", "--lr", "1e30",
               "--dtype", "fp32", *TINY_MODEL, "train.warmup=0", "train.clip=0", "train.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "(not finite)" in err and "last good checkpoint" in err, err
    last = err.split("last good checkpoint: ")[1].split(" ")[0]
    weights = load_file(str(Path(last) / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
