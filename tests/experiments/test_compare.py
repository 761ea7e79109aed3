import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from transferlab.cli import main
from transferlab.config import ModelConfig
from transferlab.errors import ConfigError
from transferlab.experiments import config as ccfg
from transferlab.experiments import grid
from transferlab.experiments.config import load_compare_config, parse_compare_config
from transferlab.experiments.grid import read_results, run_compare
from transferlab.experiments.plots import pareto_front
from transferlab.models.model import build_model
from transferlab.tokenizer import Tokenizer
from transferlab.training.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[2]

POS = ["a wonderful film , loved it", "great acting and a great story", "wonderful , moving and funny"]
NEG = ["a terrible film , hated it", "boring plot and awful acting", "awful , dull and too long"]


def _rows(n, offset):
    return [{"text": (POS if (i + offset) % 2 else NEG)[i % 3], "label": "pos" if (i + offset) % 2 else "neg"}
            for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    for split, n, off in (("train", 40, 0), ("validation", 12, 1), ("test", 12, 0)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, off)))
    tok = Tokenizer.train(POS + NEG, kind="wordpiece", vocab_size=80, min_frequency=1)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, d_ff=64, type_vocab_size=2,
                      max_positions=64, heads={})
    model = build_model(cfg)
    model.save_pretrained(d / "tiny")
    tok.save(d / "tiny")
    return d


