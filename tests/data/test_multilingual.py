"""Multilingual data: language codes and scripts, language-aware prepare, temperature sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.data import TokenShards
from transferlab.data.multilingual import (LanguagePlan, LanguageSampler, check_language, dominant_script,
                                           language_groups, script_mismatch, temperature_shares)
from transferlab.data.prepare import prepare_corpus
from transferlab.errors import DataError
from transferlab.objectives.datasets import PackedWindows, SentenceChunks

from transferlab.tokenizer import Tokenizer

_TEXTS = ["the cat sat on the mat. it was happy.", "el gato se sento. estaba feliz.",
          "кошка сидела. она была рада.", "hello world hola mundo"] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(_TEXTS, kind="bpe", vocab_size=400)


SIZES = {"en": 60_000, "es": 6_000, "sw": 600, "yo": 60}  # items per language: 1000x between extremes


def _sampler(alpha: float, batch: int = 32, rank: int = 0, world: int = 1, seed: int = 0):
    langs = np.repeat(np.arange(len(SIZES)), list(SIZES.values()))
    q = temperature_shares(SIZES, alpha)
    return LanguageSampler(langs, [q[c] for c in SIZES], batch, seed, rank, world), q


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.3])
def test_realised_shares_match_q_within_one_point(alpha):
    s, q = _sampler(alpha)
    items, langs = s.drawn(0, 40_000)  # over two blocks of 16,384
    for n in (200, 1_000, 10_000, 40_000):  # every prefix: within one example of q (+ q's 1/16384 rounding)
        shares = np.bincount(langs[:n], minlength=len(SIZES)) / n
        for i, c in enumerate(SIZES):
            assert abs(shares[i] - q[c]) < 0.01, (n, c, shares[i], q[c])
            assert abs(shares[i] - q[c]) * n < 1 + n / 16384
    assert s.drawn(123, 456)[0].tolist() == items[123:456].tolist()  # a window = the same draws
    # items are of their language, drawn from the right item ranges
    starts = np.cumsum([0, *SIZES.values()])
    assert ((items >= starts[langs]) & (items < starts[langs + 1])).all()


def test_q_formula_and_small_languages_gain():
    q1, q3 = temperature_shares(SIZES, 1.0), temperature_shares(SIZES, 0.3)
    tot = sum(SIZES.values())
    assert q1 == pytest.approx({c: v / tot for c, v in SIZES.items()})
    w = {c: (v / tot) ** 0.3 for c, v in SIZES.items()}
    assert q3 == pytest.approx({c: v / sum(w.values()) for c, v in w.items()})
    assert q3["yo"] > 10 * q1["yo"] and q3["en"] < q1["en"]


def test_sampler_is_exact_under_ranks_and_resume():
    one, _ = _sampler(0.3, batch=32)
    ranks = [_sampler(0.3, batch=16, rank=r, world=2)[0] for r in range(2)]
    for g in range(40):
        assert one.indices(g) == ranks[0].indices(g) + ranks[1].indices(g)
    fresh, _ = _sampler(0.3, batch=32)  # a resumed run builds a new sampler and reads on
    assert fresh.indices(37) == one.indices(37)
    assert _sampler(0.3, seed=1)[0].indices(0) != one.indices(0)


def test_large_language_is_read_without_repetition_small_one_cycles():
    s, q = _sampler(0.5)
    items, langs = s.drawn(0, 20_000)
    en = items[langs == 0]
    assert len(np.unique(en)) == len(en)  # fewer draws than items: none twice
    yo = items[langs == 3]
    assert len(yo) > SIZES["yo"] and len(np.unique(yo)) == SIZES["yo"]  # every item, cycled


def test_bad_alpha_and_language_codes():
    with pytest.raises(DataError, match="language_alpha must be > 0"):
        temperature_shares(SIZES, 0.0)
    with pytest.raises(DataError, match="language_alpha must be > 0"):
        temperature_shares(SIZES, -1.0)
    assert check_language("ES") == "es" and check_language("zh_Hant") == "zh-hant"
    with pytest.raises(DataError, match=r"--language: unknown language code 'xx'"):
        check_language("xx", "--language")


def test_scripts():
    assert dominant_script("Привет, как дела?") == "Cyrillic"
    assert dominant_script("こんにちは世界") == "Hiragana"
    assert dominant_script("123 !!") is None
    assert script_mismatch("hello there", "ru") == "Latin"
    assert script_mismatch("Привет", "ru") is None and script_mismatch("你好", "ja") is None


# ---------------------------------------------------------------------------------- prepare
def _corpus(tmp_path, n_en=300, n_es=30, n_ru=3):
    rows = ([{"text": f"the cat number {i} sat on the mat. it was happy.", "lang": "en"} for i in range(n_en)]
            + [{"text": f"el gato numero {i} se sento. estaba feliz.", "lang": "es"} for i in range(n_es)]
            + [{"text": f"кошка номер {i} сидела. она была рада.", "lang": "ru"} for i in range(n_ru)])
    f = tmp_path / "multi.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return f


def test_prepare_records_languages_and_old_folders_still_load(tok, tmp_path):
    f = _corpus(tmp_path)
    s = prepare_corpus(f, tok, tmp_path / "d", val_fraction=0.1, workers=0, progress=False)
    tr = TokenShards(tmp_path / "d", "train")
    assert tr.has_languages and set(tr.languages) == {"en", "es", "ru"}
    per = s["splits"]["train"]["languages"]
    assert sum(v["documents"] for v in per.values()) == tr.n_docs
    assert sum(v["tokens"] for v in per.values()) == tr.n_tokens
    for split in ("train", "validation"):
        sh = TokenShards(tmp_path / "d", split)
        for d in range(sh.n_docs):  # each document's language is the one its text is in
            text = tok.decode(sh.document(d).tolist())
            want = "en" if "cat" in text else "es" if "gato" in text else "ru"
            assert sh.languages[int(sh.doc_langs[d])] == want
    # a folder prepared without languages has no index and reads as one undetermined language
    plain = tmp_path / "plain.txt"
    plain.write_text("one doc here.\n\nanother doc.\n", encoding="utf-8")
    prepare_corpus(plain, tok, tmp_path / "p", workers=0, progress=False)
    assert not (tmp_path / "p" / "train.langs.npy").exists()
    old = TokenShards(tmp_path / "p")
    assert not old.has_languages and old.languages == ["und"] and old.doc_langs.tolist() == [0] * old.n_docs


def test_language_flag_per_input_and_workers_agree(tok, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n\n".join(f"hello world {i}." for i in range(50)), encoding="utf-8")
    b.write_text("\n\n".join(f"hola mundo {i}." for i in range(20)), encoding="utf-8")
    s0 = prepare_corpus([a, b], tok, tmp_path / "w0", workers=0, progress=False, languages=["en", "es"],
                        batch_chars=64)
    s2 = prepare_corpus([a, b], tok, tmp_path / "w2", workers=2, progress=False, languages=["en", "es"],
                        batch_chars=64)
    assert s0["splits"] == s2["splits"]
    assert s0["splits"]["train"]["languages"]["es"]["documents"] + s0["splits"].get("validation", {}).get(
        "languages", {}).get("es", {}).get("documents", 0) == 20
    with pytest.raises(DataError, match="one code per --input"):
        prepare_corpus([a, b], tok, tmp_path / "x", workers=0, progress=False, languages=["en", "es", "fr"])
    with pytest.raises(DataError, match="--language: unknown language code 'english'"):
        prepare_corpus(a, tok, tmp_path / "x", workers=0, progress=False, languages=["english"])


def test_bad_lang_field_and_script_warning(tok, tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "hello", "lang": "en"}\n{"text": "x", "lang": "klingon"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'lang': unknown language code 'klingon'"):
        prepare_corpus(f, tok, tmp_path / "x", workers=0, progress=False)
    g = tmp_path / "mixed.txt"
    g.write_text("hello there friend.\n\nanother latin line.\n", encoding="utf-8")
    prepare_corpus(g, tok, tmp_path / "m", workers=0, progress=False, languages=["ru"])
    err = capsys.readouterr().err
    assert "warning:" in err and "2 of 2 documents are not in their declared language's script" in err


# ---------------------------------------------------------------------------------- sampling on shards
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.3])
def test_plan_on_prepared_shards_matches_q(tok, tmp_path, alpha):
    f = _corpus(tmp_path, n_en=600, n_es=60, n_ru=12)
    prepare_corpus(f, tok, tmp_path / "d", val_fraction=0.0, workers=0, progress=False)
    sh = TokenShards(tmp_path / "d")
    for view in (PackedWindows(sh, 8, separator=0), SentenceChunks(sh, 16)):
        plan = LanguagePlan(view, alpha, batch_size=32, seed=0)
        r = plan.realised(32 * 300)
        for c in plan.codes:
            assert abs(r[c] - plan.q[c]) < 0.01 or not isinstance(view, PackedWindows), (c, r[c], plan.q[c])
        assert plan.q["ru"] > plan.p["ru"] or alpha == 1.0
    assert set(language_groups(PackedWindows(sh, 8, separator=0))) == {"en", "es", "ru"}


def test_plan_needs_languages(tok, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("\n\n".join(f"doc {i} text." for i in range(40)), encoding="utf-8")
    prepare_corpus(plain, tok, tmp_path / "p", workers=0, progress=False)
    with pytest.raises(DataError, match="has no language index"):
        LanguagePlan(PackedWindows(TokenShards(tmp_path / "p"), 4), 0.3, 8, 0)


# ---------------------------------------------------------------------------------- built-in data
def test_builtin_multilingual_corpus_and_one_language():
    from collections import Counter

    from transferlab.data.builtin import corpus_source, iter_corpus

    langs = Counter(d.lang for d in iter_corpus("builtin:multilingual"))
    assert len(langs) == 28 and langs.most_common(1)[0][0] == "en" and langs["th"] == 6
    es = list(iter_corpus("builtin:multilingual/ES"))
    assert {d.lang for d in es} == {"es"} and len(es) == langs["es"]
    assert corpus_source("builtin:multilingual/es").size < corpus_source("builtin:multilingual").size
    assert all(d.lang == "en" for d in iter_corpus("builtin:news"))
    with pytest.raises(DataError, match="no 'sw' text in builtin:multilingual"):
        list(iter_corpus("builtin:multilingual/sw"))
    with pytest.raises(DataError, match="unknown language code 'xx'"):
        corpus_source("builtin:multilingual/xx")


def test_chatterbot_topic_task_in_each_language():
    from transferlab.data.builtin import load_task

    en, es = load_task("chatterbot-topic"), load_task("chatterbot-topic/es")
    assert en.labels == es.labels and "conversations" not in en.labels and "money" in en.labels
    assert en.task_type == "classification" and en.sizes() == {"train": 613, "validation": 88, "test": 175}
    assert {e["label"] for e in es.test} <= set(es.labels) and "dinero" not in es.labels
    assert load_task("chatterbot-topic/es").test == es.test  # deterministic
    with pytest.raises(DataError, match="no dialogue of the English topics"):
        load_task("chatterbot-topic/te")


def test_declared_language_with_no_text_left_is_an_error(tok, tmp_path):
    f = tmp_path / "all_es.jsonl"  # every row says es: nothing is left of the input's declared fr
    f.write_text('{"text": "hola mundo", "lang": "es"}\n{"text": "adios", "lang": "es"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"--language fr \(.*all_es.jsonl\): no text in this language"):
        prepare_corpus(f, tok, tmp_path / "x", workers=0, progress=False, languages=["fr"])
    assert not (tmp_path / "x").exists()


def test_cli_prepare_with_language_prints_the_shares(tok, tmp_path, capsys):
    from transferlab.cli import main

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n\n".join(f"hello world {i}." for i in range(30)), encoding="utf-8")
    b.write_text("\n\n".join(f"hola mundo {i}." for i in range(10)), encoding="utf-8")
    tok.save(tmp_path / "tok")
    assert main(["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(a), "--input", str(b),
                 "--language", "en", "--language", "es", "--out", str(tmp_path / "d"), "--workers", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "languages (2): en 7" in out and ", es 2" in out
    assert main(["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(a), "--language", "xx",
                 "--out", str(tmp_path / "e"), "--workers", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: --language: unknown language code 'xx'")
