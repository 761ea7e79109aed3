"""Temperature sampling and per-language validation in a real (tiny) pre-training run."""

from __future__ import annotations

import json

import pytest

from tiny import TINY_MODEL
from transferlab.cli import main
from transferlab.data.prepare import prepare_corpus
from transferlab.tokenizer import Tokenizer


def _data(tmp_path):
    rows = ([{"text": f"the cat number {i} sat on the mat. it was very happy today.", "lang": "en"} for i in range(400)]
            + [{"text": f"el gato numero {i} se sento en la alfombra. estaba feliz.", "lang": "es"} for i in range(60)]
            + [{"text": f"кошка номер {i} сидела на ковре. она была рада.", "lang": "ru"} for i in range(20)])
    f = tmp_path / "multi.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tok = Tokenizer.train([r["text"] for r in rows], kind="bpe", vocab_size=300)
    prepare_corpus(f, tok, tmp_path / "data", val_fraction=0.2, workers=0, progress=False)
    return tmp_path / "data"


def _argv(data, out, *extra):
    return ["pretrain", "--preset", "gpt-mini", "--objective", "clm", "--data", str(data), "--out", str(out),
            "--max-steps", "6", "--batch-size", "8", "--seq-len", "16", "--dtype", "fp32", *TINY_MODEL,
            "train.num_threads=1", "train.log_every=1", "train.progress=false", "train.tensorboard=false",
            "train.eval_every=3", "train.eval_batches=2", "train.save_every=3", *extra]


def test_language_alpha_run_logs_shares_and_per_language_validation(tmp_path):
    data = _data(tmp_path)
    assert main(_argv(data, tmp_path / "run", "train.language_alpha=0.3")) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val and {"loss/en", "loss/es", "ppl/en", "share/en", "share/ru"} <= set(val[-1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    table = summary["languages"]
    assert set(table) == {"en", "es", "ru"} and table["ru"]["q"] > table["ru"]["p"]
    assert sum(v["realised"] for v in table.values()) == pytest.approx(1.0)
    # a run of 6 steps over 48 examples: realised within a block's granularity of q
    assert all(abs(v["realised"] - v["q"]) < 0.05 for v in table.values())

    # resuming from the step-3 checkpoint re-draws exactly the same examples: same losses
    full = [r["loss"] for r in rows if r["split"] == "train"]
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000006")
    assert main(_argv(data, tmp_path / "run", "train.language_alpha=0.3", "--resume")) == 0
    again = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if r["split"] == "train"] == full


def test_bad_alpha_is_one_line(tmp_path, capsys):
    data = _data(tmp_path)
    assert main(_argv(data, tmp_path / "bad", "train.language_alpha=0")) == 2
    assert "train.language_alpha" in capsys.readouterr().err


def test_without_alpha_a_language_index_changes_no_number(tmp_path):
    """The same documents prepared with and without languages train identically; the val rows of
    the tagged data only gain the per-language fields."""
    tagged = _data(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "multi.jsonl").read_text(encoding="utf-8").splitlines()]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    from transferlab.data import TokenShards

    prepare_corpus(plain, TokenShards(tagged).tokenizer, tmp_path / "plain-data", val_fraction=0.2, workers=0,
                   progress=False)
    assert main(_argv(tagged, tmp_path / "a")) == 0 and main(_argv(tmp_path / "plain-data", tmp_path / "b")) == 0
    ra = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    val = [r for r in ra if r["split"] == "val"]
    assert "loss/en" in val[-1] and not any(k.startswith("share/") for k in val[-1])
    assert not any("/" in k for r in rb for k in r)


def test_language_sampling_with_the_prefetch_thread_draws_the_same(tmp_path):
    data = _data(tmp_path)
    assert main(_argv(data, tmp_path / "a", "train.language_alpha=0.5")) == 0
    assert main(_argv(data, tmp_path / "b", "train.language_alpha=0.5", "train.num_workers=1")) == 0
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("a", "b")]
    assert losses[0] == losses[1]


def test_data_language_alpha_is_the_train_setting():
    """``data.language_alpha=A`` (the issue's spelling) sets train.language_alpha; other data.* keys are refused."""
    from transferlab.commands.pretrain import _sections
    from transferlab.errors import ConfigError

    assert _sections(["data.language_alpha=0.3"]) == ([], ["train.language_alpha=0.3"], {})
    with pytest.raises(ConfigError, match="data.language_alpha"):
        _sections(["data.alpha=0.3"])
