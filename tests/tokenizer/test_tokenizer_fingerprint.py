"""A model folder records the tokenizer it was saved with; another one swapped in is refused.

checks.check_tokenizer compares the vocabulary size and the pad/bos/eos ids, which a tokenizer of
another kind (or one trained again on other text) often shares with the model's own. Where a model
is saved with its tokenizer (pretrain, finetune, convert --from-hf), config.json records the
tokenizer's kind and a sha256 of its vocabulary (``transferlab_tokenizer``); predict, generate,
features and finetune --tokenizer refuse a tokenizer that does not match it, in one line naming
the folder. Folders saved before the record existed keep working. Models are tiny (1 layer,
d_model 32).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from transferlab.checks import TOKENIZER_RECORD, check_same_tokenizer, check_tokenizer, tokenizer_record
from transferlab.cli import main
from transferlab.config import ModelConfig
from transferlab.errors import CheckpointError, ConfigError
from transferlab.models.model import TransferModel, from_pretrained
from transferlab.tokenizer import Tokenizer

from tiny import TINY_MODEL, prepared_data

WORDS = "the movie film plot was is very good great bad awful dull alice bob paris red blue".split()
OTHER = "zebra yak walrus vole urchin tapir seal raven quail puma otter newt mole lynx koala".split()


def _corpus(words: list[str], seed: int = 0, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(n)]


def _encoder(tok: Tokenizer, vocab: int) -> ModelConfig:
    return ModelConfig(
        family="encoder", vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_positions=32,
        type_vocab_size=2, dropout=0.0, attention_dropout=0.0, pad_token_id=tok.pad_token_id, heads={"lm": {}},
        lm_head_transform=True, lm_head_bias=True,  # exports as BertForMaskedLM
    )


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI: exit 2 with exactly one 'error:' line on stderr and no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _swap(src: Path, dst: Path, tok: Tokenizer) -> Path:
    """A copy of the model folder ``src`` with ``tok``'s files in place of its own tokenizer."""
    shutil.copytree(src, dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (dst / name).unlink(missing_ok=True)
    tok.save(dst)
    return dst


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("fp")
    own = Tokenizer.train(_corpus(WORDS), kind="wordpiece", vocab_size=200, n_sentinels=0)
    # the swap candidates: the same special ids (pad 0, no bos/eos recorded), no larger vocabulary
    retrained = Tokenizer.train(_corpus(OTHER, seed=5), kind="wordpiece", vocab_size=200, n_sentinels=0)
    unigram = Tokenizer.train(_corpus(WORDS), kind="unigram", vocab_size=150, n_sentinels=0)  # <pad> = 0
    vocab = 320
    csv = root / "train.csv"
    rng = random.Random(1)
    csv.write_text("text,label\n" + "".join(f"{' '.join(rng.choice(WORDS) for _ in range(5))},{rng.choice('ab')}\n"
                                           for _ in range(24)), encoding="utf-8")
    base = root / "base"  # a pre-trained folder as pretrain writes one (record included)
    torch.manual_seed(0)
    TransferModel(_encoder(own, vocab)).save_pretrained(base, extra_config=tokenizer_record(own))
    own.save(base)
    ft = root / "ft"
    assert main(["finetune", "--model", str(base), "--train", str(csv), "--out", str(ft), "--epochs", "1",
                 "--batch-size", "8", "--quiet", "--no-test", "--dtype", "fp32", "--device", "cpu", "--no-energy"]) == 0
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_corpus(WORDS)[:20]) + "\n", encoding="utf-8")
    return {"root": root, "own": own, "retrained": retrained, "unigram": unigram, "base": base, "ft": ft,
            "csv": csv, "corpus": corpus, "vocab": vocab}


def test_the_swaps_pass_the_size_and_special_id_checks(fx):
    """What the record adds: both candidates fit the old checks, so only it tells them apart."""
    cfg = from_pretrained(fx["base"]).config
    for tok in (fx["retrained"], fx["unigram"]):
        assert len(tok) <= fx["vocab"] and tok.pad_token_id == fx["own"].pad_token_id == 0
        check_tokenizer(cfg, tok, "x")  # no folder: only size and special ids are checked


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_record_survives_a_save_and_load(tmp_path, kind):
    tok = Tokenizer.train(_corpus(WORDS), kind=kind, vocab_size=150, n_sentinels=2 if kind == "unigram" else 0)
    rec = tokenizer_record(tok)[TOKENIZER_RECORD]
    assert rec["kind"] == kind and rec["vocab_size"] == len(tok) and len(rec["vocab_sha256"]) == 64
    tok.save(tmp_path)
    assert tokenizer_record(Tokenizer.from_pretrained(tmp_path)) == {TOKENIZER_RECORD: rec}


def test_finetune_records_its_tokenizer_and_reloads(fx):
    raw = json.loads((fx["ft"] / "config.json").read_text())
    assert raw[TOKENIZER_RECORD] == tokenizer_record(fx["own"])[TOKENIZER_RECORD]
    m = from_pretrained(fx["ft"])
    check_tokenizer(m.config, Tokenizer.from_pretrained(fx["ft"]), str(fx["ft"]))  # its own passes


