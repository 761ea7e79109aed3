"""ULMFiT on the AWD-LSTM: the three stages of ``transferlab ulmfit`` at tiny size (forward and
backward, the ensemble, resume by stage), and the fine-tuning schedule it relies on: gradual
unfreezing one group per epoch from the top, discriminative LR eta / 2.6 per group down,
slanted triangular LR."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from transferlab.errors import ConfigError

WORDS = "the a cat dog sat ran on under mat rug and then big small red blue".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(n)]


def _rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    out = ["text,label"]
    for _ in range(n):
        lab = rng.choice(["cat", "dog"])
        out.append(" ".join([rng.choice(WORDS) for _ in range(6)] + [lab, lab]) + f",{lab}")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One bidirectional ``transferlab ulmfit`` run with the optimiser and unfreezing watched."""
    from transferlab.cli import main
    from transferlab.data.prepare import prepare_corpus
    from transferlab.finetune import loop
    from transferlab.tokenizer import Tokenizer
    from transferlab.training import optim

    root = tmp_path_factory.mktemp("ulmfit")
    tok = Tokenizer.train(_texts(300, 0), kind="bpe", vocab_size=120, n_sentinels=0)
    tok.save(root / "tok")
    (root / "corpus.txt").write_text("\n\n".join(_texts(400, 1)) + "\n", encoding="utf-8")
    prepare_corpus(root / "corpus.txt", root / "tok", root / "data", workers=0, progress=False, val_fraction=0.05)
    for name, n, seed in (("train", 64, 2), ("val", 16, 3), ("test", 24, 4)):
        (root / f"{name}.csv").write_text(_rows(n, seed), encoding="utf-8")

    seen: dict[str, list] = {"optimizers": [], "unfreeze": [], "lr": [], "opts": []}
    build, call, set_lr = optim.build_optimizer, loop._Unfreezer.__call__, optim.set_lr

    def spy_build(model, *a, **k):
        opt = build(model, *a, **k)
        names = {id(p): n for n, p in model.named_parameters()}
        if not any(n.startswith("heads.classification") for n in names.values()):
            return opt  # a pre-training stage
        seen["opts"].append(opt)
        seen["optimizers"].append([(g["lr_scale"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups])
        return opt

    def spy_call(self, progress):
        call(self, progress)
        seen["unfreeze"].append((progress, {n for n, p in self.params.items() if p.requires_grad}))

    def spy_lr(opt, base, factor):
        if seen["opts"] and opt is seen["opts"][0]:  # the forward classifier's steps
            seen["lr"].append(factor)
        return set_lr(opt, base, factor)

    argv = ["ulmfit", "--data", str(root / "data"), "--train-file", str(root / "train.csv"),
            "--validation-file", str(root / "val.csv"), "--test-file", str(root / "test.csv"), "--out", str(root / "out"),
            "--lm-steps", "6", "--task-lm-steps", "4", "--lm-batch-size", "8", "--seq-len", "16", "--epochs", "5",
            "--batch-size", "16", "--lr", "5e-3", "--dtype", "fp32", "--bidirectional", "--quiet",
            "ulmfit.preset=awd-lstm-tiny"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optim, "build_optimizer", spy_build)
        mp.setattr(loop._Unfreezer, "__call__", spy_call)
        mp.setattr(optim, "set_lr", spy_lr)
        assert main(argv) == 0
    return {"root": root, "out": root / "out", "argv": argv, "seen": seen}


def test_three_stages_both_directions_and_the_ensemble(run):
    out = run["out"]
    for d in ("fwd", "bwd"):
        for stage in (f"lm-{d}", f"task-lm-{d}"):
            cfg = json.loads((out / stage / "model" / "config.json").read_text())
            assert cfg["family"] == "awd-lstm" and cfg["family_options"]["backwards"] == (d == "bwd")
        assert (out / f"task-corpus-{d}.txt").read_text().count("\n\n") == 64 + 16 - 1  # train + validation, no test
        metrics = json.loads((out / f"cls-{d}" / "metrics.json").read_text())
        assert "test" in metrics
        task = json.loads((out / f"cls-{d}" / "config.json").read_text())["heads"]["classification"]
        assert task["pooling"] == "ulmfit"
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["split"] == "test" and ens["n"] == 24 and 0.0 <= ens["accuracy"] <= 1.0
    record = json.loads((out / "ulmfit.json").read_text())
    assert set(record["stages"]) == {"lm-fwd", "task-lm-fwd", "cls-fwd", "lm-bwd", "task-lm-bwd", "cls-bwd", "ensemble"}
    # the task LM started from the general one: stage 2 loaded its weights (init), not a fresh model
    s2 = json.loads((out / "task-lm-fwd" / "config.json").read_text())
    assert s2.get("init") and "lm-fwd" in str(s2["init"])


def test_a_rerun_skips_finished_stages_and_a_lost_stage_is_redone(run, capsys):
    from transferlab.cli import main

    out = run["out"]
    before = (out / "cls-fwd" / "model.safetensors").read_bytes()
    assert main(run["argv"]) == 0
    assert "stage" not in capsys.readouterr().err  # nothing re-run
    assert (out / "cls-fwd" / "model.safetensors").read_bytes() == before
    (out / "cls-bwd" / "metrics.json").unlink()  # as if stage 3 (bwd) had been killed
    assert main(run["argv"]) == 0
    err = capsys.readouterr().err
    assert "stage 3 (bwd)" in err and "stage 1" not in err and "stage 2" not in err


def test_gradual_unfreezing_thaws_one_group_per_epoch_from_the_top(run):
    # forward classifier: 64 examples / 16 = 4 steps per epoch, 5 epochs
    calls = run["seen"]["unfreeze"][:20]
    groups = [lambda n: n.startswith("heads."), lambda n: ".layers.2." in n, lambda n: ".layers.1." in n,
              lambda n: ".layers.0." in n, lambda n: "embed_tokens" in n]
    for step, (progress, trainable) in enumerate(calls):
        epoch = step // 4
        for g, member in enumerate(groups):
            names = [n for n in _all_names(run) if member(n)]
            assert names
            assert all((n in trainable) == (g <= epoch) for n in names), (step, g)


def _all_names(run) -> list[str]:
    return [n for _, names in run["seen"]["optimizers"][0] for n in names]


def test_discriminative_lr_is_eta_over_2_6_per_group_down(run):
    scales = {n: s for s, names in run["seen"]["optimizers"][0] for n in names}
    for n, s in scales.items():
        k = (0 if n.startswith("heads.") else 1 if ".layers.2." in n else 2 if ".layers.1." in n
             else 3 if ".layers.0." in n else 4)
        assert s == pytest.approx(2.6 ** -k), n


def test_slanted_triangular_schedule():
    from transferlab.training.optim import lr_multiplier

    f = lambda p: lr_multiplier(p, 0.1, "slanted", 1 / 32)  # noqa: E731
    assert f(0.1) == 1.0  # the peak at cut_frac
    assert f(1.0) == pytest.approx(1 / 32)  # the end: lr / ratio
    assert f(0.0) == pytest.approx(1 / 32)  # the short rise starts at lr / ratio (ULMFiT eq. 3)
    assert f(0.05) == pytest.approx(1 / 32 + (1 - 1 / 32) * 0.5)
    assert f(0.55) == pytest.approx(1 / 32 + (1 - 1 / 32) * 0.5)  # the long linear fall


def test_the_classifier_run_used_the_slanted_schedule(run):
    factors = run["seen"]["lr"][:20]  # the forward classifier's 20 steps
    assert factors[0] == pytest.approx(1 / 32) and max(factors) == pytest.approx(1.0, abs=0.05)
    assert factors.index(max(factors)) == 2  # step 2 of 20 = cut_frac 0.1
    assert factors[-1] == pytest.approx(1 / 32 + (1 - 1 / 32) * (1 - (19 / 20 - 0.1) / 0.9))


def test_settings_errors_are_one_line(tmp_path, capsys):
    from transferlab.cli import main

    from transferlab.commands.ulmfit import unfreeze_fraction

    assert unfreeze_fraction(3, 5) == 0.8
    with pytest.raises(ConfigError, match="at least 5 epochs"):
        unfreeze_fraction(3, 4)
    rc = main(["ulmfit", "--task", "rotten-tomatoes", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--data DIR" in err


def test_features_and_predict_read_the_ulmfit_folders(run):
    from transferlab.features import extract_features
    from transferlab.finetune import predict
    from transferlab.interop.loading import load_pretrained

    model, tok = load_pretrained(run["out"] / "task-lm-fwd" / "model")
    f = extract_features(model, tok, _texts(3, 9), layer="all", pooling="mean")
    assert f.values.shape == (3, model.backbone.num_hidden_states, model.config.d_model)
    for d in ("fwd", "bwd"):
        preds = predict(run["out"] / f"cls-{d}", ["the cat sat on the mat cat cat", "a dog ran dog dog"])
        assert [p["prediction"] in ("cat", "dog") for p in preds] == [True, True]


def test_the_output_rule_foreign_folders_and_inputs_are_refused(run, tmp_path, capsys):
    from transferlab.cli import main

    root = run["root"]
    common = ["--train-file", str(root / "train.csv"), "--lm", str(run["out"] / "lm-fwd" / "model")]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    assert main(["ulmfit", "--out", str(foreign), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "notes" in err and (foreign / "notes.txt").read_text() == "mine\n"
    assert main(["ulmfit", "--out", str(root / "data"), "--data", str(root / "data"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data" in err
