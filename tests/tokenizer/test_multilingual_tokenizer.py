"""A tokenizer trained on language-sampled text (temperature alpha) and the fertility report."""

from __future__ import annotations

import json

import pytest

from transferlab.cli import main
from transferlab.data.documents import Document
from transferlab.data.multilingual import fertility, sample_by_language
from transferlab.errors import DataError
from transferlab.tokenizer import Tokenizer
from transferlab.data.documents import RawTexts

EN = [f"the quick brown fox number {i} jumps over the lazy dog." for i in range(200)]
RU = [f"быстрая лиса {i} прыгает через собаку." for i in range(10)]
ZH = ["东京/大阪之间的列车很快", "我喜欢学习语言"]  # no spaces and a '/': text, never a path


def _docs():
    return ([Document(t, "x", i, None, "en") for i, t in enumerate(EN)]
            + [Document(t, "x", i, None, "ru") for i, t in enumerate(RU)]
            + [Document(t, "x", i, None, "zh") for i, t in enumerate(ZH)])


def test_sampling_gives_each_language_its_q_share_of_bytes():
    texts, stats = sample_by_language(_docs(), 0.3, budget_bytes=50_000)
    assert isinstance(texts, RawTexts)
    total = sum(v["bytes"] for v in stats.values())
    for c, v in stats.items():
        assert abs(v["bytes"] / total - v["q"]) < 0.02, c  # at most one document over per language
    assert stats["zh"]["q"] > 10 * stats["zh"]["p"]
    assert sum(t in ZH for t in texts) > 100  # the small language is repeated
    one, s1 = sample_by_language(_docs(), 1.0)
    assert sorted(one) == sorted(d.text for d in _docs())  # alpha 1, full budget: the corpus itself
    with pytest.raises(DataError, match="language_alpha must be > 0"):
        sample_by_language(_docs(), 0.0)


def test_sampled_bpe_has_no_unknown_script_and_fertility_improves_for_small_languages():
    docs = _docs()
    toks = {}
    for alpha in (1.0, 0.3):
        texts, _ = sample_by_language(docs, alpha, budget_bytes=20_000)
        toks[alpha] = Tokenizer.train(texts, kind="bpe", vocab_size=300, min_frequency=2)  # 41 merges to share
    f1, f3 = fertility(toks[1.0], docs), fertility(toks[0.3], docs)
    assert f3["ru"]["tokens_per_word"] < f1["ru"]["tokens_per_word"]
    assert f3["en"]["tokens_per_word"] >= f1["en"]["tokens_per_word"]
    assert all(v["unk"] == 0 for v in f1.values())  # byte-level: every script is in the vocabulary
    thai = "สวัสดีครับ"  # never seen
    assert toks[0.3].decode(toks[0.3].encode(thai)) == thai


def test_cli_train_with_alpha_and_fertility_table(tmp_path, capsys):
    f = tmp_path / "multi.jsonl"
    rows = [{"text": t, "lang": d.lang} for d in _docs() for t in [d.text]]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for alpha in ("1.0", "0.3"):
        assert main(["tokenizer", "train", "--kind", "bpe", "--vocab-size", "400", "--input", str(f),
                     "--language-alpha", alpha, "--sample-mb", "0.02", "--out", str(tmp_path / f"tok{alpha}")]) == 0
    out = capsys.readouterr().out
    assert "sampled 0.0 MB at alpha=0.3: en" in out
    assert main(["tokenizer", "fertility", "--tokenizer", str(tmp_path / "tok1.0"), "--tokenizer",
                 str(tmp_path / "tok0.3"), "--label", "a1", "--label", "a03", "--input", str(f)]) == 0
    table = capsys.readouterr().out
    assert "| language | docs | words | a1 tok/word | a1 tok/char | a03 tok/word | a03 tok/char |" in table
    assert "| ru (Russian) | 10 |" in table and "0 unknown tokens" in table
    assert main(["tokenizer", "train", "--kind", "bpe", "--input", str(f), "--language-alpha", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--language-alpha: expected a finite number > 0" in capsys.readouterr().err
