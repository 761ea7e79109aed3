"""Fine-tuning: heads wiring per task type, the loop, save / evaluate / predict, the CLI.

Models are tiny (2 layers, d_model 64) with tokenizers trained in-process on the test's own
synthetic vocabulary, so every run takes a second or two.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny import family_layout, save_model_dir, tagged_sentence, tokenizer_ids
from transferlab.cli import main
from transferlab.config import ModelConfig
from transferlab.errors import CheckpointError, ConfigError, DataError
from transferlab.finetune import FinetuneConfig, TaskSpec, evaluate, finetune, predict
from transferlab.finetune.inputs import IGNORE, InputBuilder
from transferlab.finetune.task_types import QA, Classification, Seq2Seq, Tagging, build_wiring
from transferlab.finetune.task_types.tagging import bio_transitions, bio_viterbi
from transferlab.finetune.loop import _Unfreezer, load_finetuned
from transferlab.models.model import from_pretrained
from transferlab.tokenizer import Tokenizer

POS = "good great excellent wonderful superb lovely".split()
NEG = "bad awful terrible poor dull boring".split()
FILL = "the movie film plot actors story was is very quite a an and but".split()
NAMES = "alice bob carol dave erin frank".split()
CITIES = "paris london rome berlin madrid oslo".split()
COLORS = "red blue green black white pink gray brown".split()


def _sentence(rng: random.Random, lab: str) -> str:
    w = [rng.choice(FILL) for _ in range(rng.randint(4, 10))]
    w.insert(rng.randrange(len(w)), rng.choice(POS if lab == "pos" else NEG))
    return " ".join(w)


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = [_sentence(rng, rng.choice(["pos", "neg"])) for _ in range(200)]
    lines += [" ".join(rng.sample(NAMES + CITIES + COLORS, 6)).title() for _ in range(200)]
    lines += [" ".join(rng.sample(NAMES + CITIES + COLORS + FILL, 8)) for _ in range(200)]
    return lines


def _make_dir(root: Path, family: str, kind: str) -> Path:
    tok = Tokenizer.train(_corpus(), kind=kind, vocab_size=400, n_sentinels=0)
    cfg = ModelConfig(
        family=family, vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=2, d_ff=128,
        max_positions=128, pooler=family == "encoder", **family_layout(family), **tokenizer_ids(tok),
        decoder_start_token_id=tok.eos_token_id if family == "encoder-decoder" else -1,
        dropout=0.0, attention_dropout=0.0, heads={"lm": {}},
    )
    return save_model_dir(root / f"{family}-{kind}", cfg, tok)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "encoder": _make_dir(root, "encoder", "wordpiece"),
        "decoder": _make_dir(root, "decoder", "bpe"),
        "encoder-decoder": _make_dir(root, "encoder-decoder", "bpe"),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Small learnable task files of every type."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(1)

    def jsonl(name: str, rows: list[dict]) -> Path:
        p = root / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return p

    out: dict[str, Path] = {}
    for split, n in (("train", 160), ("val", 40), ("test", 40)):
        p = root / f"sent_{split}.csv"
        rows = ["text,label"] + [f"{_sentence(rng, lab)},{lab}" for lab in (rng.choice(["pos", "neg"]) for _ in range(n))]
        p.write_text("\n".join(rows) + "\n", encoding="utf-8")
        out[f"sent_{split}"] = p

    def tagged() -> dict:
        return tagged_sentence(rng, NAMES, CITIES, FILL)

    out["tag_train"] = jsonl("tag_train.jsonl", [tagged() for _ in range(160)])
    conll = root / "tag_test.conll"
    conll.write_text("".join("".join(f"{a}\t{b}\n" for a, b in zip(s["tokens"], s["tags"])) + "\n"
                             for s in (tagged() for _ in range(30))), encoding="utf-8")
    out["tag_test"] = conll

    def qa() -> dict:
        n, c = rng.choice(NAMES), rng.choice(CITIES)
        pre = " ".join(rng.choice(FILL) for _ in range(rng.randint(2, 12)))
        ctx = f"{pre} {n.title()} lives in {c.title()} . " + " ".join(rng.choice(FILL) for _ in range(rng.randint(2, 12)))
        return {"context": ctx, "question": f"where does {n} live ?", "answer": c.title(),
                "answer_start": ctx.index(f" {c.title()} ") + 1}

    out["qa_train"] = jsonl("qa_train.jsonl", [qa() for _ in range(160)])
    # seq2seq: 8 fixed three-word sources, each repeated 6 times; the target is the first word
    sources = [[c] + rng.sample([x for x in COLORS if x != c], 2) for c in COLORS]
    out["copy"] = jsonl("copy.jsonl", [{"source": " ".join(w), "target": w[0]} for _ in range(6) for w in sources])
    reg = []
    for _ in range(160):
        k = rng.randint(0, 3)
        w = ["good"] * k + rng.sample(COLORS, 4)
        rng.shuffle(w)
        reg.append({"text": " ".join(w), "label": 10.0 + 2.5 * k})
    out["reg"] = jsonl("reg.jsonl", reg)
    pairs = []
    for _ in range(160):
        a = rng.choice(COLORS)
        b = a if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != a])
        pairs.append({"first": f"the {a} one", "second": f"a {b} thing", "label": "same" if a == b else "diff"})
    out["pairs"] = jsonl("pairs.jsonl", pairs)
    return out


def _tok(d: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(d)


def _cfg(d: Path) -> ModelConfig:
    return from_pretrained(d).config


# ------------------------------------------------------------------------------ input layout
def test_input_builder_pairs_and_segments(dirs):
    tok, cfg = _tok(dirs["encoder"]), _cfg(dirs["encoder"])
    b = InputBuilder(tok, cfg)
    a, c = tok.encode("the good movie"), tok.encode("a bad plot and story")
    ids, types = b.pair(a, c, 100)
    assert ids == [tok.cls_token_id] + a + [tok.sep_token_id] + c + [tok.sep_token_id]
    assert types == [0] * (len(a) + 2) + [1] * (len(c) + 1)
    # longest-first truncation: the longer segment loses tokens first
    assert len(a) == 3 and len(c) == 5
    ids, types = b.pair(a, c, 3 + 6)  # room for 6 of the 8 tokens: the longer one is cut to 3
    assert ids == [tok.cls_token_id] + a + [tok.sep_token_id] + c[:3] + [tok.sep_token_id]
    ids, types = b.pair(a, c, 3 + 4)  # then both shrink in turn
    assert ids == [tok.cls_token_id] + a[:2] + [tok.sep_token_id] + c[:2] + [tok.sep_token_id]
    # a decoder tokenizer (GPT-2 style: only <|endoftext|>) ends with eos, no segment ids
    dtok, dcfg = _tok(dirs["decoder"]), _cfg(dirs["decoder"])
    ids, types = InputBuilder(dtok, dcfg).single(dtok.encode("the good movie"), 50)
    assert ids[-1] == dtok.eos_token_id and types is None


def test_truncation_head_tail_and_head_plus_tail(dirs, tmp_path):
    tok, cfg = _tok(dirs["encoder"]), _cfg(dirs["encoder"])
    b, cls_, sep = InputBuilder(tok, cfg), tok.cls_token_id, tok.sep_token_id
    a = list(range(100, 120))  # 20 "tokens"; max_length 10 leaves a budget of 8
    assert b.single(a, 10)[0] == [cls_] + a[:8] + [sep]
    assert b.single(a, 10, "tail")[0] == [cls_] + a[-8:] + [sep]
    assert b.single(a, 10, "head+tail")[0] == [cls_] + a[:2] + a[-6:] + [sep]  # a quarter from the start
    assert b.single(a[:5], 10, "head+tail")[0] == [cls_] + a[:5] + [sep]  # short texts are untouched
    # the wiring reads the spec's setting, and the setting travels with the fine-tuned folder
    text = " ".join(["good"] * 30 + ["bad"] * 30)
    for how, first, last in [("head", "good", "good"), ("tail", "bad", "bad"), ("head+tail", "good", "bad")]:
        spec = TaskSpec("classification", labels=["neg", "pos"], max_length=12, truncation=how)
        (ids,) = [f["input_ids"] for f in Classification(spec, tok, cfg).encode([{"text": text, "label": "pos"}], train=False)]
        words = tok.decode(ids, skip_special_tokens=True).split()
        assert len(ids) == 12 and (words[0], words[-1]) == (first, last)
        spec.save(tmp_path)
        assert TaskSpec.load(tmp_path).truncation == how
    with pytest.raises(ConfigError, match="truncation must be head, tail, head\\+tail"):
        FinetuneConfig(model="x", task="imdb", truncation="middle").validate()


# ------------------------------------------------------------------------------ tagging
@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_tagging_labels_first_subword_only(dirs, family):
    tok, cfg = _tok(dirs[family]), _cfg(dirs[family])
    spec = TaskSpec("tagging", labels=["O", "B-PER", "I-PER"], max_length=64)
    w = Tagging(spec, tok, cfg)
    words = ["Dravelin", "met", "Sonbarit", "Plomerik"]  # unseen words split into several pieces
    tags = ["B-PER", "O", "B-PER", "I-PER"]
    f = w.encode([{"tokens": words, "tags": tags}], train=True)[0]
    labelled = [i for i, lab in enumerate(f["labels"]) if lab != IGNORE]
    assert labelled == f["first"]  # exactly one labelled position per word: its first piece
    assert [spec.labels[f["labels"][i]] for i in labelled] == tags
    assert len(f["input_ids"]) > len(words) + len(w.builder.prefix) + len(w.builder.suffix)  # words were split
    pieces = tok.convert_ids_to_tokens(f["input_ids"])
    for word, pos in zip(words, f["first"]):
        # the first piece starts the word ("##" marks continuations in WordPiece, "Ġ" a new word in BPE)
        assert not pieces[pos].startswith("##")
        assert word.lower().startswith(pieces[pos].lstrip("Ġ").lower()[:1])


def test_tagging_truncated_words_predict_o(dirs):
    tok, cfg = _tok(dirs["encoder"]), _cfg(dirs["encoder"])
    spec = TaskSpec("tagging", labels=["O", "B-PER", "I-PER"], max_length=6)
    w = Tagging(spec, tok, cfg)
    words = ["alice", "bob", "carol", "dave", "erin", "frank"]
    f = w.encode([{"tokens": words}], train=False)[0]
    assert len(f["input_ids"]) == 6 and f["first"][:4] == [1, 2, 3, 4] and f["first"][4:] == [-1, -1]

    class Fake(torch.nn.Module):  # logits that say B-PER everywhere
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

    w.logits = lambda model, batch: torch.tensor([0.0, 5.0, 0.0]).expand(*batch["input_ids"].shape, 3)
    preds = w.predict(Fake(), [{"tokens": words}], [f], 8, torch.inference_mode)
    assert preds == [["B-PER"] * 4 + ["O", "O"]]


def test_bio_viterbi_never_emits_invalid_i():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    start, allowed = bio_transitions(labels)
    assert not start[2] and not allowed[0, 2] and not allowed[3, 2] and allowed[1, 2] and allowed[2, 2]
    # argmax would say: I-PER (invalid start), O, I-LOC (invalid after O), I-PER (invalid after LOC)
    logp = np.log(np.array([
        [0.30, 0.25, 0.45, 0.00, 0.00],
        [0.90, 0.05, 0.05, 0.00, 0.00],
        [0.20, 0.00, 0.00, 0.35, 0.45],
        [0.10, 0.10, 0.45, 0.05, 0.30],
    ]) + 1e-9)
    best = bio_viterbi(logp, start, allowed)
    path = [labels[i] for i in best]
    assert path == ["O", "O", "B-LOC", "I-LOC"]
    # it is the best valid path: brute force over all 5**4 paths
    import itertools

    valid = [p for p in itertools.product(range(5), repeat=4)
             if start[p[0]] and all(allowed[a, b] for a, b in zip(p, p[1:]))]
    brute = max(valid, key=lambda p: sum(logp[t, k] for t, k in enumerate(p)))
    assert list(brute) == best
    for prev, cur in zip(["O"] + path, path):
        assert not cur.startswith("I-") or prev[2:] == cur[2:]
    assert bio_viterbi(np.zeros((0, 5)), start, allowed) == []


# ------------------------------------------------------------------------------ QA
@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_qa_windows_map_answers_to_characters(dirs, family):
    tok, cfg = _tok(dirs[family]), _cfg(dirs[family])
    spec = TaskSpec("qa", max_length=24, doc_stride=6, max_answer_length=10)
    w = QA(spec, tok, cfg)
    filler = "the movie was quite good and the plot was very dull but the actors " * 2
    ctx = filler + "Alice lives in New Paris , she said ." + " and the story"
    ans = "New Paris"
    ex = {"context": ctx, "question": "where does alice live ?", "answers": [ans], "answer_starts": [ctx.index(ans)]}
    feats = w.encode([ex], train=True)
    assert len(feats) > 2  # a long context becomes several overlapping windows
    assert all(len(f["input_ids"]) <= 24 for f in feats)
    hits = [f for f in feats if f["start"] > 0]
    assert hits and len(hits) < len(feats)  # some windows hold the answer, others point at position 0
    for f in hits:
        s, e = f["offsets"][f["start"]], f["offsets"][f["end"]]
        assert ctx[s[0] : e[1]].strip() == ans  # the token span maps back to the exact characters
    # decoding: logits peaked on the gold span of one window give back the original text
    gold = hits[0]

    def fake_logits(model, batch):
        T = batch["input_ids"].shape[1]
        out = torch.zeros(batch["input_ids"].shape[0], T, 2)
        for j in range(out.shape[0]):
            if batch["input_ids"][j, : len(gold["input_ids"])].tolist() == gold["input_ids"]:
                out[j, gold["start"], 0] = out[j, gold["end"], 1] = 10.0
        return out

    w.logits = fake_logits
    model = torch.nn.Linear(1, 1)
    pred = w.predict(model, [ex], w.encode([ex], train=False), 4, torch.inference_mode)
    assert pred == [ans]


def test_qa_lowercasing_tokenizer_keeps_original_case(dirs):
    tok, cfg = _tok(dirs["encoder"]), _cfg(dirs["encoder"])
    assert tok.tokenize("PARIS") == tok.tokenize("paris")  # the tokenizer lower-cases
    w = QA(TaskSpec("qa", max_length=64), tok, cfg)
    ctx = "They met in PARIS, Texas."
    f = w.encode([{"context": ctx, "question": "where?", "answers": ["PARIS"], "answer_starts": [12]}], True)[0]
    s, e = f["offsets"][f["start"]], f["offsets"][f["end"]]
    assert ctx[s[0] : e[1]] == "PARIS"


# ------------------------------------------------------------------------------ seq2seq
def test_seq2seq_decoder_only_loss_is_on_completion_only(dirs):
    d = dirs["decoder"]
    tok, model = _tok(d), from_pretrained(d)
    w = Seq2Seq(TaskSpec("seq2seq", max_length=40, max_target_length=6), tok, model.config)
    ex = [{"source": "red blue green", "target": "red"}, {"source": "pink gray brown white", "target": "pink gray"}]
    feats = w.encode(ex, train=True)
    for f in feats:
        n_prompt = len(f["prompt"])
        assert f["input_ids"][:n_prompt] == f["prompt"]
        assert all(v == IGNORE for v in f["labels"][:n_prompt])  # no loss on the prompt
        assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:]
        assert f["labels"][-1] == tok.eos_token_id
        assert tok.decode(f["input_ids"][n_prompt:], skip_special_tokens=True).strip() in ("red", "pink gray")
    batch = w.collate(feats)
    with torch.no_grad():
        loss = w.loss(model, batch)
        # reference: full logits, next-token CE over the completion positions only
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                              ignore_index=IGNORE)
        n_completion = int((batch["labels"] != IGNORE).sum())
        assert n_completion == sum(len(f["input_ids"]) - len(f["prompt"]) for f in feats)
        assert torch.allclose(loss, ref, atol=1e-5)
        # changing the prompt's labels must not matter: they are never scored
        batch2 = dict(batch, labels=batch["labels"].clone())
        assert torch.allclose(w.loss(model, batch2), loss)


def test_seq2seq_encoder_decoder_teacher_forcing(dirs):
    d = dirs["encoder-decoder"]
    tok, model = _tok(d), from_pretrained(d)
    w = Seq2Seq(TaskSpec("seq2seq", max_length=40, max_target_length=6), tok, model.config)
    feats = w.encode([{"source": "red blue green", "target": "red blue"}], train=True)
    f = feats[0]
    assert f["labels"][-1] == tok.eos_token_id and f["input_ids"][-1] == tok.eos_token_id
    batch = w.collate(feats)
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        assert torch.allclose(w.loss(model, batch), ref, atol=1e-5)


def test_seq2seq_on_an_encoder_is_refused(dirs):
    with pytest.raises(ConfigError, match="seq2seq needs a decoder or encoder-decoder"):
        build_wiring(TaskSpec("seq2seq"), _tok(dirs["encoder"]), _cfg(dirs["encoder"]))


# ------------------------------------------------------------------------------ end to end
def _run(tmp_path, name, **kw):
    kw.setdefault("quiet", True)
    kw.setdefault("batch_size", 16)
    kw.setdefault("cost", {"track_energy": False})  # codecarbon's start-up costs seconds
    return finetune(FinetuneConfig(out_dir=str(tmp_path / name), **kw))


def test_classification_learns_saves_and_reloads(dirs, data, tmp_path):
    res = _run(tmp_path, "cls", model=str(dirs["encoder"]), train_file=str(data["sent_train"]),
               validation_file=str(data["sent_val"]), test_file=str(data["sent_test"]), epochs=6, lr=2e-3)
    assert res.task_type == "classification" and res.metric == "accuracy"
    assert res.validation["accuracy"] >= 0.9 and res.test["accuracy"] >= 0.85
    assert res.n_train == 160 and res.train_tokens > 0 and len(res.history) == 6
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    best = max(range(6), key=lambda i: (res.history[i]["validation_accuracy"], -i))
    assert res.best_epoch == best + 1 and res.validation["accuracy"] == res.history[best]["validation_accuracy"]
    out = res.out_dir
    for f in ("config.json", "model.safetensors", "tokenizer.json", "task.json", "metrics.json", "metrics.jsonl",
              "finetune_config.json"):
        assert (out / f).is_file(), f
    assert not (out / "history.jsonl").exists()  # metrics.jsonl is the one log
    spec = TaskSpec.load(out)
    assert spec.task_type == "classification" and spec.labels == ["neg", "pos"] and spec.head == "classification"
    assert list(from_pretrained(out).heads) == ["classification"]  # pre-training heads dropped
    # evaluate and predict from the folder alone give the same numbers as the run
    assert evaluate(out) == pytest.approx(res.test)
    assert evaluate(out, test_file=data["sent_test"]) == pytest.approx(res.test)
    assert evaluate(out, split="validation") == pytest.approx(res.validation)
    preds = predict(out, ["the movie was wonderful and lovely", "a dull and boring film"])
    assert [p["prediction"] for p in preds] == ["pos", "neg"]
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == pytest.approx(res.test) and metrics["n_train"] == 160
    # the one log schema of pre-training and fine-tuning: train + val rows per evaluation, TensorBoard
    from transferlab.training.runlog import ROW_FIELDS, read_rows

    rows = read_rows(out / "metrics.jsonl")
    assert [r["split"] for r in rows] == ["train", "val"] * 6
    assert all(tuple(r)[:5] == ROW_FIELDS for r in rows)
    assert [r["loss"] for r in rows[::2]] == [h["train_loss"] for h in res.history]
    assert [r["accuracy"] for r in rows[1::2]] == [h["validation_accuracy"] for h in res.history]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    assert {"loss/train", "accuracy/val"} <= set(ea.Tags()["scalars"])
    assert len(ea.Scalars("loss/train")) == 6
    # the cost of the training loop: tokens as counted by the loop, analytic FLOPs, a price
    cost = json.loads((out / "report.json").read_text())
    assert cost["kind"] == "finetune" and cost["tokens"] == res.train_tokens and cost["steps"] == res.steps
    assert cost["flops"] > 6 * res.train_tokens * cost["params_non_embedding"] * 0.9
    assert cost["wall_seconds"] <= res.train_seconds + 1 and cost["price_usd"] > 0
    assert res.cost == cost


def test_pair_classification_with_segments(dirs, data, tmp_path):
    # (learning a cross-segment relation takes a tiny random encoder ~15 epochs: too slow for a unit
    # test; the classification test above covers learning, this one the pair layout end to end)
    res = _run(tmp_path, "pairs", model=str(dirs["encoder"]), train_file=str(data["pairs"]), text_column="first",
               pair_column="second", epochs=1, lr=2e-3)
    assert res.task_type == "pair-classification" and set(res.validation) == {"accuracy", "macro_f1", "mcc"}
    model, tok, spec, w = load_finetuned(res.out_dir)
    assert spec.columns == {"text": "first", "pair": "second", "label": "label"}
    f = w.encode([{"text": "the red one", "pair": "a red thing"}], train=False)[0]
    n_first = len(tok.encode("the red one")) + 2
    assert f["input_ids"][0] == tok.cls_token_id and f["input_ids"][n_first - 1] == tok.sep_token_id
    assert f["token_type_ids"] == [0] * n_first + [1] * (len(f["input_ids"]) - n_first)
    # the segment ids reach the model: swapping them changes the output
    batch = w.collate([f])
    with torch.no_grad():
        a = w.logits(model, batch)
        b = w.logits(model, dict(batch, token_type_ids=1 - batch["token_type_ids"]))
    assert not torch.allclose(a, b)
    p = predict(res.out_dir, [{"text": "the pink one", "pair": "a pink thing"}])
    assert p[0]["prediction"] in ("same", "diff")
    with pytest.raises(DataError, match="input 1: empty or missing 'pair'"):
        predict(res.out_dir, [{"text": "the pink one"}])


def test_regression_standardises_targets(dirs, data, tmp_path):
    res = _run(tmp_path, "reg", model=str(dirs["encoder"]), train_file=str(data["reg"]), epochs=4, lr=3e-3,
               pooling="mean")
    assert res.task_type == "regression" and res.metric == "pearson"
    assert res.validation["pearson"] > 0.9
    model, tok, spec, w = load_finetuned(res.out_dir)
    assert 13 < spec.label_mean < 15 and 2 < spec.label_std < 4  # labels are 10 + 2.5 k, k = 0..3
    texts = ["good good good red blue green pink", "red blue green pink"]
    p = [x["prediction"] for x in predict(res.out_dir, texts, dtype="fp32")]
    assert 8 < p[1] < p[0] < 18  # ordered, and on the label scale, not the standardised one
    with torch.no_grad():
        raw = w.logits(model, w.collate(w.encode([{"text": t} for t in texts], train=False))).squeeze(-1)
    assert p == pytest.approx((raw * spec.label_std + spec.label_mean).tolist(), rel=1e-5)


def test_tagging_end_to_end_with_conll_test(dirs, data, tmp_path):
    res = _run(tmp_path, "tag", model=str(dirs["encoder"]), train_file=str(data["tag_train"]),
               test_file=str(data["tag_test"]), epochs=5, lr=3e-3)
    assert res.task_type == "tagging" and res.metric == "f1"
    assert res.test["f1"] > 0.9
    # filler words the training data has: "went to" is pieces it never saw (w ##ent t ##o), tagged B-PER on 7
    # of 20 runs (finetune seeds 0-4, 4 processes: WordPiece training gives each process its own vocabulary);
    # this sentence was tagged exactly on 30 of 30 such runs
    p = predict(res.out_dir, ["Alice was the Rome City"])[0]
    assert p["prediction"] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert [(e["type"], e["text"]) for e in p["entities"]] == [("PER", "Alice"), ("LOC", "Rome City")]


def test_qa_end_to_end(dirs, data, tmp_path):
    res = _run(tmp_path, "qa", model=str(dirs["encoder"]), train_file=str(data["qa_train"]), epochs=3, lr=5e-3,
               max_length=48, doc_stride=16)
    assert res.task_type == "qa" and res.validation["exact_match"] > 0.8
    p = predict(res.out_dir, [{"context": "the film was good . Bob lives in Oslo . the end", "question": "where does bob live ?"}])
    assert p[0]["prediction"] == "Oslo"


@pytest.mark.parametrize("family", ["encoder-decoder", "decoder"])
def test_seq2seq_end_to_end(dirs, data, tmp_path, family):
    # lr 2e-3 for 30 epochs: exact copies over finetune seeds 0-9, 8 of 8 for both families (rougeL 1.0).
    # lr 5e-3 for 20 epochs was unstable (its loss jumped back mid-run): the decoder copied 7 or 8 of 8
    # (7 on 4 of 12 seeds, the default seed 0 among them; 6 on a fresh clone), the encoder-decoder
    # 1-8 (rougeL 0.2-1.0; 5 at 40 epochs)
    res = _run(tmp_path, f"s2s-{family}", model=str(dirs[family]), train_file=str(data["copy"]), epochs=30,
               lr=2e-3, batch_size=8, max_length=32, max_target_length=6)
    assert res.task_type == "seq2seq" and res.metric == "rougeL"
    assert res.validation["rougeL"] >= 0.8 > res.history[0]["validation_rougeL"]
    rows = [json.loads(x) for x in data["copy"].read_text().splitlines()[:8]]
    preds = [p["prediction"] for p in predict(res.out_dir, [r["source"] for r in rows])]
    assert sum(p == r["target"] for p, r in zip(preds, rows)) >= 7  # generated, decoded text


def test_from_scratch_preset_trains_its_own_tokenizer(data, tmp_path):
    res = _run(tmp_path, "scratch", model="bert-tiny", from_scratch=True, train_file=str(data["sent_train"]),
               epochs=1, lr=1e-3, tokenizer_vocab_size=300)
    tok = Tokenizer.from_pretrained(res.out_dir)
    cfg = from_pretrained(res.out_dir).config
    assert tok.kind == "wordpiece" and cfg.vocab_size == tok.vocab_size <= 300
    assert cfg.n_layers == 2 and cfg.d_model == 128  # the preset's architecture
    # the training words are whole tokens of the new vocabulary
    assert tok.tokenize("wonderful movie") == ["wonderful", "movie"]
    with pytest.raises(ConfigError, match="'bert-tiny' is a preset: it has no pre-trained weights; pass --from-scratch"):
        _run(tmp_path, "x", model="bert-tiny", train_file=str(data["sent_train"]))


def test_from_scratch_on_a_model_dir_reinitialises(dirs, data, tmp_path):
    cfg = FinetuneConfig(model=str(dirs["encoder"]), train_file=str(data["sent_train"]), epochs=0.05, quiet=True)
    from transferlab.finetune.loop import _load_model, load_task_data

    d = load_task_data(cfg)
    pre, _, _ = _load_model(cfg, d, d.train)
    torch.manual_seed(3)
    fresh, _, _ = _load_model(cfg.replace(from_scratch=True), d, d.train)
    a, b = pre.state_dict(), fresh.state_dict()
    key = "backbone.encoder.blocks.0.attn.qkv.weight"
    assert a[key].shape == b[key].shape and not torch.equal(a[key], b[key])
    assert fresh.config.d_model == pre.config.d_model and not fresh.heads


def test_train_size_subsamples_deterministically(dirs, data, tmp_path):
    kw = dict(model=str(dirs["encoder"]), train_file=str(data["sent_train"]), validation_file=str(data["sent_val"]),
              epochs=1, lr=1e-3, train_size=32, eval_on_test=False)
    r1 = _run(tmp_path, "a", seed=0, **kw)
    r2 = _run(tmp_path, "b", seed=0, **kw)
    r3 = _run(tmp_path, "c", seed=1, **kw)
    assert r1.n_train == 32 and r1.steps == 2
    assert r1.history[0]["train_loss"] == r2.history[0]["train_loss"]  # same seed, same run
    assert r1.validation == r2.validation
    assert r1.history[0]["train_loss"] != r3.history[0]["train_loss"]


def test_discriminative_lr_and_gradual_unfreezing(dirs):
    from transferlab.training.optim import build_optimizer

    model = from_pretrained(dirs["encoder"])
    model.add_head("classification", num_labels=2)
    opt = build_optimizer(model, 1e-3, layer_lr_decay=0.5)
    lrs = {round(g["lr"], 8) for g in opt.param_groups}
    assert lrs == {1e-3, 5e-4, 2.5e-4, 1.25e-4}  # heads, block 1, block 0, embeddings (L = 2)
    u = _Unfreezer(model, 0.5)
    trainable = lambda: {n.split(".")[0] + ("." + n.split(".")[3] if ".blocks." in n else "")  # noqa: E731
                         for n, p in model.named_parameters() if p.requires_grad}
    u(0.0)
    assert all(n.startswith("heads.") or ".pooler." in n for n, p in model.named_parameters() if p.requires_grad)
    u(0.5 / 3 + 1e-6)  # one more group: the top block
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".blocks.1." in n for n in names) and not any(".blocks.0." in n for n in names)
    u(0.5)
    assert all(p.requires_grad for p in model.parameters())
    assert trainable()


def test_dropout_overrides_reach_the_modules_and_the_saved_config(dirs, data, tmp_path):
    from transferlab.models.blocks import Attention

    res = _run(tmp_path, "drop", model=str(dirs["encoder"]), train_file=str(data["sent_train"]), epochs=0.1,
               dropout=0.05, attention_dropout=0.0, head_dropout=0.3, eval_on_test=False)
    model, _, spec, _ = load_finetuned(res.out_dir)
    assert model.config.dropout == 0.05 and model.config.attention_dropout == 0.0
    assert all(m.p_drop == 0.0 for m in model.modules() if isinstance(m, Attention))
    assert {m.p for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout)} == {0.05}
    assert model.heads["classification"].dropout.p == 0.3 and spec.head_dropout == 0.3
    with pytest.raises(ConfigError, match="attention_dropout: expected a finite number in \\[0, 1\\)"):
        FinetuneConfig(model="x", task="imdb", attention_dropout=1.0).validate()


def test_slanted_schedule_and_time_budget(dirs, data, tmp_path):
    res = _run(tmp_path, "t", model=str(dirs["encoder"]), train_file=str(data["sent_train"]), epochs=50,
               max_minutes=0.02, schedule="slanted", layer_lr_decay=0.8, gradual_unfreeze=0.3, eval_on_test=False)
    assert res.stopped == "time" and res.steps < 50 * 10
    assert res.train_seconds < 10


def test_patience_stops_early(dirs, data, tmp_path):
    res = _run(tmp_path, "p", model=str(dirs["encoder"]), train_file=str(data["sent_train"]), epochs=6, lr=1e-9,
               patience=2, eval_every=3, warmup=0.0)
    assert res.stopped == "patience" and len(res.history) == 3 and res.best_epoch == 1


# ------------------------------------------------------------------------------ errors
def test_bad_settings_and_folders(dirs, data, tmp_path):
    with pytest.raises(ConfigError, match="out .* is the model folder itself"):
        finetune(FinetuneConfig(model=str(dirs["encoder"]), train_file=str(data["sent_train"]), out_dir=str(dirs["encoder"])))
    with pytest.raises(ConfigError, match="is not a fine-tuned model folder"):
        finetune(FinetuneConfig(model=str(dirs["encoder"]), train_file=str(data["sent_train"]), out_dir=str(dirs["decoder"])))
    with pytest.raises(ConfigError, match="neither a model folder nor a preset"):
        finetune(FinetuneConfig(model="no-such-model", train_file=str(data["sent_train"])))
    with pytest.raises(ConfigError, match="give a task .* or a training file"):
        finetune(FinetuneConfig(model="bert-tiny"))
    with pytest.raises(ConfigError, match="layer_lr_decay: expected a finite number in \\(0, 1\\]"):
        FinetuneConfig(model="x", task="imdb", layer_lr_decay=1.5).validate()
    with pytest.raises(ConfigError, match="task 'twitter-ner' is a tagging task, not classification"):
        finetune(FinetuneConfig(model="bert-tiny", from_scratch=True, task="twitter-ner", task_type="classification"))
    with pytest.raises(CheckpointError, match="no task.json"):
        evaluate(dirs["encoder"])


# ------------------------------------------------------------------------------ CLI
def test_cli_finetune_evaluate_predict(dirs, data, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["finetune", "--model", str(dirs["encoder"]), "--train", str(data["sent_train"]),
               "--validation", str(data["sent_val"]), "--test", str(data["sent_test"]), "--epochs", "2",
               "--lr", "2e-3", "--out", str(out), "--quiet", "--layer-lr-decay", "0.9", "--schedule", "slanted",
               "--no-energy", "--price-per-hour", "1.0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "validation accuracy: " in text and "test accuracy: " in text
    assert json.loads((out / "report.json").read_text())["price_per_hour"] == 1.0  # --price-per-hour reached the tracker
    rc = main(["evaluate", "--model", str(out), "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[0].startswith("accuracy: ") and len(lines[0].split(": ")[1]) == 6
    written = json.loads((out / "eval-sent_train-test.json").read_text())
    assert float(lines[0].split(": ")[1]) == pytest.approx(written["accuracy"], abs=1e-4)
    rc = main(["predict", "--model", str(out), "--text", "a wonderful lovely film", "--text", "dull and awful",
               "--out", str(tmp_path / "p.jsonl")])
    lines = capsys.readouterr().out.splitlines()
    lib = predict(out, ["a wonderful lovely film", "dull and awful"])
    assert rc == 0 and lines[:2] == [f"{p['prediction']}\t{p['probabilities'][p['prediction']]:.4f}" for p in lib]
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [p["prediction"] for p in lib]
    inp = tmp_path / "in.csv"
    inp.write_text("text\na wonderful lovely film\n", encoding="utf-8")
    assert main(["predict", "--model", str(out), "--input", str(inp)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == lines[0]


@pytest.mark.parametrize("content, name, pattern", [
    ("text,gold\nhi,pos\n", "nolabel.csv", r"nolabel\.csv:2: no label column 'label'"),
    ("text,label\nhi,pos\n,neg\n", "empty.csv", r"empty\.csv:3: empty text in column 'text'"),
    ("a\tB-PER\nb\n", "bad.conll", r"bad\.conll:2: expected 'token<TAB>tag'"),
])
def test_cli_bad_input_exits_2_with_one_line(dirs, tmp_path, capsys, content, name, pattern):
    import re

    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    rc = main(["finetune", "--model", str(dirs["encoder"]), "--train", str(f), "--out", str(tmp_path / "o"), "--quiet",
               "--no-energy"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert re.search(pattern, err), err


def test_cli_unseen_test_label_exits_2(dirs, tmp_path, capsys):
    tr = tmp_path / "train.csv"
    tr.write_text("text,label\ngood film,pos\nbad film,neg\ngreat,pos\n", encoding="utf-8")
    te = tmp_path / "test.csv"
    te.write_text("text,label\nok film,meh\n", encoding="utf-8")
    rc = main(["finetune", "--model", str(dirs["encoder"]), "--train", str(tr), "--test", str(te), "--out",
               str(tmp_path / "o"), "--quiet", "--no-energy"])
    err = capsys.readouterr().err
    assert rc == 2 and "test.csv:2: label 'meh' never appears in the training data" in err


def test_test_size_scores_a_fixed_subset(dirs, data, tmp_path, monkeypatch):
    import transferlab.finetune.loop as loop

    seen = []
    real = loop._score

    def spy(wiring, model, examples, *a, **kw):
        if a and a[-1] == "test" or kw.get("desc") == "test":
            seen.append([json.dumps(e, sort_keys=True) for e in examples])
        return real(wiring, model, examples, *a, **kw)

    monkeypatch.setattr(loop, "_score", spy)
    kw = dict(model=str(dirs["encoder"]), train_file=str(data["sent_train"]), validation_file=str(data["sent_val"]),
              test_file=str(data["sent_val"]), epochs=0.2, lr=1e-3, test_size=5)
    _run(tmp_path, "a", seed=0, **kw)
    _run(tmp_path, "b", seed=1, **kw)
    assert len(seen) == 2 and len(seen[0]) == 5 and seen[0] == seen[1]  # the same 5 for every seed


def test_two_text_inputs_come_from_the_pair_or_question_flag():
    """pair-classification and qa take their second text from --pair / --question (TaskType.second_input)."""
    from transferlab.finetune.task_types import PairClassification

    assert PairClassification.cli_inputs(["a", "b"], "p", None) == [{"text": "a", "pair": "p"},
                                                                   {"text": "b", "pair": "p"}]
    assert QA.cli_inputs(["ctx"], None, "who?") == [{"context": "ctx", "question": "who?"}]
    assert Classification.cli_inputs(["a"], "p", "q") == ["a"] and Classification.from_text("a", "w") == {"text": "a"}
    with pytest.raises(ConfigError, match=r"^predict: a pair-classification model needs --pair \(the second text\)$"):
        PairClassification.cli_inputs(["a"], None, "q")
    with pytest.raises(ConfigError, match=r"needs --question \(and --text as the context\)$"):
        QA.cli_inputs(["a"], "p", None)
    with pytest.raises(DataError, match=r"^w: a qa model needs a context and a question per input"):
        QA.from_text("a", "w")


def test_the_run_log_is_written_while_the_run_goes_on(dirs, data, tmp_path, monkeypatch):
    """Each evaluation's rows reach metrics.jsonl and TensorBoard as they are produced (beside the
    checkpoints until the final write), not only when the folder is saved."""
    import transferlab.finetune.loop as loop
    from transferlab.training.runlog import read_rows

    live = tmp_path / "live" / "checkpoints"
    seen: list[list[str]] = []
    real = loop._score

    def spy(wiring, model, examples, *a, **kw):  # at each evaluation: the rows of the earlier ones
        seen.append([r["split"] for r in read_rows(live / "metrics.jsonl")])
        assert any((live / "tensorboard").iterdir())
        return real(wiring, model, examples, *a, **kw)

    monkeypatch.setattr(loop, "_score", spy)
    res = _run(tmp_path, "live", model=str(dirs["encoder"]), train_file=str(data["sent_train"]),
               validation_file=str(data["sent_val"]), epochs=3, lr=1e-3, eval_on_test=False)
    assert seen == [[], ["train", "val"], ["train", "val"] * 2]
    assert [r["split"] for r in read_rows(res.out_dir / "metrics.jsonl")] == ["train", "val"] * 3
    assert not (res.out_dir / "checkpoints").exists()


def test_a_new_task_type_is_one_class_registered_in_place(dirs, data, tmp_path):
    """A task type registered here (its own file fields and metric) is read, trained, evaluated
    and predicted through the registry alone: no library file names it."""
    import csv

    from transferlab.finetune.task_types import TASK_TYPES, register_task_type
    from transferlab.finetune.tasks import read_examples

    class Topic(Classification):
        name = "toy-topic"
        primary_metric = "hits"
        default_columns = ("sentence", None, "topic")

        @classmethod
        def metrics(cls, predictions, references, labels):
            return {"hits": sum(p == r for p, r in zip(predictions, references)) / len(references)}

    register_task_type(Topic)
    try:
        with open(data["sent_train"], encoding="utf-8") as f:
            rows = [{"sentence": r["text"], "topic": r["label"]} for r in csv.DictReader(f)]
        train = tmp_path / "topics.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        ex, kind = read_examples(train, "toy-topic")
        assert kind == "toy-topic" and ex[0]["text"] == rows[0]["sentence"] and ex[0]["label"] == rows[0]["topic"]
        res = _run(tmp_path, "topic", model=str(dirs["encoder"]), train_file=str(train), task_type="toy-topic",
                   epochs=4, lr=2e-3)
        assert res.task_type == "toy-topic" and res.metric == "hits" and set(res.validation) == {"hits"}
        assert res.validation["hits"] >= 0.8
        assert set(evaluate(res.out_dir, test_file=str(train))) == {"hits"}
        assert predict(res.out_dir, [rows[0]["sentence"]])[0]["prediction"] in {"pos", "neg"}
    finally:
        TASK_TYPES.pop("toy-topic", None)
    with pytest.raises(ConfigError, match="task_type: 'toy-topic' is not one of: classification"):
        FinetuneConfig(model=str(dirs["encoder"]), train_file=str(train), task_type="toy-topic").validate()