def _config(d, file="cfg.yaml", **over):
    # relative paths are read from the working directory, like every transferlab path
    raw = {
        "out_dir": "out",
        "tasks": [{"name": "toy", "train_file": "train.jsonl", "validation_file": str(d / "validation.jsonl"),
                   "test_file": "test.jsonl"}],
        "train_sizes": [10, 30],
        "seeds": [0, 1],
        "finetune": {"epochs": 1, "batch_size": 8, "max_length": 24, "dtype": "fp32", "lr": 1e-3},
        "cost": {"track_energy": False},
        "models": ["majority", "tfidf-logreg", {"name": "tiny", "model": "tiny"},
                   {"name": "tiny-scratch", "model": "tiny", "from_scratch": True}],
    }
    raw.update(over)
    path = d / file
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compare_grid_tables_plots_and_resume(setup, monkeypatch):
    d = setup
    monkeypatch.chdir(d)
    cfg = load_compare_config(_config(d))
    assert cfg.out_dir == d / "out" and cfg.models[2].model == str(d / "tiny")
    assert [m.group for m in cfg.models] == ["majority", "tf-idf", "pre-trained", "from scratch"]

    # record the training subset every method sees (baselines and fine-tuning share subsample)
    import transferlab.finetune.loop as loop
    import transferlab.finetune.tasks as tasks

    seen: dict[tuple, set] = {}
    real = tasks.subsample

    def spy(examples, n, seed, task_type):
        out = real(examples, n, seed, task_type)
        if len(examples) == 40:  # the training split (validation is subsampled too, with n=None)
            seen.setdefault((n, seed), set()).add(tuple(sorted((e["text"], e.get("_where")) for e in out)))
        return out

    monkeypatch.setattr(tasks, "subsample", spy)
    monkeypatch.setattr(loop, "subsample", spy)
    calls = []

    def counting(cell, out_dir):
        calls.append(cell.key)
        return grid.run_finetune_cell(cell, out_dir)

    rep = run_compare(cfg, progress=False, runner=counting)
    assert rep.n_cells == 16 and rep.n_run == 16 and rep.n_skipped == 0 and not rep.failures
    assert len(calls) == 8  # 2 transformer methods x 2 sizes x 2 seeds
    assert set(seen) == {(10, 0), (10, 1), (30, 0), (30, 1)}
    assert all(len(v) == 1 for v in seen.values())  # one subset per (size, seed) across all methods
    assert seen[(10, 0)] != seen[(10, 1)]

    rows = read_results(d / "out" / "results.jsonl")
    assert len(rows) == 16
    r = next(r for r in rows if r["method"] == "tiny" and r["train_size"] == "10")
    assert r["metric"] == "accuracy" and r["n_train"] == 10 and set(r["test"]) >= {"accuracy", "macro_f1", "mcc"}
    assert r["task_type"] == "classification" and r["group"] == "pre-trained"
    base = next(r for r in rows if r["method"] == "tfidf-logreg")
    assert base["cost"]["energy_kwh"] > 0 and "price_usd" in base["cost"] and "mfu" not in base["cost"]

    # summary: mean ± std over 2 seeds per (task, size, method)
    assert len(rep.summary) == 8 and all(g["n"] == 2 for g in rep.summary)
    g = next(g for g in rep.summary if g["method"] == "majority" and g["train_size"] == "30")
    accs = [r["test"]["accuracy"] for r in rows if r["method"] == "majority" and r["train_size"] == "30"]
    assert g["mean"] == pytest.approx(sum(accs) / 2)
    assert g["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    md = (d / "out" / "summary.md").read_text()
    assert "±" in md and "| toy | 10 | tiny-scratch | 2 |" in md and "price ($)" in md
    csv_text = (d / "out" / "summary.csv").read_text().splitlines()
    assert csv_text[0].startswith("task,train_size,method,group,n,") and len(csv_text) == 9
    for name in ("learning_curve_toy.png", "cost_toy.png"):
        png = d / "out" / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # second run: nothing reruns
    calls.clear()
    rep2 = run_compare(cfg, progress=False, runner=counting)
    assert rep2.n_run == 0 and rep2.n_skipped == 16 and calls == []
    assert len(read_results(d / "out" / "results.jsonl")) == 16

    # changing one method's settings reruns only that method; old rows are ignored, not mixed in
    cfg2 = load_compare_config(_config(d, models=["majority", "tfidf-logreg",
                                                  {"name": "tiny", "model": "tiny", "finetune": {"epochs": 2}},
                                                  {"name": "tiny-scratch", "model": "tiny", "from_scratch": True}]))
    rep3 = run_compare(cfg2, progress=False, runner=counting, plots=False)
    assert rep3.n_run == 4 and rep3.n_skipped == 12 and rep3.n_stale == 4
    assert {c[0] for c in calls} == {"tiny"}
    assert all(g["n"] == 2 for g in rep3.summary)


def test_results_tolerate_a_cut_last_line_and_cli(setup, capsys, monkeypatch):
    d = setup
    monkeypatch.chdir(d)
    path = _config(d, out_dir="out_cli", models=["majority", "tfidf-svm"], train_sizes=[20], seeds=[0, 1, 2])
    assert main(["compare", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 cells: 0 already finished, 6 run now" in out and "| toy | 20 | tfidf-svm | 3 |" in out
    res = d / "out_cli" / "results.jsonl"
    with open(res, "a") as f:
        f.write('{"method": "majority", "task": "to')  # a run killed mid-append
    assert len(read_results(res)) == 6
    assert main(["compare", str(path), "--quiet", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("done  ") == 6 and "6 already finished, 0 run now" in out
    assert main(["compare", str(path), "--quiet", "--only", "nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    "over, message",
    [
        ({"models": ["majority", "bert"]}, "'bert' is not a baseline"),
        ({"models": [{"name": "x", "model": "tiny", "finetune": {"epochz": 1}}]}, "unknown finetune setting"),
        ({"models": [{"name": "x", "model": "tiny", "finetune": {"seed": 1}}]}, "set per cell"),
        ({"models": ["majority", "majority"]}, "appears twice"),
        ({"train_sizes": [10, -1]}, "not a positive integer"),
        ({"seeds": "0"}, "seeds"),
        ({"tasks": []}, "tasks: expected a non-empty list"),
        ({"typo": 1}, "unknown key"),
        ({"cost_axis": "dollars"}, "cost_axis"),
    ],
)
def test_config_errors(setup, over, message, monkeypatch):
    monkeypatch.chdir(setup)
    with pytest.raises(ConfigError, match=message):
        load_compare_config(_config(setup, **over))


def test_missing_model_fails_before_any_cell(setup, capsys, monkeypatch):
    monkeypatch.chdir(setup)
    path = _config(setup, out_dir="out_bad", models=["majority", {"name": "m", "model": "no/such/dir"}])
    assert main(["compare", str(path), "--quiet"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert not (setup / "out_bad" / "results.jsonl").exists()
    # ... but the methods that can run still may, and a dry run only lists
    assert main(["compare", str(path), "--quiet", "--dry-run"]) == 0
    assert main(["compare", str(path), "--quiet", "--only", "majority"]) == 0
    assert len(read_results(setup / "out_bad" / "results.jsonl")) == 4


def test_parse_builtin_task_all_size_and_presets(tmp_path):
    cfg = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100, "all"],
                                "models": ["tfidf-svm", {"name": "s", "model": "bert-mini", "from_scratch": True}]},
                               base=tmp_path)
    assert cfg.tasks[0].builtin and cfg.train_sizes == [100, None] and cfg.out_dir == tmp_path / "x"
    assert cfg.models[1].model == "bert-mini"  # a preset name stays a name
    cells = ccfg.plan_cells(cfg)
    assert [(c.method.name, c.size_label) for c in cells] == [("tfidf-svm", "100"), ("s", "100"), ("tfidf-svm", "all"), ("s", "all")]
    assert cells[0].spec_hash == cells[2].spec_hash != cells[1].spec_hash  # size and seed are not in the hash


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9), (0.5, 0.4), (2.0, 0.65)]
    assert pareto_front(pts) == [4, 0, 1, 3]
    assert pareto_front([(1.0, 3.0), (2.0, 1.0)], higher_better=False) == [0, 1]


def test_min_steps_raises_epochs_for_small_sizes(tmp_path):
    cfg = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "min_steps": 200,
                                "finetune": {"epochs": 3, "batch_size": 16},
                                "models": [{"name": "a", "model": "builtin:minilm"},
                                           {"name": "b", "model": "builtin:minilm", "min_steps": 0}]}, base=tmp_path)
    a, b = cfg.models
    assert grid.cell_epochs(a, 100) == 32.0  # 200 steps x 16 / 100 examples
    assert grid.cell_epochs(a, 3000) == 3.0 and grid.cell_epochs(a, None) == 3.0
    assert grid.cell_epochs(b, 100) == 3.0
    # min_steps is part of a cell's settings: changing it reruns the method
    assert ccfg.Cell(a, cfg.tasks[0], 100, 0, True).spec_hash != ccfg.Cell(b, cfg.tasks[0], 100, 0, True).spec_hash
    with pytest.raises(ConfigError, match="min_steps must be a non-negative integer"):
        parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "min_steps": -1,
                              "models": [{"name": "a", "model": "builtin:minilm"}]}, base=tmp_path)


