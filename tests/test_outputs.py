"""The one output rule (``transferlab.outputs``, docs/outputs.md), command by command.

Every writing subcommand: refuses a foreign output unless ``--force``, refuses an output that is
(or holds) an input, takes a lock held for the whole run, writes whole-or-nothing with the user's
umask, and leaves no stale temp folders; append-only logs survive torn rows; a SIGTERM'd run
exits non-zero and resumes to the same weights and log; a failed start leaves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transferlab.cli import main
from transferlab.outputs import (
    Output, OutputError, append_jsonl, clean_stale_siblings, foreign_entries, lock, read_jsonl,
)
from transferlab.utils import atomic_dir, atomic_write_text

from tiny import TINY_MODEL, prepared_data, write_corpus  # noqa: E402


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def _precious(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "thesis.tex").write_text("do not delete")
    return d


def _intact(d: Path) -> None:
    assert (d / "thesis.tex").read_text() == "do not delete"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus, a tokenizer folder, prepared shards and a tiny model folder (ours, with tokenizer)."""
    from transferlab.config import get_preset
    from transferlab.models.model import TransferModel
    from transferlab.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("outputs")
    data = prepared_data(root)
    corpus = root / "corpus-wordpiece.txt"
    tok = Tokenizer.from_pretrained(data / "tokenizer")
    tok_dir = root / "tok"
    tok.save(tok_dir)
    cfg = get_preset("bert-tiny", vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=64)
    model = root / "model"
    TransferModel(cfg).save_pretrained(model)
    tok.save(model)
    return {"root": root, "corpus": corpus, "data": data, "tok": tok_dir, "model": model}


def _pretrain(data: Path, out: Path, *flags: str, steps: int = 2) -> list[str]:
    return ["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32", *flags,
            *TINY_MODEL, "train.progress=false", "train.tensorboard=false", "train.log_every=1"]


# ----------------------------------------------------------------------------- foreign outputs
def _argv(cmd: str, w: dict, out: Path) -> list[str]:
    """The command line of ``cmd`` writing to ``out``."""
    return {
        "tokenizer": ["tokenizer", "train", "--input", str(w["corpus"]), "--vocab-size", "120", "--out", str(out)],
        "prepare": ["prepare", "--tokenizer", str(w["tok"]), "--input", str(w["corpus"]), "--out", str(out),
                    "--workers", "0", "--no-progress"],
        "convert": ["convert", "--to-hf", str(w["model"]), "--out", str(out)],
        "pretrain": _pretrain(w["data"], out),
        "finetune": ["finetune", "--model", str(w["model"]), "--task", "rotten-tomatoes", "--out", str(out),
                     "--quiet"],
        "demo": ["demo", "--quick", "--out", str(out), "--no-progress"],
    }[cmd]


@pytest.mark.parametrize("cmd", ["tokenizer", "prepare", "convert", "pretrain", "finetune", "demo"])
def test_a_folder_that_is_not_the_commands_own_output_is_refused(cmd, world, tmp_path, capsys):
    out = _precious(tmp_path / "other")
    assert main(_argv(cmd, world, out)) == 2
    _one_line_error(capsys, str(out), "thesis.tex", "--force")
    _intact(out)
    assert sorted(os.listdir(tmp_path)) == ["other"]  # no temp folder, no lock file left


@pytest.mark.parametrize("cmd", ["tokenizer", "prepare", "convert"])
def test_force_replaces_a_foreign_folder_and_a_rerun_replaces_its_own(cmd, world, tmp_path, capsys):
    out = _precious(tmp_path / "other")
    assert main([*_argv(cmd, world, out), "--force"]) == 0, capsys.readouterr().err
    assert not (out / "thesis.tex").exists()
    assert main(_argv(cmd, world, out)) == 0, capsys.readouterr().err  # its own earlier output: no --force needed
    assert sorted(os.listdir(tmp_path)) == ["other"]


def test_tokenizer_train_into_a_model_folder_keeps_the_models_tokenizer(world, tmp_path, capsys):
    before = (world["model"] / "tokenizer.json").read_bytes()
    assert main(_argv("tokenizer", world, world["model"])) == 2
    _one_line_error(capsys, "is not a tokenizer folder", "config.json")
    assert (world["model"] / "tokenizer.json").read_bytes() == before