def test_pretrain_records_its_tokenizer(tmp_path, capsys):
    data = prepared_data(tmp_path, n_docs=20)
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "bert-tiny", "--objective", "mlm", "--data", str(data), "--out", str(out),
               "--max-steps", "1", "--batch-size", "4", "--seq-len", "32", "--dtype", "fp32", *TINY_MODEL,
               "train.progress=false", "train.tensorboard=false", "--no-energy"])
    assert rc == 0, capsys.readouterr().err
    raw = json.loads((out / "model" / "config.json").read_text())
    want = tokenizer_record(Tokenizer.from_pretrained(data / "tokenizer"))[TOKENIZER_RECORD]
    assert raw[TOKENIZER_RECORD] == want
    assert tokenizer_record(Tokenizer.from_pretrained(out / "model"))[TOKENIZER_RECORD] == want


def test_convert_from_hf_records_the_copied_tokenizer(fx, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(fx["base"]), "--out", str(hf)]) == 0
    back = tmp_path / "back"
    assert main(["convert", "--from-hf", str(hf), "--out", str(back)]) == 0, capsys.readouterr().err
    raw = json.loads((back / "config.json").read_text())
    assert raw[TOKENIZER_RECORD] == tokenizer_record(Tokenizer.from_pretrained(back))[TOKENIZER_RECORD]
    assert raw[TOKENIZER_RECORD]["vocab_sha256"] == tokenizer_record(fx["own"])[TOKENIZER_RECORD]["vocab_sha256"]


@pytest.mark.parametrize("swap", ["retrained", "unigram"])
def test_check_tokenizer_refuses_a_swapped_tokenizer(fx, tmp_path, swap):
    d = _swap(fx["base"], tmp_path / "m", fx[swap])
    cfg = from_pretrained(d).config
    with pytest.raises(ConfigError) as e:
        check_tokenizer(cfg, Tokenizer.from_pretrained(d), str(d))
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and TOKENIZER_RECORD in msg, msg
    assert f"saved with a wordpiece one of {len(fx['own'])} tokens" in msg, msg
    with pytest.raises(ConfigError, match="config.json transferlab_tokenizer"):
        check_tokenizer(cfg, fx[swap], "tokenizer x", model_dir=d)  # the folder named explicitly


@pytest.mark.parametrize("cmd", ["predict", "generate", "features"])
def test_commands_refuse_a_model_folder_whose_tokenizer_was_swapped(fx, capsys, tmp_path, cmd):
    d = _swap(fx["ft"] if cmd == "predict" else fx["base"], tmp_path / "m", fx["retrained"])
    argv = {
        "predict": ["predict", "--model", str(d), "--text", "good", "--device", "cpu"],
        "generate": ["generate", "--model", str(d), "--prompt", "the", "--device", "cpu"],
        "features": ["features", "--model", str(d), "--input", str(fx["corpus"]), "--output", str(tmp_path / "f.npy")],
    }[cmd]
    line = _one_line_error(capsys, argv)
    assert str(d) in line and "use the tokenizer the model was trained with" in line, line
    assert not (tmp_path / "f.npy").exists()


def test_finetune_refuses_a_given_tokenizer_of_the_same_kind_and_specials(fx, capsys, tmp_path):
    other = tmp_path / "tok"
    fx["retrained"].save(other)
    line = _one_line_error(capsys, ["finetune", "--model", str(fx["base"]), "--tokenizer", str(other), "--train",
                                    str(fx["csv"]), "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert str(fx["base"]) in line and TOKENIZER_RECORD in line, line
    assert not (tmp_path / "o").exists()
    check_same_tokenizer(fx["base"], Tokenizer.from_pretrained(fx["base"]), "--tokenizer x")  # its own passes


def test_a_folder_with_only_the_record_refuses_another_tokenizer(fx, tmp_path):
    """A model folder without tokenizer files (weights and config only) still knows its tokenizer."""
    d = tmp_path / "bare"
    shutil.copytree(fx["base"], d, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    with pytest.raises(ConfigError, match="was saved with a wordpiece one"):
        check_same_tokenizer(d, fx["retrained"], "--tokenizer x")


def test_folders_without_the_record_keep_working(fx, tmp_path, capsys):
    d = _swap(fx["ft"], tmp_path / "old", fx["own"])
    raw = json.loads((d / "config.json").read_text())
    del raw[TOKENIZER_RECORD]
    (d / "config.json").write_text(json.dumps(raw))
    assert main(["predict", "--model", str(d), "--text", "good", "--device", "cpu"]) == 0, capsys.readouterr().err
    check_tokenizer(from_pretrained(d).config, fx["retrained"], str(d))  # as before the record: accepted


def test_a_malformed_record_is_a_one_line_error(fx, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(fx["base"], d)
    raw = json.loads((d / "config.json").read_text())
    raw[TOKENIZER_RECORD] = ["wordpiece"]
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config.json: transferlab_tokenizer: expected an object") as e:
        check_tokenizer(from_pretrained(d).config, fx["own"], str(d))
    assert "\n" not in str(e.value)