def test_method_train_sizes_limit_its_cells(tmp_path):
    # an expensive model sits out the largest size of the learning curve; the baselines do not
    cfg = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100, 300, "all"], "seeds": [0, 1],
                                "models": ["majority", {"name": "big", "model": "builtin:minilm", "train_sizes": [100, 300]},
                                           {"baseline": "tfidf-logreg", "train_sizes": ["all"]}]}, base=tmp_path)
    cells = [(c.method.name, c.size_label, c.seed) for c in ccfg.plan_cells(cfg)]
    assert [c for c in cells if c[0] == "big"] == [("big", "100", 0), ("big", "100", 1), ("big", "300", 0), ("big", "300", 1)]
    assert [c for c in cells if c[0] == "tfidf-logreg"] == [("tfidf-logreg", "all", 0), ("tfidf-logreg", "all", 1)]
    assert len([c for c in cells if c[0] == "majority"]) == 6
    with pytest.raises(ConfigError, match=r"models: big: train_sizes 3000 not in the grid"):
        parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100],
                              "models": [{"name": "big", "model": "builtin:minilm", "train_sizes": [3000]}]}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"models\[0\].train_sizes: 0 is not a positive integer"):
        parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100],
                              "models": [{"name": "big", "model": "builtin:minilm", "train_sizes": [0]}]}, base=tmp_path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_example_configs_parse(path):
    """Every comparison config in examples/ is valid: known keys, methods, sizes, seeds."""
    c = load_compare_config(path)
    assert c.models and c.tasks and c.seeds
    assert len({m.name for m in c.models}) == len(c.models)


