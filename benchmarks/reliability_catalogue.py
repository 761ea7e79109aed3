"""A catalogue of bad invocations over every subcommand: count tracebacks vs one-line errors.

Usage (from the repository root, a few minutes on one CPU core)::

    PYTHONPATH=src python benchmarks/reliability_catalogue.py [--json OUT.json] [--verbose]

It builds tiny fixtures in a temp folder (a WordPiece and a BPE tokenizer, prepared shards, a
2-step pre-training run, an encoder / decoder model folder, a fine-tuned classifier, a
transformers-style sharded folder), then runs each case of the issue-13 reliability classes:

* ``os``: output under a regular file (ENOTDIR), in a folder we may not write (/sys: EACCES
  even as root), a full disk (ENOSPC raised by ``os.fsync``/``os.replace`` in-process) and a
  closed stdout (a subprocess whose pipe reader is gone);
* ``numeric``: negative / zero / NaN / out-of-range numbers on every command;
* ``shape``: JSON/YAML of the right syntax but the wrong shape in every file a command reads;
* ``index``: a safetensors index that names ``../x`` or an absolute path;
* ``device``: ``--device cuda`` (and nonsense) on a CPU-only torch;
* ``length``: inputs longer than the model's positions (``features``, ``features probe``);
* ``tokenizer``: a tokenizer of another kind / that does not fit the model.

Outcomes: ``traceback`` (an exception escaped the CLI), ``error`` (exit 2 with an ``error: ...``
line, argparse's usage error included), ``exit0`` (accepted), ``quiet`` (closed pipe: exit
without a traceback), ``other`` (any other exit status). Every case has the outcome it should
have; the script prints one line per case and the totals per class.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the movie film plot actors story was is very quite a an and but good great excellent "
         "wonderful bad awful terrible poor dull boring alice bob carol paris london rome red blue").split()


def _corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) for _ in range(n)]


# ------------------------------------------------------------------------------ fixtures
def build_fixtures(root: Path) -> dict[str, Path]:
    """Tiny inputs every case needs (about 20 s)."""
    import torch

    from transferlab.cli import main
    from transferlab.config import ModelConfig
    from transferlab.models.model import TransferModel
    from transferlab.tokenizer import Tokenizer

    fx: dict[str, Path] = {}
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(_corpus()) + "\n", encoding="utf-8")
    fx["corpus"] = corpus
    long_txt = root / "long.txt"
    long_txt.write_text(" ".join(WORDS * 40) + "\n", encoding="utf-8")  # ~1,200 tokens on one line
    fx["long"] = long_txt
    afile = root / "afile"
    afile.write_text("a regular file\n")
    fx["afile"] = afile

    def model_dir(name: str, family: str, kind: str) -> Path:
        tok = Tokenizer.train([*_corpus()], kind=kind, vocab_size=200 if kind == "wordpiece" else 300, n_sentinels=0)
        # the encoder's embedding table is larger than its tokenizer (padded, as is common), so a
        # foreign BPE tokenizer of 280 tokens fits by size: only its kind / special tokens tell
        vocab = max(tok.vocab_size, 320) if family == "encoder" else tok.vocab_size
        cfg = ModelConfig(
            family=family, vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, d_ff=64,
            max_positions=64, type_vocab_size=2 if family == "encoder" else 0, pooler=family == "encoder",
            prenorm=family != "encoder", final_norm=family != "encoder", embedding_norm=family == "encoder",
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else -1,
            bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else -1,
            decoder_start_token_id=tok.eos_token_id if family == "encoder-decoder" else -1,
            dropout=0.0, attention_dropout=0.0, heads={"lm": {}},
            lm_head_transform=family == "encoder", lm_head_bias=family == "encoder",
        )
        d = root / name
        torch.manual_seed(0)
        TransferModel(cfg).save_pretrained(d)
        tok.save(d)
        return d

    fx["enc"] = model_dir("enc", "encoder", "wordpiece")
    fx["dec"] = model_dir("dec", "decoder", "bpe")
    fx["tok"] = fx["enc"]  # a WordPiece tokenizer folder (the model folder holds one)
    bpe_small = root / "tok-bpe-small"
    Tokenizer.train(_corpus(), kind="bpe", vocab_size=280, n_sentinels=0).save(bpe_small)
    fx["tok_bpe_small"] = bpe_small

    # labelled data for finetune / evaluate / predict
    rng = random.Random(1)
    rows = ["text,label"] + [f"{' '.join(rng.choice(WORDS) for _ in range(6))},{rng.choice(['pos', 'neg'])}"
                             for _ in range(40)]
    csv = root / "train.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    fx["csv"] = csv
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1]:
        rc = main(["finetune", "--model", str(fx["enc"]), "--train", str(csv), "--out", str(root / "ft"),
                   "--epochs", "1", "--batch-size", "8", "--quiet", "--no-test", "--dtype", "fp32",
                   "--device", "cpu", "--no-energy"])
        assert rc == 0, "fixture finetune failed"
        fx["ft"] = root / "ft"
        rc = main(["prepare", "--tokenizer", str(fx["tok"]), "--input", str(corpus), "--out", str(root / "data"),
                   "--workers", "0", "--no-progress", "--val-fraction", "0.1"])
        assert rc == 0, "fixture prepare failed"
        fx["data"] = root / "data"
        rc = main(PRETRAIN(fx, root / "run"))
        assert rc == 0, "fixture pretrain failed"
        fx["run"] = root / "run"
    # a transformers-style folder whose weights are sharded through an index
    hf = root / "hf-sharded"
    _export_sharded(fx["enc"], hf)
    fx["hf_sharded"] = hf
    # compare config with one fast baseline on the user file
    cmp_cfg = root / "compare.yaml"
    cmp_cfg.write_text(f"out_dir: {root / 'cmp'}\ntasks: [{{name: t, train_file: {csv}}}]\n"
                       "train_sizes: [all]\nseeds: [0]\nmodels: [majority]\n", encoding="utf-8")
    fx["compare"] = cmp_cfg
    return fx


def _export_sharded(src: Path, dst: Path) -> None:
    from safetensors.torch import save_file

    from transferlab.interop.hf import export_hf
    from transferlab.models.model import from_pretrained
    from safetensors.torch import load_file

    export_hf(from_pretrained(src), dst, tokenizer_from=src)
    state = load_file(str(dst / "model.safetensors"))
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(dst / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(dst / "model-00002-of-00002.safetensors"))
    (dst / "model.safetensors").unlink()
    wm = {k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors")
          for i, k in enumerate(keys)}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))


def PRETRAIN(fx: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(fx["data"]), "--out", str(out),
            "--max-steps", "2", "--batch-size", "2", "--seq-len", "32", "--save-every", "1", "--no-energy",
            "--dtype", "fp32", "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64",
            "model.max_positions=64", "train.tensorboard=false", "train.progress=false", *extra]


# ------------------------------------------------------------------------------ running
def run_inprocess(argv: list[str], patch: Callable[[], contextlib.AbstractContextManager] | None = None) -> tuple[str, str]:
    """(outcome, last stderr line) of ``transferlab argv`` run in this process."""
    from transferlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc: Any
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), (patch() if patch else contextlib.nullcontext()):
            rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - this is what we count
        return "traceback", f"{type(e).__name__}: {str(e)[:150]}"
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if rc == 0:
        return "exit0", last
    if rc == 2 and any(ln.startswith("error:") or ": error: " in ln for ln in lines):
        return "error", last
    return "other", f"rc={rc} {last}"


def run_subprocess(argv: list[str], close_stdout: bool = False, env: dict[str, str] | None = None,
                   timeout: float = 300) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "transferlab", *argv]
    e = {**os.environ, **(env or {})}
    if close_stdout:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        p.stdout.close()  # the reader is gone before the first write: EPIPE
        _, err_b = p.communicate(timeout=timeout)
        rc = p.returncode
    else:
        r = subprocess.run(cmd, capture_output=True, env=e, timeout=timeout)
        rc, err_b = r.returncode, r.stderr
    err = err_b.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in err:
        return "traceback", last
    if close_stdout:
        return ("quiet" if not lines or all("Broken pipe" not in ln for ln in lines) else "noisy"), f"rc={rc} {last}"
    if rc == 0:
        return "exit0", last
    if rc == 2 and any(ln.startswith("error:") for ln in lines):
        return "error", last
    return "other", f"rc={rc} {last}"


@contextlib.contextmanager
def _disk_full():
    """Every fsync and rename in the process fails as on a full disk (ENOSPC)."""
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def replace(a: Any, b: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a))

    os.fsync, os.replace = fsync, replace
    try:
        yield
    finally:
        os.fsync, os.replace = real_fsync, real_replace


# ------------------------------------------------------------------------------ the catalogue
def writing_commands(fx: dict[str, Path]) -> dict[str, Callable[[str], list[str]]]:
    """Writing subcommand -> argv with its output at the given path."""
    return {
        "tokenizer train": lambda o: ["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "150", "--input",
                                      str(fx["corpus"]), "--out", o],
        "prepare": lambda o: ["prepare", "--tokenizer", str(fx["tok"]), "--input", str(fx["corpus"]), "--out", o,
                              "--workers", "0", "--no-progress"],
        "pretrain": lambda o: PRETRAIN(fx, Path(o)),
        "finetune": lambda o: ["finetune", "--model", str(fx["enc"]), "--train", str(fx["csv"]), "--out", o,
                               "--epochs", "1", "--batch-size", "8", "--quiet", "--no-test", "--dtype", "fp32",
                               "--device", "cpu", "--no-energy"],
        "evaluate": lambda o: ["evaluate", "--model", str(fx["ft"]), "--test", str(fx["csv"]), "--out", o, "--quiet",
                               "--dtype", "fp32", "--device", "cpu"],
        "predict": lambda o: ["predict", "--model", str(fx["ft"]), "--text", "a good movie", "--out", o,
                              "--dtype", "fp32", "--device", "cpu"],
        "convert": lambda o: ["convert", "--to-hf", str(fx["enc"]), "--out", o],
        "features": lambda o: ["features", "--model", str(fx["enc"]), "--input", str(fx["corpus"]), "--limit", "4",
                               "--output", o + ".npy"],
        "curves": lambda o: ["curves", str(fx["run"]), "--out", o + ".png"],
        "compare": lambda o: ["compare", str(fx["compare"]), "--out-dir", o, "--quiet", "--no-plots"],
    }


def catalogue(fx: dict[str, Path], root: Path) -> list[tuple[str, str, list[str], str, Any]]:
    """(class, name, argv, expected outcome, patch or 'subprocess'/'pipe')."""
    C: list[tuple[str, str, list[str], str, Any]] = []
    W = writing_commands(fx)
    enc, dec, ft = str(fx["enc"]), str(fx["dec"]), str(fx["ft"])
    n = iter(range(10**6))

    def fresh(name: str) -> str:
        return str(root / "outs" / f"{name.replace(' ', '-')}-{next(n)}")

    # ---- OS-level failures: every writing command
    for cmd, mk in W.items():
        C.append(("os", f"{cmd}: output under a regular file", mk(str(fx["afile"] / "sub" / "x")), "error", None))
        C.append(("os", f"{cmd}: output in a read-only place (/sys)", mk(f"/sys/transferlab-{next(n)}/x"), "error", None))
        C.append(("os", f"{cmd}: disk full (ENOSPC)", mk(fresh(cmd)), "error", _disk_full))
    C.append(("os", "features probe --json under a file", ["features", "probe", "--model", enc, "--task", "rotten-tomatoes",
              "--train-size", "20", "--no-test", "--json", str(fx["afile"] / "x.json")], "error", None))
    C.append(("os", "icl --output under a file", ["icl", "--model", dec, "--task", "rotten-tomatoes", "--shots", "0",
              "--n-test", "4", "--no-progress", "--output", str(fx["afile"] / "x.json")], "error", None))
    C.append(("os", "evaluate --out is a folder", W["evaluate"](str(root)), "error", None))
    C.append(("os", "predict --out is a folder", W["predict"](str(root)), "error", None))
    # closed stdout
    for name, argv in {
        "tokenizer encode": ["tokenizer", "encode", "--tokenizer", str(fx["tok"]), *["some text"] * 200],
        "info": ["info", enc],
        "objectives list": ["objectives", "list"],
        "generate": ["generate", "--model", dec, "--prompt", "the movie", "--max-new-tokens", "5", "--device", "cpu"],
        "predict": ["predict", "--model", ft, "--text", "a good movie", "--device", "cpu", "--dtype", "fp32"],
        "curves": ["curves", str(fx["run"])],
    }.items():
        C.append(("os", f"{name}: closed stdout", argv, "quiet", "pipe"))

    # ---- numbers and ranges
    num = {
        "tokenizer train --vocab-size 0": ["tokenizer", "train", "--vocab-size", "0", "--input", str(fx["corpus"]), "--out", fresh("t")],
        "tokenizer train --vocab-size -5": ["tokenizer", "train", "--vocab-size", "-5", "--input", str(fx["corpus"]), "--out", fresh("t")],
        "tokenizer train --min-frequency -1": ["tokenizer", "train", "--vocab-size", "150", "--min-frequency", "-1",
                                               "--input", str(fx["corpus"]), "--out", fresh("t")],
        "tokenizer train --sentinels -3": ["tokenizer", "train", "--kind", "unigram", "--vocab-size", "150", "--sentinels", "-3",
                                           "--input", str(fx["corpus"]), "--out", fresh("t")],
        "prepare --val-fraction -0.5": ["prepare", "--tokenizer", str(fx["tok"]), "--input", str(fx["corpus"]), "--out", fresh("p"),
                                        "--workers", "0", "--no-progress", "--val-fraction", "-0.5"],
        "prepare --val-fraction 1.5": ["prepare", "--tokenizer", str(fx["tok"]), "--input", str(fx["corpus"]), "--out", fresh("p"),
                                       "--workers", "0", "--no-progress", "--val-fraction", "1.5"],
        "prepare --val-fraction nan": ["prepare", "--tokenizer", str(fx["tok"]), "--input", str(fx["corpus"]), "--out", fresh("p"),
                                       "--workers", "0", "--no-progress", "--val-fraction", "nan"],
        "prepare --workers -1": ["prepare", "--tokenizer", str(fx["tok"]), "--input", str(fx["corpus"]), "--out", fresh("p"),
                                 "--workers", "-1", "--no-progress"],
        "pretrain --lr nan": PRETRAIN(fx, Path(fresh("r")), "--lr", "nan"),
        "pretrain --lr -1": PRETRAIN(fx, Path(fresh("r")), "--lr", "-1"),
        "pretrain --lr inf": PRETRAIN(fx, Path(fresh("r")), "--lr", "inf"),
        "pretrain --batch-size 0": PRETRAIN(fx, Path(fresh("r")), "--batch-size", "0"),
        "pretrain --max-steps -1": PRETRAIN(fx, Path(fresh("r")), "--max-steps", "-1"),
        "pretrain --max-minutes nan": PRETRAIN(fx, Path(fresh("r")), "--max-minutes", "nan"),
        "pretrain train.warmup=nan": PRETRAIN(fx, Path(fresh("r")), "train.warmup=nan"),
        "pretrain train.clip=nan": PRETRAIN(fx, Path(fresh("r")), "train.clip=nan"),
        "pretrain train.eps=-1": PRETRAIN(fx, Path(fresh("r")), "train.eps=-1"),
        "pretrain train.seed=-1": PRETRAIN(fx, Path(fresh("r")), "train.seed=-1"),
        "pretrain model.dropout=nan": PRETRAIN(fx, Path(fresh("r")), "model.dropout=nan"),
        "pretrain model.max_positions=0": PRETRAIN(fx, Path(fresh("r")), "model.max_positions=0"),
        "pretrain model.norm_eps=-1": PRETRAIN(fx, Path(fresh("r")), "model.norm_eps=-1"),
        "pretrain model.init_std=nan": PRETRAIN(fx, Path(fresh("r")), "model.init_std=nan"),
        "pretrain model.type_vocab_size=-2": PRETRAIN(fx, Path(fresh("r")), "model.type_vocab_size=-2"),
        "pretrain model.n_decoder_layers=-1": PRETRAIN(fx, Path(fresh("r")), "model.n_decoder_layers=-1"),
        "pretrain objective.mask_prob=nan": PRETRAIN(fx, Path(fresh("r")), "objective.mask_prob=nan"),
        "pretrain objective.mask_prob=2": PRETRAIN(fx, Path(fresh("r")), "objective.mask_prob=2"),
        "pretrain --price-per-hour -1": PRETRAIN(fx, Path(fresh("r")), "--price-per-hour", "-1"),
        "pretrain --grid-intensity nan": PRETRAIN(fx, Path(fresh("r")), "--grid-intensity", "nan"),
    }
    ftb = ["finetune", "--model", enc, "--train", str(fx["csv"]), "--quiet", "--no-test", "--dtype", "fp32",
           "--device", "cpu", "--no-energy"]
    for flag, v in (("--lr", "nan"), ("--lr", "inf"), ("--epochs", "nan"), ("--epochs", "-1"), ("--batch-size", "0"),
                    ("--weight-decay", "-1"), ("--max-grad-norm", "nan"), ("--max-grad-norm", "-1"),
                    ("--tokenizer-vocab-size", "-1"), ("--max-minutes", "nan"), ("--warmup", "nan"),
                    ("--layer-lr-decay", "nan"), ("--seed", "-1"), ("--eval-every", "-1"), ("--dropout", "nan"),
                    ("--max-length", "0"), ("--train-size", "-3")):
        num[f"finetune {flag} {v}"] = [*ftb, flag, v, "--out", fresh("f")]
    genb = ["generate", "--model", dec, "--prompt", "the movie", "--device", "cpu", "--no-stream"]
    for flag, v in (("--max-new-tokens", "-1"), ("--temperature", "nan"), ("--top-p", "2"),
                    ("--top-k", "-1"), ("--num-beams", "0"), ("--batch-size", "0"), ("--repetition-penalty", "0"),
                    ("--length-penalty", "nan"), ("--seed", "-1")):
        num[f"generate {flag} {v}"] = [*genb, flag, v]
    num["generate --do-sample --temperature 0"] = [*genb, "--do-sample", "--temperature", "0"]
    featb = ["features", "--model", enc, "--input", str(fx["corpus"]), "--output", fresh("x") + ".npy"]
    for flag, v in (("--batch-size", "0"), ("--max-length", "0"), ("--limit", "-1"), ("--layer", "99"),
                    ("--layer", "-99")):
        num[f"features {flag} {v}"] = [*featb, flag, v]
    num["features probe --train-size -1"] = ["features", "probe", "--model", enc, "--train-size", "-1"]
    num["features neighbours --k 0"] = ["features", "neighbours", "--model", enc, "--word", "movie", "--k", "0",
                                        "--corpus", str(fx["corpus"])]
    num["features neighbours --sample -5"] = ["features", "neighbours", "--model", enc, "--word", "movie",
                                              "--sample", "-5", "--corpus", str(fx["corpus"])]
    iclb = ["icl", "--model", dec, "--task", "rotten-tomatoes", "--no-progress", "--device", "cpu"]
    for flag, v in (("--shots", "-1"), ("--n-test", "0"), ("--max-length", "0"), ("--batch-size", "0"),
                    ("--max-text-words", "-4")):
        num[f"icl {flag} {v}"] = [*iclb, flag, v]
    num["evaluate --batch-size 0"] = ["evaluate", "--model", ft, "--test", str(fx["csv"]), "--batch-size", "0",
                                      "--out", fresh("e") + ".json", "--device", "cpu"]
    num["predict --batch-size 0"] = ["predict", "--model", ft, "--text", "good", "--batch-size", "0", "--device", "cpu"]
    num["objectives preview --seq-len 0"] = ["objectives", "preview", "--data", str(fx["data"]), "--objective", "mlm",
                                             "--seq-len", "0"]
    num["objectives preview --examples -1"] = ["objectives", "preview", "--data", str(fx["data"]), "--objective", "mlm",
                                               "--examples", "-1"]
    num["objectives preview mask_prob=nan"] = ["objectives", "preview", "--data", str(fx["data"]), "--objective", "mlm",
                                               "mask_prob=nan"]
    num["curves --reference x=nan"] = ["curves", str(fx["run"]), "--reference", "x=nan"]
    num["demo --pretrain-minutes -1"] = ["demo", "--quick", "--out", fresh("demo"), "--pretrain-minutes", "-1", "--no-progress"]
    num["demo --seeds -1"] = ["demo", "--quick", "--out", fresh("demo"), "--seeds", "-1", "--no-progress"]
    num["demo --train-sizes 0"] = ["demo", "--quick", "--out", fresh("demo"), "--train-sizes", "0", "--no-progress"]
    for name, argv in num.items():
        C.append(("numeric", name, argv, "error", None))

    # ---- JSON/YAML of the right syntax and the wrong shape
    shp = root / "shape"
    shp.mkdir(exist_ok=True)

    def jfile(name: str, obj: Any) -> str:
        p = shp / name
        p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
        return str(p)

    def copy_with(src: Path, name: str, file: str, edit: Callable[[Any], Any]) -> str:
        d = shp / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
        p = d / file
        p.write_text(json.dumps(edit(json.loads(p.read_text()))), encoding="utf-8")
        return str(d)

    shape: dict[str, list[str]] = {
        "pretrain --config: a list": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c1.json", [1, 2])),
        "pretrain --config: train is a list": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c2.json", {"train": [1]})),
        "pretrain --config: train.lr is a string": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c3.json", {"train": {"lr": "fast"}})),
        "pretrain --config: train.max_steps is a list": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c4.json", {"train": {"max_steps": [2]}})),
        "pretrain --config: model is a list": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c5.json", {"model": [1]})),
        "pretrain --config: objective is a number": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c6.json", {"objective": 5})),
        "pretrain --config: preset is a list": ["pretrain", "--objective", "mlm", "--data", str(fx["data"]), "--out", fresh("r"),
                                                "--max-steps", "1", "--config", jfile("c7.json", {"preset": ["bert-tiny"]})],
        "pretrain --config YAML: train.betas a string": PRETRAIN(fx, Path(fresh("r")), "--config", jfile("c8.yaml", "train:\n  betas: abc\n")),
        "info: config.json is a list": ["info", copy_with(fx["enc"], "m1", "config.json", lambda c: [c])],
        "info: d_model is a string": ["info", copy_with(fx["enc"], "m2", "config.json", lambda c: {**c, "d_model": "big"})],
        "info: heads is a list": ["info", copy_with(fx["enc"], "m3", "config.json", lambda c: {**c, "heads": ["lm"]})],
        "generate: vocab_size is a float string": ["generate", "--model", copy_with(fx["dec"], "m4", "config.json",
                                                   lambda c: {**c, "vocab_size": "300"}), "--prompt", "a", "--device", "cpu"],
        "features: n_layers is null": ["features", "--model", copy_with(fx["enc"], "m5", "config.json", lambda c: {**c, "n_layers": None}),
                                       "--input", str(fx["corpus"]), "--output", fresh("x") + ".npy"],
        "evaluate: task.json labels is a string": ["evaluate", "--model", copy_with(fx["ft"], "f1", "task.json",
                                                   lambda c: {**c, "labels": "neg,pos"}), "--test", str(fx["csv"]), "--device", "cpu"],
        "predict: task.json is a list": ["predict", "--model", copy_with(fx["ft"], "f2", "task.json", lambda c: [c]),
                                         "--text", "good", "--device", "cpu"],
        "predict: task.json max_length is a string": ["predict", "--model", copy_with(fx["ft"], "f3", "task.json",
                                                      lambda c: {**c, "max_length": "long"}), "--text", "good", "--device", "cpu"],
        "predict: task.json task_type is a number": ["predict", "--model", copy_with(fx["ft"], "f4", "task.json",
                                                     lambda c: {**c, "task_type": 3}), "--text", "good", "--device", "cpu"],
        "predict: task.json columns is a list": ["predict", "--model", copy_with(fx["ft"], "f5", "task.json",
                                                 lambda c: {**c, "columns": ["text"]}), "--input", str(fx["csv"]), "--device", "cpu"],
        "tokenizer encode: tokenizer_config is a list": ["tokenizer", "encode", "--tokenizer",
                                                         copy_with(fx["tok"], "t1", "tokenizer_config.json", lambda c: [c]), "hi"],
        "tokenizer encode: special_tokens is a string": ["tokenizer", "encode", "--tokenizer",
                                                         copy_with(fx["tok"], "t2", "tokenizer_config.json",
                                                                   lambda c: {**c, "transferlab": {**c["transferlab"], "special_tokens": "[CLS]"}}), "hi"],
        "tokenizer encode: lowercase is a string": ["tokenizer", "encode", "--tokenizer",
                                                    copy_with(fx["tok"], "t3", "tokenizer_config.json",
                                                              lambda c: {**c, "transferlab": {**c["transferlab"], "lowercase": "yes"}}), "Hi"],
        "prepare meta.json is a list (objectives preview)": ["objectives", "preview", "--data",
                                                              copy_with(fx["data"], "d1", "meta.json", lambda c: [c]), "--objective", "mlm"],
        "prepare meta.json splits is a string (pretrain)": PRETRAIN({**fx, "data": Path(copy_with(fx["data"], "d2", "meta.json",
                                                                     lambda c: {**c, "splits": "train"}))}, Path(fresh("r"))),
        "features --mix-weights: a list": ["features", "--model", enc, "--input", str(fx["corpus"]), "--layer", "mix",
                                           "--mix-weights", jfile("mix.json", [1, 2]), "--output", fresh("x") + ".npy"],
        "compare: tasks is a string": ["compare", jfile("cmp1.yaml", f"out_dir: {root / 'cmp1'}\ntasks: imdb\nmodels: [majority]\n")],
        "compare: seeds are strings": ["compare", jfile("cmp2.yaml", f"out_dir: {root / 'cmp2'}\ntasks: [{{name: t, train_file: {fx['csv']}}}]\n"
                                                    "seeds: [a]\ntrain_sizes: [all]\nmodels: [majority]\n"), "--dry-run"],
        "compare: finetune is a list": ["compare", jfile("cmp3.yaml", f"out_dir: {root / 'cmp3'}\ntasks: [{{name: t, train_file: {fx['csv']}}}]\n"
                                                     "finetune: [1]\ntrain_sizes: [all]\nmodels: [majority]\n"), "--dry-run"],
        "compare: train_sizes are dicts": ["compare", jfile("cmp4.yaml", f"out_dir: {root / 'cmp4'}\ntasks: [{{name: t, train_file: {fx['csv']}}}]\n"
                                                        "train_sizes: [{{a: 1}}]\nmodels: [majority]\n"), "--dry-run"],
        "convert --from-hf: index weight_map is a list": ["convert", "--from-hf", copy_with(fx["hf_sharded"], "h1", "model.safetensors.index.json",
                                                          lambda c: {**c, "weight_map": list(c["weight_map"].values())}), "--out", fresh("c")],
        "convert --from-hf: hf config is a list": ["convert", "--from-hf", copy_with(fx["hf_sharded"], "h2", "config.json", lambda c: [c]),
                                                   "--out", fresh("c")],
        "convert --from-hf: hidden_size is a list": ["convert", "--from-hf", copy_with(fx["hf_sharded"], "h3", "config.json",
                                                     lambda c: {**c, "hidden_size": [32]}), "--out", fresh("c")],
    }
    # checkpoint trainer state of a run, resumed
    run_bad = shp / "run-bad"
    if run_bad.exists():
        shutil.rmtree(run_bad)
    shutil.copytree(fx["run"], run_bad)
    for ck in sorted((run_bad / "checkpoints").glob("*")):
        if (ck / "trainer.json").is_file():
            (ck / "trainer.json").write_text(json.dumps([1, 2, 3]))
    shape["pretrain --resume: trainer.json is a list"] = PRETRAIN(fx, run_bad, "--resume", "--max-steps", "3")
    run_bad2 = shp / "run-bad2"
    if run_bad2.exists():
        shutil.rmtree(run_bad2)
    shutil.copytree(fx["run"], run_bad2)
    for ck in sorted((run_bad2 / "checkpoints").glob("*")):
        if (ck / "trainer.json").is_file():
            st = json.loads((ck / "trainer.json").read_text())
            (ck / "trainer.json").write_text(json.dumps({**st, "step": "two"}))
    shape["pretrain --resume: trainer.json step is a string"] = PRETRAIN(fx, run_bad2, "--resume", "--max-steps", "3")
    shape["curves: metrics.jsonl rows are lists"] = ["curves", jfile("metrics.jsonl", "[1, 2]\n[3]\n")]
    for name, argv in shape.items():
        C.append(("shape", name, argv, "error", None))

    # ---- paths inside model files
    def index_escape(name: str, target: str) -> str:
        d = shp / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(fx["hf_sharded"], d)
        outside = Path(target) if Path(target).is_absolute() else d / target
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "model-00002-of-00002.safetensors", outside)
        idx = json.loads((d / "model.safetensors.index.json").read_text())
        idx["weight_map"] = {k: (target if v.startswith("model-00002") else v) for k, v in idx["weight_map"].items()}
        (d / "model.safetensors.index.json").write_text(json.dumps(idx))
        (d / "model-00002-of-00002.safetensors").unlink()
        return str(d)

    rel = index_escape("esc-rel", "../outside-shard.safetensors")
    absd = index_escape("esc-abs", str(root / "abs-outside" / "shard.safetensors"))
    for name, d in (("../x", rel), ("absolute path", absd)):
        C.append(("index", f"convert --from-hf: index names {name}", ["convert", "--from-hf", d, "--out", fresh("c")], "error", None))
        C.append(("index", f"info: index names {name}", ["info", d], "error", None))
        C.append(("index", f"features: index names {name}", ["features", "--model", d, "--input", str(fx["corpus"]),
                                                             "--limit", "2", "--output", fresh("x") + ".npy"], "error", None))

    # ---- --device
    dev_cmds = {
        "generate": ["generate", "--model", dec, "--prompt", "the movie", "--max-new-tokens", "2"],
        "icl": ["icl", "--model", dec, "--task", "rotten-tomatoes", "--shots", "0", "--n-test", "2", "--no-progress"],
        "features": ["features", "--model", enc, "--input", str(fx["corpus"]), "--limit", "2", "--output", fresh("x") + ".npy"],
        "features probe": ["features", "probe", "--model", enc, "--train-size", "20", "--no-test"],
        "features neighbours": ["features", "neighbours", "--model", enc, "--word", "movie", "--corpus", str(fx["corpus"]), "--sample", "5"],
        "finetune": [*ftb, "--out", fresh("f")],
        "evaluate": ["evaluate", "--model", ft, "--test", str(fx["csv"]), "--out", fresh("e") + ".json"],
        "predict": ["predict", "--model", ft, "--text", "good"],
    }
    import torch

    bad_devices = ["cuda", "cuda:7", "gpu", "mps"] if not torch.cuda.is_available() else ["cuda:99", "gpu"]
    for cmd, argv in dev_cmds.items():
        argv = [a for a in argv]
        if "--device" in argv:
            i = argv.index("--device")
            del argv[i: i + 2]
        for d in bad_devices:
            C.append(("device", f"{cmd} --device {d}", [*argv, "--device", d], "error", None))

    # ---- inputs longer than the model's positions (64 here): capped, so these must succeed
    C.append(("length", "features: 1,200-token input, --max-length 512", ["features", "--model", enc, "--input", str(fx["long"]),
              "--max-length", "512", "--output", fresh("x") + ".npy"], "exit0", None))
    C.append(("length", "features --pooling none: long input", ["features", "--model", enc, "--input", str(fx["long"]),
              "--pooling", "none", "--output", fresh("x") + ".npy"], "exit0", None))
    C.append(("length", "features probe --max-length 1000", ["features", "probe", "--model", enc, "--train-size", "20",
              "--no-test", "--max-length", "1000"], "exit0", None))
    C.append(("length", "features neighbours --max-length 1000", ["features", "neighbours", "--model", enc, "--word", "the",
              "--corpus", str(fx["corpus"]), "--sample", "10", "--max-length", "1000"], "exit0", None))

    # ---- a tokenizer that does not belong to the model
    swapped = shp / "swapped"
    if swapped.exists():
        shutil.rmtree(swapped)
    shutil.copytree(fx["enc"], swapped)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(fx["tok_bpe_small"] / f, swapped / f)
    C.append(("tokenizer", "finetune --tokenizer <smaller BPE> on a WordPiece model",
              [*ftb, "--tokenizer", str(fx["tok_bpe_small"]), "--out", fresh("f")], "error", None))
    C.append(("tokenizer", "features: model folder with a swapped BPE tokenizer", ["features", "--model", str(swapped),
              "--input", str(fx["corpus"]), "--limit", "2", "--output", fresh("x") + ".npy"], "error", None))
    C.append(("tokenizer", "generate: model folder with a swapped tokenizer", ["generate", "--model", str(swapped),
              "--prompt", "a", "--device", "cpu"], "error", None))
    C.append(("tokenizer", "finetune: model folder with a swapped tokenizer", ["finetune", "--model", str(swapped),
              "--train", str(fx["csv"]), "--out", fresh("f"), "--quiet", "--no-test", "--dtype", "fp32", "--device", "cpu",
              "--no-energy"], "error", None))
    C.append(("tokenizer", "pretrain --init: model folder with a swapped tokenizer", ["pretrain", "--init", str(swapped),
              "--objective", "mlm", "--data", str(fx["data"]), "--out", fresh("r"), "--max-steps", "1", "--batch-size", "2",
              "--seq-len", "32", "--no-energy", "train.tensorboard=false", "train.progress=false"], "error", None))
    # the same kind and special ids, no larger, trained on other text: only config.json's record of
    # the tokenizer (written by finetune / pretrain / convert) tells it from the model's own
    from transferlab.tokenizer import Tokenizer

    retrained = shp / "retrained"
    if retrained.exists():
        shutil.rmtree(retrained)
    shutil.copytree(fx["ft"], retrained)
    Tokenizer.train([" ".join(w[::-1] for w in line.split()) for line in _corpus(seed=9)], kind="wordpiece",
                    vocab_size=200, n_sentinels=0).save(retrained)
    C.append(("tokenizer", "predict: fine-tuned folder with a retrained WordPiece (same special ids)",
              ["predict", "--model", str(retrained), "--text", "good", "--device", "cpu"], "error", None))
    return C


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every case's outcome here")
    ap.add_argument("--only", action="append", help="run only this class (repeatable)")
    ap.add_argument("--verbose", action="store_true", help="print every case, not only the unexpected ones")
    ap.add_argument("--keep", help="build the fixtures here and keep them")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tl-catalogue-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        fx = build_fixtures(root)
        print(f"fixtures in {time.time() - t0:.0f}s", file=sys.stderr)
        cases = catalogue(fx, root)
        results = []
        import transferlab

        # subprocesses run the same transferlab this process imported
        env = {"PYTHONPATH": os.pathsep.join([str(Path(transferlab.__file__).resolve().parents[1]),
                                             os.environ.get("PYTHONPATH", "")])}
        for cls, name, argv, expected, how in cases:
            if args.only and cls not in args.only:
                continue
            t = time.time()
            if how == "pipe":
                outcome, msg = run_subprocess(argv, close_stdout=True, env=env)
            else:
                outcome, msg = run_inprocess(argv, how)
            ok = outcome == expected
            results.append({"class": cls, "case": name, "expected": expected, "outcome": outcome, "ok": ok,
                            "message": msg, "seconds": round(time.time() - t, 2)})
            if args.verbose or not ok:
                print(f"{'ok ' if ok else 'BAD'} [{cls}] {name}: {outcome} | {msg[:160]}", flush=True)
        print()
        print(f"{'class':<10} {'cases':>5} {'ok':>4} {'traceback':>9} {'error':>5} {'exit0':>5} {'other':>5}")
        for cls in dict.fromkeys(r["class"] for r in results):
            rs = [r for r in results if r["class"] == cls]
            cnt = {o: sum(r["outcome"] == o for r in rs) for o in ("traceback", "error", "exit0", "other", "quiet", "noisy")}
            print(f"{cls:<10} {len(rs):>5} {sum(r['ok'] for r in rs):>4} {cnt['traceback']:>9} {cnt['error']:>5} "
                  f"{cnt['exit0']:>5} {cnt['other'] + cnt['noisy']:>5}")
        tot = len(results)
        print(f"{'total':<10} {tot:>5} {sum(r['ok'] for r in results):>4} "
              f"{sum(r['outcome'] == 'traceback' for r in results):>9} {sum(r['outcome'] == 'error' for r in results):>5} "
              f"{sum(r['outcome'] == 'exit0' for r in results):>5}")
        print(f"{time.time() - t0:.0f}s", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        return 0 if all(r["ok"] for r in results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
