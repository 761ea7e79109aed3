"""``transferlab finetune --config FILE.yaml`` and ``finetune.KEY=VALUE`` overrides (issue 14's one CLI
grammar, issue 18's last bullet): precedence, file and override errors, --help defaults, one real run."""

from __future__ import annotations

import json
import random
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from transferlab.cli import build_parser, main
from transferlab.commands import finetune as ftcmd
from transferlab.config import ModelConfig
from transferlab.errors import ConfigError
from transferlab.finetune import FinetuneConfig
from transferlab.models.model import TransferModel
from transferlab.tokenizer import Tokenizer


def _resolve(argv: list[str]) -> FinetuneConfig:
    """The FinetuneConfig the CLI would run with, without training."""
    return ftcmd.resolve_config(build_parser().parse_args(["finetune", *argv]))


def _yaml(tmp_path: Path, text: str, name: str = "ft.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_config_are_finetune_configs(tmp_path):
    cfg = _resolve(["--model", "builtin:minilm", "--task", "imdb", "--out", str(tmp_path / "o")])
    base = FinetuneConfig()
    for f in fields(FinetuneConfig):
        if f.name not in ("model", "task", "out_dir"):
            assert getattr(cfg, f.name) == getattr(base, f.name), f.name
    assert (cfg.model, cfg.task, cfg.out_dir) == ("builtin:minilm", "imdb", str(tmp_path / "o"))


def test_precedence_defaults_file_flags_overrides(tmp_path):
    f = _yaml(tmp_path, "finetune:\n  model: builtin:minilm\n  task: imdb\n  lr: 1.0e-3\n  epochs: 2\n"
                        "  seed: 5\n  batch_size: 4\n  lora_r: 4\n")
    cfg = _resolve(["--config", str(f), "--out", str(tmp_path / "o"), "--lr", "2e-3", "--seed", "6",
                    "finetune.seed=7", "finetune.grad_accum=4", "finetune.lora_targets=qkv,out"])
    assert cfg.model == "builtin:minilm" and cfg.task == "imdb"  # from the file alone
    assert cfg.epochs == 2 and cfg.batch_size == 4 and cfg.lora_r == 4  # file beats defaults
    assert cfg.lr == 2e-3  # a flag beats the file
    assert cfg.seed == 7  # an override beats the flag
    assert cfg.grad_accum == 4 and cfg.lora_targets == ["qkv", "out"]
    assert cfg.warmup == FinetuneConfig.warmup  # untouched: the default


def test_a_flag_left_at_its_default_does_not_beat_the_file(tmp_path):
    f = _yaml(tmp_path, "finetune: {model: builtin:minilm, task: imdb, schedule: cosine, eval_on_test: false}\n")
    cfg = _resolve(["--config", str(f), "--out", str(tmp_path / "o")])
    assert cfg.schedule == "cosine" and cfg.eval_on_test is False


@pytest.mark.parametrize("extra, pattern", [
    (["finetune.lrr=1e-4"], r"override finetune\.lrr: unknown field 'lrr'"),
    (["finetune.lr=fast"], r"override finetune\.lr='fast': expected float"),
    (["finetune.warmup=2"], r"finetune\.warmup: expected a finite number in \[0, 1\), got 2\.0"),
    (["finetune.batch_size=0"], r"finetune\.batch_size: expected an integer >= 1, got 0"),
    (["lr=1e-4"], r"override 'lr=1e-4': expected finetune\.KEY=VALUE"),
    (["train.lr=1e-4"], r"override 'train\.lr=1e-4': expected finetune\.KEY=VALUE"),
    (["finetune.lr"], r"expected key=value"),
])
def test_bad_override_is_one_line_naming_the_key(tmp_path, capsys, extra, pattern):
    argv = ["finetune", "--model", "builtin:minilm", "--task", "imdb", "--out", str(tmp_path / "o"), *extra]
    with pytest.raises(ConfigError, match=pattern):
        _resolve(argv[1:])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("text, pattern", [
    ("finetune: {model: builtin:minilm, task: imdb, lrr: 1.0e-3}\n", r"ft\.yaml: finetune: unknown field\(s\) lrr"),
    ("finetune: {model: builtin:minilm, task: imdb, lr: fast}\n", r"ft\.yaml: finetune\.lr: expected a number, got 'fast'"),
    ("finetune: {model: builtin:minilm, task: imdb, epochs: -1}\n", r"ft\.yaml: finetune\.epochs: expected a finite number > 0"),
    ("train: {lr: 1.0e-3}\n", r"ft\.yaml: unknown section\(s\) train"),
    ("finetune: [1, 2]\n", r"ft\.yaml: finetune: expected a mapping"),
    ("finetune: {model: builtin:minilm\n", r"ft\.yaml: not valid YAML"),
])
def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, pattern):
    f = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern):
        _resolve(["--config", str(f), "--out", str(tmp_path / "o")])
    assert main(["finetune", "--config", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_missing_model_task_or_out_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="model is required"):
        _resolve(["--task", "imdb", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="give a task"):
        _resolve(["--model", "builtin:minilm", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="no output folder"):
        _resolve(["--model", "builtin:minilm", "--task", "imdb"])


def test_help_shows_defaults_and_the_grammar(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    # the help is the field's docstring (FinetuneConfig.lr) followed by its default
    assert "--lr LR Peak learning rate (of the top layer when layer_lr_decay < 1). (default: 5e-05)" in text
    assert "(default: head)" in text and "(default: auto)" in text and "default: None" not in text
    assert "finetune.KEY=VALUE" in text and "--config FILE" in text
    assert "built-in defaults < --config file < flags given on the command line < finetune.KEY=VALUE" in text
    # the defaults the help shows are the ones a run gets (FinetuneConfig's)
    base = FinetuneConfig()
    assert ftcmd.FLAG_DEFAULTS, "no flag defaults recorded"
    for dest, shown in ftcmd.FLAG_DEFAULTS.items():
        want = getattr(base, ftcmd._field_of(dest))
        assert (shown.split(",") if dest == "lora_targets" else shown) == want, dest


def test_help_lists_every_finetune_config_field(capsys):
    """The flags are generated from FinetuneConfig: every field has one (``cost``: the cost flags)."""
    from transferlab.commands.finetune import _flag_options

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    spelled = {k: o["flag"] for k, o in _flag_options().items() if "flag" in o}
    for f in fields(FinetuneConfig):
        if f.name == "cost":
            assert "--price-per-hour" in text and "`cost` mapping" in text
            continue
        flag = spelled.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in text, f.name
    assert set(ftcmd.FIELD_DESTS) == {f.name for f in fields(FinetuneConfig)} - {"cost"}


def test_old_flag_spellings_set_their_fields(tmp_path):
    cfg = _resolve(["--model", "m", "--train", "t.jsonl", "--validation", "v.jsonl", "--test", "x.jsonl",
                    "--out", str(tmp_path / "o"), "--no-test", "--gradual-unfreeze", "--lora-targets", "qkv,out",
                    "--schedule", "slanted", "--dtype", "fp16"])
    assert (cfg.train_file, cfg.validation_file, cfg.test_file) == ("t.jsonl", "v.jsonl", "x.jsonl")
    assert cfg.eval_on_test is False and cfg.gradual_unfreeze == 0.5 and cfg.lora_targets == ["qkv", "out"]
    assert cfg.schedule == "slanted" and cfg.dtype == "fp16"
    with pytest.raises(SystemExit):  # --task and --train still exclude each other
        build_parser().parse_args(["finetune", "--task", "imdb", "--train", "t.jsonl"])


# ------------------------------------------------------------------------------ one real run
def _tiny_model(root: Path) -> Path:
    words = "good great fine bad awful poor the a film movie was is very".split()
    rng = random.Random(0)
    tok = Tokenizer.train([" ".join(rng.choices(words, k=8)) for _ in range(200)], kind="wordpiece", vocab_size=120,
                          n_sentinels=0)
    cfg = ModelConfig(family="encoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                      max_positions=64, type_vocab_size=2, pooler=True, dropout=0.0, attention_dropout=0.0,
                      pad_token_id=tok.pad_token_id or 0, heads={"lm": {}})
    torch.manual_seed(0)
    d = root / "enc"
    TransferModel(cfg).save_pretrained(d)
    tok.save(d)
    return d


def test_real_finetune_with_yaml_and_override_saves_the_resolved_config(tmp_path, capsys):
    model = _tiny_model(tmp_path)
    rng = random.Random(1)
    rows = ["text,label"] + [f"{rng.choice(['good', 'great'] if i % 2 else ['bad', 'awful'])} film,"
                             f"{'pos' if i % 2 else 'neg'}" for i in range(40)]
    train = tmp_path / "train.csv"
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    f = _yaml(tmp_path, f"finetune:\n  model: {json.dumps(str(model))}\n  train_file: {json.dumps(str(train))}\n"
                        "  epochs: 1\n  batch_size: 8\n  lr: 1.0e-3\n  quiet: true\n  max_length: 16\n")
    out = tmp_path / "out"
    rc = main(["finetune", "--config", str(f), "--out", str(out), "--no-energy", "--seed", "2",
               "finetune.lr=3e-3", "finetune.warmup=0.2"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "finetune_config.json").read_text())
    assert saved["lr"] == 3e-3 and saved["warmup"] == 0.2  # overrides
    assert saved["seed"] == 2  # flag
    assert saved["epochs"] == 1 and saved["batch_size"] == 8 and saved["max_length"] == 16  # file
    assert saved["train_file"] == str(train) and saved["out_dir"] == str(out)
    assert saved["weight_decay"] == FinetuneConfig.weight_decay  # default


# ------------------------------------------------------------------------------ compare: the same overrides
_COMPARE = """\
out_dir: {out}
tasks: [rotten-tomatoes]
finetune: {{epochs: 3, lr: 5.0e-5}}
models:
  - majority
  - {{name: minilm, model: "builtin:minilm", finetune: {{lr: 1.0e-4}}}}
  - {{name: scratch, model: bert-mini, from_scratch: true}}
"""


def test_compare_overrides_beat_global_and_per_model_finetune_sections(tmp_path):
    from transferlab.commands.compare import apply_finetune_overrides
    from transferlab.config import load_config_file
    from transferlab.experiments.config import parse_compare_config

    f = _yaml(tmp_path, _COMPARE.format(out=tmp_path / "cmp"), "cmp.yaml")
    raw = apply_finetune_overrides(load_config_file(f), ["finetune.lr=3e-4", "finetune.dtype=fp32",
                                                         "finetune.lora_targets=qkv"])
    cfg = parse_compare_config(raw, tmp_path, str(f))
    by_name = {m.name: m for m in cfg.models}
    for name in ("minilm", "scratch"):
        ft = by_name[name].finetune
        assert ft["lr"] == 3e-4 and ft["dtype"] == "fp32" and ft["lora_targets"] == ["qkv"], name
        assert ft["epochs"] == 3  # the file's global section still applies where not overridden
    assert by_name["majority"].baseline == "majority"


@pytest.mark.parametrize("extra, pattern", [
    ("finetune.lrr=1", r"override finetune\.lrr: unknown field 'lrr'"),
    ("finetune.warmup=2", r"finetune\.warmup: expected a finite number in \[0, 1\)"),
    ("finetune.seed=1", r"override finetune\.seed: set per cell by the comparison"),
    ("model.n_layers=2", r"expected finetune\.KEY=VALUE"),
])
def test_compare_bad_override_is_one_line(tmp_path, capsys, extra, pattern):
    f = _yaml(tmp_path, _COMPARE.format(out=tmp_path / "cmp"), "cmp.yaml")
    assert main(["compare", str(f), extra, "--dry-run"]) == 2  # overrides right after CONFIG (argparse)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(pattern, err), err
    assert not (tmp_path / "cmp").exists()


def test_yaml_bare_exponent_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` without a dot as the string "1e-4"; a float field takes it
    f = _yaml(tmp_path, "finetune: {model: builtin:minilm, task: imdb, lr: 1e-4}\n")
    cfg = _resolve(["--config", str(f), "--out", str(tmp_path / "o")])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