# ------------------------------------------------------------------------------ cell resume
#: fine-tuning that checkpoints every 2 steps, with dropout so a resume must restore the RNG too
_RESUMABLE = {"epochs": 2, "batch_size": 4, "max_length": 24, "dtype": "fp32", "lr": 1e-3, "dropout": 0.1,
              "save_every": 2, "device": "cpu"}

#: `transferlab compare CONFIG` that SIGKILLs itself when the cell (tiny, seed 1) is about to
#: run its optimiser step 5: a deterministic point in the middle of a cell, not a timing race
_KILL_MID_CELL = r"""
import os, signal, sys
import transferlab.experiments.grid as grid
import transferlab.finetune.loop as loop
current = {}
run_cell, train_step = grid.run_finetune_cell, loop._train_step
def cell(c, out_dir):
    current["cell"] = (c.method.name, c.seed)
    return run_cell(c, out_dir)
def step(*a, **k):
    if current.get("cell") == ("tiny", 1) and a[-1] == 5:  # a[-1]: the step about to run
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(*a, **k)
grid.run_finetune_cell, loop._train_step = cell, step
from transferlab.cli import main
sys.exit(main(["compare", sys.argv[1], "--quiet", "--no-plots"]))
"""


def _popen(*argv: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "TRANSFERLAB_PEAK_FLOPS": "1e10"}  # no peak benchmark in the children
    return subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)


def _done(proc: subprocess.Popen, rc: int = 0) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == rc, err.decode()[-2000:]
    return out.decode()


def _scores(d: Path) -> dict:
    """What a cell's result is (timing and cost aside), by cell."""
    return {(r["method"], r["seed"]): (r["validation"], r["test"], r["n_train"], r.get("best_epoch"),
                                       r.get("train_tokens"), r.get("params"))
            for r in read_results(d / "results.jsonl")}


def _table(d: Path) -> list[list[str]]:
    """summary.md's rows up to the validation column (train time and cost differ run to run)."""
    return [[c.strip() for c in ln.split("|")[1:8]] for ln in (d / "summary.md").read_text().splitlines()
            if ln.startswith("| toy")]


def test_kill_9_mid_cell_resumes_that_cell_from_its_checkpoint(setup, tmp_path):
    d = setup
    models = ["majority", {"name": "tiny", "model": str(d / "tiny")}]
    paths = {name: _config(d, f"kill-{name}.yaml", out_dir=str(tmp_path / name), models=models, train_sizes=[30],
                           finetune=_RESUMABLE)
             for name in ("ref", "killed")}
    reference = _popen("-m", "transferlab", "compare", str(paths["ref"]), "--quiet", "--no-plots", cwd=d)
    _done(_popen("-c", _KILL_MID_CELL, str(paths["killed"]), cwd=d), rc=-signal.SIGKILL)

    out = tmp_path / "killed"
    assert set(_scores(out)) == {("majority", 0), ("tiny", 0), ("majority", 1)}  # cut in (tiny, seed 1)
    cell = out / "cells" / "tiny" / "toy" / "n30" / "seed1"
    assert [s for s, _ in list_checkpoints(cell / "checkpoints")] == [2, 4]
    assert not (out / "cells" / "tiny" / "toy" / "n30" / "seed0").exists()  # a finished cell's folder goes

    resumed = _done(_popen("-m", "transferlab", "compare", str(paths["killed"]), "--quiet", "--no-plots", cwd=d))
    assert f"resumed from {cell / 'checkpoints'}" in resumed  # from step 4, not from scratch
    assert "4 cells: 3 already finished, 1 run now" in resumed
    _done(reference)
    ref = tmp_path / "ref"
    assert _scores(out) == _scores(ref)
    assert _table(out) == _table(ref) and len(_table(ref)) == 2
    assert not (out / "cells").exists()  # save_models is off: nothing of the cells is kept


