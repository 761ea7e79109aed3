"""Reliability classes of issue 13: each class of mistake or fault ends in one line, exit 2.

One test per class, parametrised over the subcommands it reaches: OS-level failures at the
command boundary (path under a regular file, a place even root may not write, a full disk, a
closed stdout), numeric ranges in the typed configs and their flags, wrong-shape JSON, paths in a
safetensors index that leave the model folder, ``--device``, inputs longer than the model's
positions, a tokenizer that does not belong to the model. Fixtures are tiny (1 layer, d_model 32)
and built once per module; the full catalogue is benchmarks/reliability_catalogue.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import family_layout, save_model_dir, tokenizer_ids
from transferlab.checks import cap_max_length, check_tokenizer, resolve_device
from transferlab.cli import main, os_error_message
from transferlab.config import ModelConfig, Range, check_fields, read_json
from transferlab.errors import CheckpointError, ConfigError, DataError
from transferlab.finetune.config import FinetuneConfig, TaskSpec
from transferlab.models.model import TransferModel
from transferlab.tokenizer import Tokenizer
from transferlab.training.config import TrainConfig

WORDS = "the movie film plot was is very good great bad awful dull alice bob paris red blue".split()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _corpus(n: int = 200) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]


def _model_dir(root: Path, name: str, family: str, kind: str, vocab: int | None = None) -> Path:
    tok = Tokenizer.train(_corpus(), kind=kind, vocab_size=200 if kind == "wordpiece" else 300, n_sentinels=0)
    cfg = ModelConfig(
        family=family, vocab_size=vocab or tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64,
        max_positions=32, **family_layout(family), dropout=0.0, attention_dropout=0.0, **tokenizer_ids(tok, bos=True),
        heads={"lm": {}}, lm_head_transform=family == "encoder", lm_head_bias=family == "encoder",
    )
    return save_model_dir(root / name, cfg, tok)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rel")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(_corpus()) + "\n", encoding="utf-8")
    afile = root / "afile"
    afile.write_text("a regular file\n")
    rng = random.Random(1)
    csv = root / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{' '.join(rng.choice(WORDS) for _ in range(5))},{rng.choice('ab')}\n"
                                           for _ in range(24)), encoding="utf-8")
    fx = {"root": root, "corpus": corpus, "afile": afile, "csv": csv,
          "enc": _model_dir(root, "enc", "encoder", "wordpiece", vocab=320),
          "dec": _model_dir(root, "dec", "decoder", "bpe")}
    bpe = root / "tok-bpe"
    Tokenizer.train(_corpus(), kind="bpe", vocab_size=280, n_sentinels=0).save(bpe)
    fx["bpe"] = bpe
    assert main(["finetune", "--model", str(fx["enc"]), "--train", str(csv), "--out", str(root / "ft"), "--epochs", "1",
                 "--batch-size", "8", "--quiet", "--no-test", "--dtype", "fp32", "--device", "cpu", "--no-energy"]) == 0
    fx["ft"] = root / "ft"
    return fx


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one 'error:' line on stderr and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage error: also one 'error:' line
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# the writing subcommands, each with its output at OUT
def _writers(fx: dict[str, Path]) -> dict[str, list[str]]:
    enc, ft = str(fx["enc"]), str(fx["ft"])
    return {
        "tokenizer train": ["tokenizer", "train", "--vocab-size", "120", "--input", str(fx["corpus"]), "--out", "OUT"],
        "prepare": ["prepare", "--tokenizer", enc, "--input", str(fx["corpus"]), "--out", "OUT", "--workers", "0",
                    "--no-progress"],
        "finetune": ["finetune", "--model", enc, "--train", str(fx["csv"]), "--out", "OUT", "--epochs", "1", "--quiet",
                     "--no-test", "--dtype", "fp32", "--device", "cpu", "--no-energy"],
        "evaluate": ["evaluate", "--model", ft, "--test", str(fx["csv"]), "--out", "OUT", "--quiet", "--device", "cpu"],
        "predict": ["predict", "--model", ft, "--text", "good", "--out", "OUT", "--device", "cpu"],
        "convert": ["convert", "--to-hf", enc, "--out", "OUT"],
        "features": ["features", "--model", enc, "--input", str(fx["corpus"]), "--limit", "3", "--output", "OUT.npy"],
    }


WRITERS = ["tokenizer train", "prepare", "finetune", "evaluate", "predict", "convert", "features"]


def _with_out(argv: list[str], out: str) -> list[str]:
    return [a.replace("OUT", out) for a in argv]


# ---------------------------------------------------------------------------- 1. OS-level failures
@pytest.mark.parametrize("cmd", WRITERS)
def test_output_under_a_regular_file_is_one_line(fx, capsys, cmd):
    out = str(fx["afile"] / "sub" / "x")
    line = _one_line_error(capsys, _with_out(_writers(fx)[cmd], out))
    assert str(fx["afile"]) in line and "Not a directory" in line, line
    assert fx["afile"].read_text() == "a regular file\n"  # the file in the way is untouched


@pytest.mark.parametrize("cmd", WRITERS)
def test_output_where_even_root_may_not_write_is_one_line(fx, capsys, cmd):
    # /proc/<pid>/ refuses new entries to every user, root included (chmod would not stop root)
    out = f"/proc/{os.getpid()}/transferlab-out/x"
    line = _one_line_error(capsys, _with_out(_writers(fx)[cmd], out))
    assert line.startswith("error: /proc/"), line


@pytest.mark.parametrize("cmd", ["tokenizer train", "finetune", "evaluate", "predict", "convert"])
def test_disk_full_keeps_the_earlier_output(fx, capsys, monkeypatch, tmp_path, cmd):
    argv = _writers(fx)[cmd]
    out = tmp_path / "out"
    assert main(_with_out(argv, str(out))) == 0  # a first, complete output
    capsys.readouterr()
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the kernel reports a full disk at fsync (delayed allocation)
    line = _one_line_error(capsys, _with_out(argv, str(out)))
    monkeypatch.undo()
    assert "No space left on device" in line and str(out) in line, line
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the earlier output survives whole, and no temp files are left behind


def test_disk_full_in_a_subprocess_via_sitecustomize(fx, tmp_path):
    """ENOSPC from the OS layer of a real `transferlab` process: every write() fails."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import builtins, errno, io, os\n"
        "_open = builtins.open\n"
        "class _Full(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "_fdopen = os.fdopen\n"
        "def fdopen(fd, mode='r', *a, **k):\n"
        "    if 'w' in mode or 'a' in mode:\n"
        "        return io.BufferedWriter(_Full())\n"
        "    return _fdopen(fd, mode, *a, **k)\n"
        "os.fdopen = fdopen\n")
    out = tmp_path / "tok"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), SRC])}
    r = subprocess.run([sys.executable, "-m", "transferlab", "tokenizer", "train", "--vocab-size", "120", "--input",
                        str(fx["corpus"]), "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    assert "No space left on device" in r.stderr and str(out) in r.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


@pytest.mark.parametrize("argv", [
    ["tokenizer", "encode", "--tokenizer", "ENC", *["some text"] * 300],
    ["info", "ENC"],
    ["objectives", "list"],
    ["generate", "--model", "DEC", "--prompt", "the movie", "--max-new-tokens", "3", "--device", "cpu"],
], ids=["tokenizer encode", "info", "objectives list", "generate"])
def test_closed_stdout_exits_quietly(fx, argv):
    argv = [str(fx["enc"]) if a == "ENC" else str(fx["dec"]) if a == "DEC" else a for a in argv]
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen([sys.executable, "-m", "transferlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    p.stdout.close()  # `| head -0`: the reader is gone before the first write
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141, err  # 128 + SIGPIPE, as a shell reports `yes | head -0`
    assert b"Traceback" not in err and b"Broken pipe" not in err and b"BrokenPipe" not in err, err


def test_os_error_message_names_the_users_path():
    e = OSError(errno.ENOSPC, "No space left on device", "/r/out/.model.safetensors.tmp")
    assert os_error_message(e) == "/r/out/model.safetensors: No space left on device"
    e = OSError(errno.EISDIR, "Is a directory", "/r/.x.ab12cd34.tmp", None, "/r/x")
    assert os_error_message(e) == "/r/x: Is a directory"
    e = OSError(errno.ENOSPC, "No space left on device", "/r/.run.k3j2h1g0.tmp/config.json")
    assert os_error_message(e) == "/r/run/config.json: No space left on device"


# ---------------------------------------------------------------------------- 2. numbers and ranges
@pytest.mark.parametrize("cls,field,value,want", [
    (TrainConfig, "lr", math.nan, "train.lr: expected a finite number > 0, got nan"),
    (TrainConfig, "lr", -1.0, "train.lr: expected a finite number > 0, got -1.0"),
    (TrainConfig, "batch_size", 0, "train.batch_size: expected an integer >= 1, got 0"),
    (TrainConfig, "max_steps", -1, "train.max_steps: expected an integer >= 0, got -1"),
    (TrainConfig, "warmup", math.nan, "train.warmup: expected a finite number in [0, 1), got nan"),
    (TrainConfig, "clip", math.inf, "train.clip: expected a finite number >= 0, got inf"),
    (TrainConfig, "seed", -1, "train.seed: expected an integer >= 0, got -1"),
    (TrainConfig, "lr", "fast", "train.lr: expected a number, got 'fast'"),
    (ModelConfig, "vocab_size", -5, "model.vocab_size: expected an integer >= 1, got -5"),
    (ModelConfig, "dropout", math.nan, "model.dropout: expected a finite number in [0, 1), got nan"),
    (ModelConfig, "max_positions", 0, "model.max_positions: expected an integer >= 1, got 0"),
    (ModelConfig, "norm_eps", -1.0, "model.norm_eps: expected a finite number > 0, got -1.0"),
    (ModelConfig, "eos_token_id", -7, "model.eos_token_id: expected an integer >= -1, got -7"),
    (ModelConfig, "d_model", "big", "model.d_model: expected an integer, got 'big'"),
    (FinetuneConfig, "max_grad_norm", math.nan, "finetune.max_grad_norm: expected a finite number >= 0, got nan"),
    (FinetuneConfig, "max_minutes", math.nan, "finetune.max_minutes: expected a finite number > 0, got nan"),
    (FinetuneConfig, "weight_decay", -1.0, "finetune.weight_decay: expected a finite number >= 0, got -1.0"),
    (FinetuneConfig, "seed", -1, "finetune.seed: expected an integer >= 0, got -1"),
])
def test_typed_configs_check_types_and_ranges(cls, field, value, want):
    base = {"model": "x", "task": "imdb"} if cls is FinetuneConfig else {}
    with pytest.raises(ConfigError) as e:
        cls(**base, **{field: value}).validate()
    assert str(e.value) == want


def test_configs_coerce_only_what_is_unambiguous():
    t = TrainConfig(lr="5e-4", max_steps=10.0, betas=(0.9, 0.99)).validate()  # PyYAML reads 5e-4 as a string
    assert (t.lr, t.max_steps, t.betas) == (5e-4, 10, [0.9, 0.99]) and isinstance(t.max_steps, int)
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer, got 2.5"):
        TrainConfig(max_steps=2.5).validate()
    with pytest.raises(ConfigError, match=r"train.compile: expected true or false"):
        TrainConfig(compile="yes").validate()


@pytest.mark.parametrize("argv,flag", [
    (["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", "D", "--out", "O", "--lr", "nan"], "--lr"),
    (["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", "D", "--out", "O", "--batch-size", "0"], "--batch-size"),
    (["finetune", "--model", "M", "--task", "imdb", "--out", "O", "--epochs", "nan"], "--epochs"),
    (["finetune", "--model", "M", "--task", "imdb", "--out", "O", "--seed", "-1"], "--seed"),
    (["generate", "--model", "M", "--prompt", "a", "--temperature", "nan"], "--temperature"),
    (["generate", "--model", "M", "--prompt", "a", "--seed", "-1"], "--seed"),
    (["generate", "--model", "M", "--prompt", "a", "--length-penalty", "inf"], "--length-penalty"),
    (["tokenizer", "train", "--vocab-size", "-5", "--input", "I", "--out", "O"], "--vocab-size"),
    (["tokenizer", "train", "--min-frequency", "-1", "--input", "I", "--out", "O"], "--min-frequency"),
    (["prepare", "--tokenizer", "T", "--input", "I", "--out", "O", "--val-fraction", "1.5"], "--val-fraction"),
    (["features", "--model", "M", "--input", "I", "--output", "o.npy", "--batch-size", "0"], "--batch-size"),
    (["icl", "--model", "M", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--model", "M", "--batch-size", "0"], "--batch-size"),
    (["objectives", "preview", "--data", "D", "--objective", "mlm", "--examples", "-1"], "--examples"),
    (["demo", "--pretrain-minutes", "-1"], "--pretrain-minutes"),
    (["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", "D", "--out", "O", "--price-per-hour", "-1"],
     "--price-per-hour"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_numeric_flags_are_checked_before_running(capsys, argv, flag):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: argument {flag}: expected ") and err.count("\n") == 1, err  # no usage block


def test_range_describes_itself():
    assert Range(int, ge=1).describe() == "an integer >= 1"
    assert Range(float, gt=0, le=1).describe() == "a finite number in (0, 1]"
    assert Range(float).problem(math.nan) and Range(float).problem(True) and not Range(float).problem(3)


# ---------------------------------------------------------------------------- 3. wrong-shape JSON
def _copy_with(src: Path, dst: Path, file: str, edit) -> Path:
    shutil.copytree(src, dst)
    (dst / file).write_text(json.dumps(edit(json.loads((dst / file).read_text()))))
    return dst


@pytest.mark.parametrize("case", [
    "config list", "config d_model string", "config heads list", "task list", "task max_length string",
    "task columns list", "tokenizer config list", "tokenizer special_tokens string",
])
def test_wrong_shape_json_names_file_and_field(fx, capsys, tmp_path, case):
    enc, ft = fx["enc"], fx["ft"]
    d = tmp_path / "m"
    predict = ["predict", "--model", str(d), "--text", "good", "--device", "cpu"]
    argv, file, field = {
        "config list": lambda: (["info", str(d)], _copy_with(enc, d, "config.json", lambda c: [c]) / "config.json", "expected a JSON object"),
        "config d_model string": lambda: (["info", str(d)], _copy_with(enc, d, "config.json", lambda c: {**c, "d_model": "big"}) / "config.json",
                                  "model.d_model: expected an integer"),
        "config heads list": lambda: (["info", str(d)], _copy_with(enc, d, "config.json", lambda c: {**c, "heads": ["lm"]}) / "config.json",
                              "model.heads: expected a mapping"),
        "task list": lambda: (predict, _copy_with(ft, d, "task.json", lambda c: [c]) / "task.json", "expected a JSON object"),
        "task max_length string": lambda: (predict, _copy_with(ft, d, "task.json", lambda c: {**c, "max_length": "x"}) / "task.json",
                                   "task.max_length: expected an integer"),
        "task columns list": lambda: (predict, _copy_with(ft, d, "task.json", lambda c: {**c, "columns": ["t"]}) / "task.json",
                              "task.columns: expected a mapping"),
        "tokenizer config list": lambda: (["tokenizer", "encode", "--tokenizer", str(d), "hi"],
                                  _copy_with(enc, d, "tokenizer_config.json", lambda c: [c]) / "tokenizer_config.json",
                                  "expected a JSON object"),
        "tokenizer special_tokens string": lambda: (
            ["tokenizer", "encode", "--tokenizer", str(d), "hi"],
            _copy_with(enc, d, "tokenizer_config.json",
                       lambda c: {**c, "transferlab": {**c["transferlab"], "special_tokens": "[CLS]"}}) / "tokenizer_config.json",
            "transferlab.special_tokens: expected an object"),
    }[case]()
    line = _one_line_error(capsys, argv)
    assert str(file) in line and field in line, line


@pytest.mark.parametrize("content,field", [
    ({"train": [1]}, "train: expected a mapping"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"model": [1]}, "model: expected a mapping"),
    ({"objective": 5}, "objective: expected an objective name"),
    ([1, 2], "expected a mapping at the top level"),
])
def test_pretrain_config_file_of_the_wrong_shape(capsys, tmp_path, content, field):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(content))
    line = _one_line_error(capsys, ["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(tmp_path),
                                    "--out", str(tmp_path / "o"), "--max-steps", "1", "--config", str(cfg)])
    assert str(cfg) in line and field in line, line


def test_read_json_helper(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[1]")
    with pytest.raises(CheckpointError, match=r"x.json: expected a JSON object, got a list"):
        read_json(p, dict, error=CheckpointError)
    p.write_text("{\n  oops")
    with pytest.raises(ConfigError, match=r"x.json:2: invalid JSON"):
        read_json(p)
    with pytest.raises(DataError, match=r"y.json: file not found"):
        read_json(tmp_path / "y.json", error=DataError)


# ---------------------------------------------------------------------------- 4. paths in model files
@pytest.mark.parametrize("where", ["../outside.safetensors", "ABS"])
@pytest.mark.parametrize("cmd", ["convert", "info"])
def test_safetensors_index_may_not_leave_the_model_folder(fx, capsys, tmp_path, where, cmd):
    from safetensors.torch import load_file, save_file

    from transferlab.interop.hf import export_hf
    from transferlab.models.model import from_pretrained

    d = tmp_path / "hf"
    export_hf(from_pretrained(fx["enc"]), d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    target = str(tmp_path / "abs" / "shard.safetensors") if where == "ABS" else where
    outside = Path(target) if Path(target).is_absolute() else d / target
    outside.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(outside))  # a readable file, so only the path rule can refuse it
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: target for k in state}}))
    argv = ["convert", "--from-hf", str(d), "--out", str(tmp_path / "o")] if cmd == "convert" else ["info", str(d)]
    line = _one_line_error(capsys, argv)
    assert "outside the model folder" in line and "model.safetensors.index.json" in line, line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- 5. --device
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
@pytest.mark.parametrize("cmd", ["generate", "icl", "features", "features probe", "finetune", "evaluate", "predict"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "gpu"])
def test_device_errors_are_one_line(fx, capsys, cmd, device):
    enc, dec, ft = str(fx["enc"]), str(fx["dec"]), str(fx["ft"])
    argv = {
        "generate": ["generate", "--model", dec, "--prompt", "a"],
        "icl": ["icl", "--model", dec, "--task", "rotten-tomatoes", "--n-test", "2", "--no-progress"],
        "features": ["features", "--model", enc, "--input", str(fx["corpus"]), "--output", str(fx["root"] / "f.npy")],
        "features probe": ["features", "probe", "--model", enc, "--train-size", "10"],
        "finetune": ["finetune", "--model", enc, "--train", str(fx["csv"]), "--out", str(fx["root"] / "never")],
        "evaluate": ["evaluate", "--model", ft, "--test", str(fx["csv"])],
        "predict": ["predict", "--model", ft, "--text", "good"],
    }[cmd]
    line = _one_line_error(capsys, [*argv, "--device", device])
    assert f"--device {device}" in line and ("CUDA is not available" in line or "expected auto, cpu" in line), line
    assert not (fx["root"] / "never").exists()


def test_resolve_device_spellings():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("cuda:x")


# ---------------------------------------------------------------------------- 6. inputs longer than the positions
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_features_cap_max_length_at_the_positions(fx, capsys, tmp_path, pooling):
    long_txt = tmp_path / "long.txt"
    long_txt.write_text(" ".join(WORDS * 20) + "\n")  # ~340 tokens; the model has 32 positions
    out = tmp_path / "f.npy"
    rc = main(["features", "--model", str(fx["enc"]), "--input", str(long_txt), "--max-length", "512",
               "--pooling", pooling, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("longer than the model's 32 positions") <= 1
    import numpy as np

    v = np.load(out)
    assert v.shape[0] == 1 and (pooling != "none" or v.shape[1] == 32)


def test_features_probe_caps_max_length(fx, capsys, monkeypatch):
    import transferlab.finetune.features as F

    seen = []
    real = F._extract
    monkeypatch.setattr(F, "_extract", lambda *a: seen.append(a[10]) or real(*a))
    rc = main(["features", "probe", "--model", str(fx["enc"]), "--train-size", "16", "--no-test", "--max-length", "1000"])
    assert rc == 0, capsys.readouterr().err
    assert seen and set(seen) == {32}


def test_cap_max_length_leaves_unlimited_models_alone():
    m = TransferModel(ModelConfig(vocab_size=10, d_model=8, n_heads=2, n_layers=1, d_ff=8, position="rotary"))
    assert cap_max_length(m, 100000, quiet=True) == 100000


# ---------------------------------------------------------------------------- 7. a tokenizer of another model
def test_finetune_refuses_a_tokenizer_of_another_kind_even_if_smaller(fx, capsys, tmp_path):
    assert len(Tokenizer.from_pretrained(fx["bpe"])) < 320  # fits the embedding table by size
    line = _one_line_error(capsys, ["finetune", "--model", str(fx["enc"]), "--tokenizer", str(fx["bpe"]), "--train",
                                    str(fx["csv"]), "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert "bpe tokenizer" in line and "use the tokenizer the model was trained with" in line, line
    assert not (tmp_path / "o").exists()


def test_check_tokenizer_size_and_special_ids(fx):
    dec_tok = Tokenizer.from_pretrained(fx["dec"])
    cfg = ModelConfig(family="decoder", vocab_size=len(dec_tok) - 1, d_model=8, n_heads=2, n_layers=1, d_ff=8)
    with pytest.raises(ConfigError, match="tokens but the model's embedding table only"):
        check_tokenizer(cfg, dec_tok, "x")
    cfg = ModelConfig(family="decoder", vocab_size=1000, d_model=8, n_heads=2, n_layers=1, d_ff=8,
                      pad_token_id=dec_tok.pad_token_id, eos_token_id=dec_tok.eos_token_id + 5)
    with pytest.raises(ConfigError, match="eos token .* but the model was built with eos_token_id"):
        check_tokenizer(cfg, dec_tok, "x")


@pytest.mark.parametrize("cmd", ["generate", "features", "predict"])
def test_model_folder_with_a_tokenizer_too_big_is_refused(fx, capsys, tmp_path, cmd):
    d = tmp_path / "m"
    shutil.copytree(fx["ft"] if cmd == "predict" else fx["dec"] if cmd == "generate" else fx["enc"], d)
    rng = random.Random(2)
    text = [" ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(5)) for _ in range(50)) for _ in range(40)]
    big = Tokenizer.train(text * 3, kind="bpe", vocab_size=600, n_sentinels=0)
    assert len(big) > 320
    big.save(d)
    argv = {
        "generate": ["generate", "--model", str(d), "--prompt", "a", "--device", "cpu"],
        "features": ["features", "--model", str(d), "--input", str(fx["corpus"]), "--output", str(tmp_path / "f.npy")],
        "predict": ["predict", "--model", str(d), "--text", "good", "--device", "cpu"],
    }[cmd]
    line = _one_line_error(capsys, argv)
    assert "tokens but the model's embedding table only" in line, line


def test_check_fields_on_a_plain_dataclass():
    from dataclasses import dataclass

    @dataclass
    class S:
        n: int = 1
        xs: list[float] | None = None

    check_fields(S(xs=[1, 2.5]), "s")
    with pytest.raises(ConfigError, match=r"s.xs: expected a list of numbers"):
        check_fields(S(xs=["a"]), "s")
    assert TaskSpec.RANGES["max_length"].describe() == "an integer >= 1"


def test_safetensors_os_errors_are_one_line(fx, capsys, monkeypatch, tmp_path):
    """safetensors' Rust writer reports a full disk as SafetensorError('... (os error 28)')."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "conv"
    line = _one_line_error(capsys, ["convert", "--to-hf", str(fx["enc"]), "--out", str(out)])
    assert line.startswith("error: ") and "No space left on device" in line and str(tmp_path) in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("cmd", ["tokenizer train", "prepare", "finetune", "convert"])
def test_folder_output_that_is_a_file_is_refused_and_kept(fx, capsys, tmp_path, cmd):
    f = tmp_path / "a-file"
    f.write_text("keep me\n")
    line = _one_line_error(capsys, _with_out(_writers(fx)[cmd], str(f)))
    assert str(f) in line and "exists and is not a folder" in line, line
    assert f.read_text() == "keep me\n"