def test_prepare_into_a_folder_with_an_unrelated_meta_json(world, tmp_path, capsys):
    out = _precious(tmp_path / "mine")
    (out / "meta.json").write_text('{"author": "me"}')
    assert main(_argv("prepare", world, out)) == 2
    _one_line_error(capsys, "is not a prepared dataset")
    _intact(out)
    assert json.loads((out / "meta.json").read_text()) == {"author": "me"}


def test_convert_never_replaces_its_source_a_folder_holding_it_or_a_run(world, tmp_path, capsys):
    for out in (world["model"], world["model"].parent):
        assert main(["convert", "--to-hf", str(world["model"]), "--out", str(out)]) == 2
        _one_line_error(capsys, "input")
        assert (world["model"] / "model.safetensors").is_file()
    run = tmp_path / "run"
    assert main(_pretrain(world["data"], run)) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(run / "model"), "--out", str(run)]) == 2  # the run folder itself
    _one_line_error(capsys)
    assert (run / "checkpoints").is_dir() and (run / "model" / "model.safetensors").is_file()


def test_finetune_over_an_earlier_finetune_with_notes_and_eval_files_is_refused(world, tmp_path, capsys):
    out = tmp_path / "ft"
    out.mkdir()
    for name in ("task.json", "config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        (out / name).write_text("{}")
    assert foreign_entries(out, "finetune") == []  # its own earlier output: would be replaced
    (out / "eval-imdb-test.json").write_text('{"accuracy": 0.9}')
    (out / "notes.md").write_text("seed 3 was the good one")
    assert main(_argv("finetune", world, out)) == 2
    _one_line_error(capsys, "eval-imdb-test.json", "notes.md")
    assert (out / "notes.md").read_text() == "seed 3 was the good one"


@pytest.mark.parametrize("cmd", ["pretrain", "finetune", "predict", "convert"])
def test_out_equal_to_an_input_is_refused(cmd, world, capsys):
    argv = {
        "pretrain": _pretrain(world["data"], world["data"]),
        "finetune": ["finetune", "--model", str(world["model"]), "--task", "imdb", "--out", str(world["model"])],
        "predict": ["predict", "--model", str(world["model"]), "--input", str(world["corpus"]),
                    "--out", str(world["corpus"])],
        "convert": ["convert", "--to-hf", str(world["model"]), "--out", str(world["model"])],
    }[cmd]
    before = sorted(os.listdir(world["root"]))
    assert main(argv) == 2
    _one_line_error(capsys)
    assert sorted(os.listdir(world["root"])) == before
    assert (world["data"] / "meta.json").is_file() and world["corpus"].stat().st_size > 0


@pytest.mark.parametrize("cmd", ["tokenizer", "prepare"])
def test_an_output_inside_the_corpus_folder_is_refused(cmd, world, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(world["corpus"].read_text())
    argv = _argv(cmd, world, corpus / "out")
    argv[argv.index(str(world["corpus"]))] = str(corpus)
    assert main(argv) == 2
    _one_line_error(capsys, "inside the input folder")
    assert os.listdir(corpus) == ["a.txt"]


# ----------------------------------------------------------------------------- file outputs
@pytest.mark.parametrize("cmd", ["predict", "evaluate", "features", "features-sidecar", "curves", "icl"])
def test_an_existing_file_that_is_not_the_commands_own_is_not_overwritten(cmd, world, tmp_path, capsys):
    victim = tmp_path / ("config.json" if cmd == "features-sidecar" else "victim.txt")
    victim.write_text("precious")
    m = str(world["model"])
    argv = {
        "predict": ["predict", "--model", m, "--text", "good", "--out", str(victim)],
        "evaluate": ["evaluate", "--model", m, "--out", str(victim)],
        "features": ["features", "--model", m, "--input", str(world["corpus"]), "--output", str(victim.with_suffix(".npy"))],
        "features-sidecar": ["features", "--model", m, "--input", str(world["corpus"]),
                             "--output", str(tmp_path / "config.npy")],  # would write config.json beside it
        "curves": ["curves", str(world["root"]), "--out", str(victim)],
        "icl": ["icl", "--model", m, "--task", "imdb", "--output", str(victim)],
    }[cmd]
    if cmd == "features":
        victim.with_suffix(".npy").write_text("precious")
        victim = victim.with_suffix(".npy")
    assert main(argv) == 2
    _one_line_error(capsys, "--force")
    assert victim.read_text() == "precious"


def test_features_rerun_replaces_its_own_files_and_force_a_foreign_one(world, tmp_path, capsys):
    out = tmp_path / "f.npy"
    argv = ["features", "--model", str(world["model"]), "--input", str(world["corpus"]), "--output", str(out),
            "--limit", "3", "--max-length", "16"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv) == 0, capsys.readouterr().err  # an earlier run's features: replaced
    (tmp_path / "f.json").write_text("my own notes")
    assert main(argv) == 2
    assert main([*argv, "--force"]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["shape"][0] == 3


# ----------------------------------------------------------------------------- locks
@pytest.mark.parametrize("cmd", ["prepare", "pretrain", "tokenizer"])
def test_a_second_writer_is_refused_while_the_first_holds_the_folder(cmd, world, tmp_path, capsys):
    out = tmp_path / "busy"
    with lock(out):  # what the first writer holds for its whole run
        assert main(_argv(cmd, world, out)) == 2
        _one_line_error(capsys, f"{out} is in use by another transferlab process (pid {os.getpid()})")
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == []  # the lock file goes with its holder
    assert main(_argv(cmd, world, out)) == 0, capsys.readouterr().err


def test_lock_is_exclusive_across_processes(tmp_path):
    target = tmp_path / "d"
    code = ("import sys, time; from transferlab.outputs import lock\n"
            "with lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert p.stdout.readline().strip() == b"held"
        with pytest.raises(OutputError, match=rf"in use by another transferlab process \(pid {p.pid}\)"):
            with lock(target):
                pass
    finally:
        p.kill()
        p.wait()
    with lock(target):  # released when its holder died (kill -9 included: the kernel drops flocks)
        pass


# ----------------------------------------------------------------------------- whole or nothing
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_of_dead_writers_are_removed_by_the_next_run(world, tmp_path, capsys):
    out = tmp_path / "tok"
    dead = _dead_pid()
    stale = [tmp_path / f".tok.{dead}.abc123.tmp", tmp_path / f".tok.old-{dead}"]
    for s in stale:
        s.mkdir()
        (s / "tokenizer.json").write_text("half")
    live = tmp_path / f".tok.{os.getpid()}.zzz.tmp"  # a live writer's (ours): kept
    live.mkdir()
    assert main(_argv("tokenizer", world, out)) == 0, capsys.readouterr().err
    assert not any(s.exists() for s in stale) and live.exists()
    assert clean_stale_siblings(out) == []


def test_a_kill_while_saving_a_tokenizer_keeps_the_old_tokenizer_whole(world, tmp_path, monkeypatch, capsys):
    from transferlab.tokenizer import Tokenizer

    out = tmp_path / "tok"
    assert main(_argv("tokenizer", world, out)) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    real = Tokenizer.save

    def dies_half_way(self, d):
        real(self, d)
        (Path(d) / "tokenizer_config.json").unlink()  # as if killed between the two files
        raise KeyboardInterrupt

    monkeypatch.setattr(Tokenizer, "save", dies_half_way)
    assert main([*_argv("tokenizer", world, out)[:-2], "--vocab-size", "150", "--out", str(out)]) == 130
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["tok"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(mask, world, tmp_path, capsys):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "f.json", "{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
        out = tmp_path / "tok"
        assert main(_argv("tokenizer", world, out)) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "tokenizer.json").stat().st_mode) == 0o666 & ~mask


# ----------------------------------------------------------------------------- append-only logs
def test_a_row_after_a_torn_tail_starts_on_a_fresh_line(tmp_path, capsys):
    log = tmp_path / "results.jsonl"
    append_jsonl(log, {"a": 1})
    with open(log, "ab") as f:
        f.write(b'{"a": 2, "b": "cut mid-wri')  # kill -9 / full disk
    append_jsonl(log, {"a": 3})
    append_jsonl(log, [{"a": 4}, {"a": 5}])
    assert [r["a"] for r in read_jsonl(log)] == [1, 3, 4, 5]
    assert "skipped 1 torn" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_compare_keeps_going_after_a_torn_row(tmp_path, capsys):
    from transferlab.experiments.grid import append_row as _append_row, read_results

    row = {"method": "m", "task": "t", "train_size": 10, "seed": 0, "spec": "x"}
    log = tmp_path / "results.jsonl"
    _append_row(log, row)
    with open(log, "ab") as f:
        f.write(json.dumps({**row, "seed": 1}).encode()[:30])  # the seed-1 cell was cut mid-write
    _append_row(log, {**row, "seed": 2})  # the next cell's row is not glued onto it
    _append_row(log, {**row, "seed": 3})  # and the grid does not stop for good on the next run
    assert [r["seed"] for r in read_results(log)] == [0, 2, 3]


# ----------------------------------------------------------------------------- pretrain runs
def test_resume_on_a_folder_without_a_run_is_refused(world, tmp_path, capsys):
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert main(_pretrain(world["data"], out, "--resume")) == 2
        _one_line_error(capsys, "no run to resume", "drop --resume")
    assert sorted(os.listdir(tmp_path)) == ["empty"]
    assert os.listdir(tmp_path / "empty") == []


def test_a_failed_start_leaves_nothing_so_the_corrected_command_runs(world, tmp_path, capsys):
    short = tmp_path / "short"
    write_corpus(tmp_path / "c.txt", n_docs=8)
    assert main(["prepare", "--tokenizer", str(world["tok"]), "--input", str(tmp_path / "c.txt"),
                 "--out", str(short), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    bad = _pretrain(short, out)
    bad[bad.index("--seq-len") + 1] = "500"  # longer than the whole train split: fails after config.json
    assert main(bad) == 2
    _one_line_error(capsys, "fewer than one window")
    assert not out.exists()  # so neither "already holds a run" nor a --resume config mismatch follows
    assert main(_pretrain(short, out)) == 0, capsys.readouterr().err

    mine = _precious(tmp_path / "mine")  # an existing folder keeps what it had; only the run's files go
    bad[bad.index("--out") + 1] = str(mine)
    assert main([*bad, "--force"]) == 2
    assert sorted(os.listdir(mine)) == ["thesis.tex"]


def test_sigterm_exits_143_and_resume_gives_the_same_weights_and_log(world, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from transferlab.training import loop

    argv = lambda out, *f: _pretrain(world["data"], out, "--save-every", "2", "--eval-every", "2", *f, steps=6)
    ref = tmp_path / "ref"
    assert main(argv(ref)) == 0, capsys.readouterr().err

    out = tmp_path / "term"
    real = loop.Trainer.train_step

    def term_at_3(self, *a, **k):
        rec = real(self, *a, **k)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # preemption
        return rec

    monkeypatch.setattr(loop.Trainer, "train_step", term_at_3)
    capsys.readouterr()
    assert main(argv(out)) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 3" in err and "--resume" in err and "step-00000003" in err
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(loop.Trainer, "train_step", real)

    assert main(argv(out, "--resume")) == 0, capsys.readouterr().err
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_jsonl(ref / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    key = lambda r: (r["split"], r["step"], r.get("loss", r.get("val_loss")))
    assert [key(r) for r in ra] == [key(r) for r in rb]  # no extra validation row from the stop


def test_force_starts_a_pretrain_run_over_and_keeps_other_files(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_pretrain(world["data"], out)) == 0
    capsys.readouterr()
    assert main(_pretrain(world["data"], out)) == 2
    _one_line_error(capsys, "already holds a run", "--resume", "--force")
    (out / "notes.txt").write_text("mine")  # the user's notes beside a run (in place: never replaced)
    assert main(_pretrain(world["data"], out, "--resume")) == 0, capsys.readouterr().err
    other = _precious(tmp_path / "other")  # but a folder that holds no run is not written into
    assert main(_pretrain(world["data"], other)) == 2
    _one_line_error(capsys, "thesis.tex", "pass --force to write into it anyway")
    assert main(_pretrain(world["data"], out, "--force", steps=1)) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_output_claim_api(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(KeyError):
        with Output(d, "pretrain", cleanup=True):
            d.mkdir()
            (d / "config.json").write_text("{}")
            raise KeyError("failed start")
    assert not d.exists()
    with Output(tmp_path / "x.json", file=True) as o:
        assert o.path == tmp_path / "x.json"
    (tmp_path / "x.json").write_text("theirs")
    with pytest.raises(OutputError, match="already exists"):
        Output(tmp_path / "x.json", file=True).check()
    Output(tmp_path / "x.json", file=True, force=True).check()


def test_sigterm_before_the_first_checkpoint_exits_143_and_leaves_nothing(world, tmp_path, monkeypatch, capsys):
    from transferlab.training import loop

    real = loop.Trainer.__init__

    def term_while_starting(self, *a, **k):  # config.json is written by now
        os.kill(os.getpid(), signal.SIGTERM)
        real(self, *a, **k)

    monkeypatch.setattr(loop.Trainer, "__init__", term_while_starting)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    assert main(_pretrain(world["data"], out)) == 143
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []  # no config.json left to refuse the rerun
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is put back