def test_a_crashed_cell_resumes_and_other_settings_start_it_afresh(setup, tmp_path, monkeypatch, capsys):
    import transferlab.finetune.loop as loop

    d = setup
    monkeypatch.chdir(d)
    models = [{"name": "tiny", "model": str(d / "tiny")}]

    def cfg(out, **ft):
        return load_compare_config(_config(d, "crash.yaml", out_dir=str(tmp_path / out), models=models,
                                           train_sizes=[30], seeds=[0], finetune={**_RESUMABLE, **ft}))

    ref = run_compare(cfg("ref"), progress=False, plots=False)
    real = loop._train_step

    def crash(*a, **k):
        if a[-1] == 5:
            raise RuntimeError("cell crashed")
        return real(*a, **k)

    for out in ("a", "b"):
        monkeypatch.setattr(loop, "_train_step", crash)
        rep = run_compare(cfg(out), progress=False, plots=False)
        assert rep.n_run == 0 and "cell crashed" in rep.failures[0]["error"]
        monkeypatch.setattr(loop, "_train_step", real)
    cell = grid.cell_dir(tmp_path / "a", ccfg.plan_cells(cfg("a"))[0])
    assert [s for s, _ in list_checkpoints(cell / "checkpoints")] == [2, 4]
    capsys.readouterr()
    assert main(["compare", str(d / "crash.yaml"), "--dry-run", "--quiet"]) == 0  # the file of cfg("a")
    assert "part  tiny" in capsys.readouterr().out  # the dry run says the cell will resume

    # the same settings resume the cell and end where an uninterrupted run ends
    rep = run_compare(cfg("a"), progress=False, plots=False)
    assert rep.n_run == 1 and f"resumed from {cell / 'checkpoints'}" in capsys.readouterr().out
    assert _scores(tmp_path / "a") == _scores(tmp_path / "ref") and _table(tmp_path / "a") == _table(tmp_path / "ref")
    assert ref.n_run == 1 and not (tmp_path / "a" / "cells").exists()

    # edited settings: the old checkpoints are not resumed (nor refused as another run's): a fresh start
    seen = []

    def spy(c, out_dir):
        seen.append((out_dir / "checkpoints").exists())
        return grid.run_finetune_cell(c, out_dir)

    rep = run_compare(cfg("b", lr=2e-3), progress=False, plots=False, runner=spy)
    assert rep.n_run == 1 and not rep.failures and seen == [False]
    assert "resumed from" not in capsys.readouterr().out

    # checkpoint cadence is not a setting of the cell: changing it reruns nothing
    c1, c2 = ccfg.plan_cells(cfg("b", lr=2e-3))[0], ccfg.plan_cells(cfg("b", lr=2e-3, save_every=0, keep_last=1))[0]
    assert c1.spec_hash == c2.spec_hash


def test_cell_folders_are_one_safe_path_component_per_name(tmp_path):
    cfg = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100],
                                "models": [{"name": "BART w/ Token Masking", "model": "builtin:minilm"},
                                           {"name": "bert-mini", "model": "builtin:minilm"}]}, base=tmp_path)
    a, b = (grid.cell_dir(cfg.out_dir, c) for c in ccfg.plan_cells(cfg))
    assert b == tmp_path / "x" / "cells" / "bert-mini" / "imdb" / "n100" / "seed0"
    assert a.relative_to(tmp_path / "x" / "cells").parts[0].startswith("BART-w-Token-Masking-")
    assert len(a.relative_to(tmp_path / "x" / "cells").parts) == 4


def test_baselines_share_the_grids_evaluation_subsets():
    """A baseline row is scored on the validation/test subsets the fine-tuned rows use."""
    cfg = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "train_sizes": [100],
                                "finetune": {"validation_size": 50, "test_size": 80, "epochs": 2},
                                "models": ["tfidf-logreg", {"name": "s", "model": "bert-mini", "from_scratch": True}]})
    base, ft = cfg.models
    assert base.finetune == {"validation_size": 50, "test_size": 80}  # not the fine-tuning recipe
    assert ft.finetune["validation_size"] == 50 and ft.finetune["epochs"] == 2
    plain = parse_compare_config({"out_dir": "x", "tasks": ["imdb"], "models": ["tfidf-logreg"]})
    assert plain.models[0].finetune == {}  # no sizes: the whole splits, and the old spec hash
