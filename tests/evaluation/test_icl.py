"""In-context evaluation: prompt format, continuation scoring against the forward pass, left
truncation, seeded nested demonstrations, a model that learned a task scores near 100% while an
untrained one does not, and the ``transferlab icl`` CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from tiny import tiny_model
from transferlab.cli import main as cli
from transferlab.errors import ConfigError, DataError
from transferlab.evaluation.icl import (
    TEMPLATES, Template, build_prompt, clean_text, evaluate_icl, score_continuations, trained_context,
)
from transferlab.models import build_model

GOOD = ["great", "superb", "lovely", "fine", "brilliant", "charming"]
BAD = ["awful", "dull", "boring", "weak", "terrible", "clumsy"]
NOUNS = ["film", "story", "cast", "plot", "score", "ending"]


@dataclass
class _Task:
    """The shape of transferlab.data.builtin.TaskSplits, synthetic and tiny."""

    name: str
    labels: list[str]
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    task_type: str = "classification"
    source: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[dict]:
        return getattr(self, split)


def _examples(n: int, seed: int, vary: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pos = bool(rng.integers(2))
        adj = rng.choice(GOOD if pos else BAD)
        very = "very " * int(rng.integers(3)) if vary else ""  # texts of different lengths
        out.append({"text": f"the {rng.choice(NOUNS)} was {very}{adj}", "label": "positive" if pos else "negative"})
    return out


@pytest.fixture(scope="module")
def task() -> _Task:
    return _Task("toy-sentiment", ["negative", "positive"], _examples(300, 0), _examples(40, 1), _examples(60, 2))


@pytest.fixture(scope="module")
def tok(task):
    from transferlab.tokenizer import Tokenizer

    tpl = TEMPLATES["imdb"]
    texts = [build_prompt(tpl, task.labels, [(e["text"], e["label"])], "x") for e in task.train]
    return Tokenizer.train(texts * 3, kind="bpe", vocab_size=400, min_frequency=1)


def _tiny(tok, seed=0, **kw):
    """A 2-layer gpt-mini over ``tok`` (tiny.tiny_model, 4 heads), no dropout, in eval mode."""
    fields = dict(vocab_size=len(tok), n_layers=2, n_heads=4, max_positions=256, dropout=0.0, attention_dropout=0.0,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tiny_model("gpt-mini", seed, **{**fields, **kw}).eval()


@pytest.fixture(scope="module")
def trained(task, tok):
    """A tiny decoder trained (a few seconds) on 1-shot prompts of the task, in the ICL format."""
    tpl = TEMPLATES["imdb"]
    rng = np.random.default_rng(0)
    docs = []
    for i, ex in enumerate(task.train):
        demo = task.train[int(rng.integers(len(task.train)))]
        docs.append(tok.encode(build_prompt(tpl, task.labels, [(demo["text"], demo["label"])], ex["text"])
                               + " " + ex["label"]))
    m = _tiny(tok, seed=1)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    L = max(len(d) for d in docs)
    ids = torch.full((len(docs), L), tok.pad_token_id)
    labels = torch.full((len(docs), L), -100)
    mask = torch.zeros(len(docs), L, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d)
        labels[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d)] = 1
    g = torch.Generator().manual_seed(0)
    # 400 steps: over model and batch-order seeds 1-10 both accuracies were 1.0 on all 10; after 160
    # steps 4 of 10 were still at chance (0.45-0.58 against the test's 0.9)
    for _ in range(400):
        b = torch.randint(0, len(docs), (32,), generator=g)
        loss = m(input_ids=ids[b], attention_mask=mask[b], labels=labels[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


# ---------------------------------------------------------------------------------- prompts
def test_prompt_format_is_description_demos_query():
    p = build_prompt(TEMPLATES["imdb"], ["negative", "positive"], [("a fine film", "positive"), ("dull", "negative")],
                     "so so")
    assert p == ("Each movie review below is labelled with its sentiment: negative or positive.\n\n"
                 "Review: a fine film\nSentiment: positive\n\n"
                 "Review: dull\nSentiment: negative\n\n"
                 "Review: so so\nSentiment:")
    three = build_prompt(Template("Topics: {labels}.", "T: ", "L:"), ["a", "b", "c"], [], "q")
    assert three == "Topics: a, b or c.\n\nT: q\nL:"


def test_clean_text_removes_html_breaks_and_clips():
    assert clean_text("Great.<br /><br />Really\ngreat!  ") == "Great. Really great!"
    assert clean_text("one two three four", max_words=2) == "one two"


# ---------------------------------------------------------------------------------- scoring
def test_scores_are_sums_of_continuation_log_probs(tok):
    m = _tiny(tok, seed=2)
    ctx = [tok.encode("Review: the film was great\nSentiment:"), tok.encode("Review: dull\nSentiment:")]
    cont = [tok.encode(" positive"), tok.encode(" negative")]
    scores, trunc = score_continuations(m, ctx, cont, max_length=256, batch_size=1)
    assert not trunc.any()
    for c, k, s in zip(ctx, cont, scores):
        ids = torch.tensor([c + k])
        with torch.no_grad():
            lp = m(input_ids=ids).logits.log_softmax(-1)[0]
        want = sum(float(lp[len(c) + j - 1, t]) for j, t in enumerate(k))
        assert s == pytest.approx(want, abs=1e-4)
    # batching (padding) does not change the scores
    batched, _ = score_continuations(m, ctx, cont, max_length=256, batch_size=8)
    assert np.allclose(batched, scores, atol=1e-5)


def test_long_contexts_lose_their_oldest_tokens(tok):
    m = _tiny(tok, seed=3)
    ctx = tok.encode("Review: the story was lovely and the cast was fine\nSentiment:")
    cont = tok.encode(" positive")
    n = 10
    scores, trunc = score_continuations(m, [ctx], [cont], max_length=n)
    assert trunc.all()
    want, t2 = score_continuations(m, [ctx[-(n - len(cont)):]], [cont], max_length=n)
    assert not t2.any() and scores[0] == pytest.approx(want[0], abs=1e-6)
    with pytest.raises(ConfigError, match="continuation 0 has"):
        score_continuations(m, [ctx], [cont], max_length=len(cont))


# ---------------------------------------------------------------------------------- evaluation
def test_a_model_that_learned_the_task_beats_majority_and_an_untrained_one(task, tok, trained):
    tpl = TEMPLATES["imdb"]  # the format it was trained in (1-shot prompts)
    res = evaluate_icl(trained, tok, task, shots=(0, 1), n_test=60, seed=0, template=tpl)
    acc = {r["shots"]: r["accuracy"] for r in res.rows}
    majority = res.rows[0]["majority_rate"]
    assert acc[1] >= 0.9 and acc[0] >= 0.9
    assert majority < 0.7
    untrained = evaluate_icl(_tiny(tok, seed=4), tok, task, shots=(1,), n_test=60, seed=0, template=tpl)
    assert untrained.rows[0]["accuracy"] < 0.75


def test_results_are_seeded_and_report_the_majority_rate(tok):
    task = _Task("varied", ["negative", "positive"], _examples(100, 3, True), [], _examples(40, 4, True))
    m = _tiny(tok, seed=5)
    a = evaluate_icl(m, tok, task, shots=(0, 2), n_test=25, seed=7)
    b = evaluate_icl(m, tok, task, shots=(2, 0), n_test=25, seed=7)
    assert a.to_dict() == b.to_dict()
    c = evaluate_icl(m, tok, task, shots=(0, 2), n_test=25, seed=8)
    assert c.rows[1]["mean_prompt_tokens"] != a.rows[1]["mean_prompt_tokens"]
    row = a.rows[0]
    rng = np.random.default_rng(7)
    picked = [task.test[i] for i in rng.permutation(len(task.test))[:25]]
    n_pos_train = sum(e["label"] == "positive" for e in task.train)
    majority = "positive" if n_pos_train > len(task.train) / 2 else "negative"
    assert row["majority_class"] == majority
    assert row["majority_rate"] == pytest.approx(np.mean([e["label"] == majority for e in picked]))
    assert row["n"] == 25 and sum(row["predicted"].values()) == pytest.approx(1.0)
    assert "shots" in a.table() and "majority" in a.table()


def test_truncation_is_reported_when_prompts_do_not_fit(task, tok):
    m = _tiny(tok, seed=6)
    res = evaluate_icl(m, tok, task, shots=(0, 8), n_test=10, seed=0, max_length=48)
    assert res.rows[0]["truncated"] == 0.0
    assert res.rows[1]["truncated"] == 1.0 and res.rows[1]["mean_prompt_tokens"] > 48


def test_bad_requests_raise(task, tok):
    m = _tiny(tok)
    with pytest.raises(ConfigError, match="needs a decoder"):
        evaluate_icl(build_model("bart-mini", vocab_size=len(tok), d_model=32, n_layers=1, n_heads=4, d_ff=64), tok, task)
    with pytest.raises(ConfigError, match="shots must be integers >= 0"):
        evaluate_icl(m, tok, task, shots=(-1,))
    with pytest.raises(ConfigError, match="max_length must be in"):
        evaluate_icl(m, tok, task, max_length=10_000)
    with pytest.raises(DataError, match="400 shots need"):
        evaluate_icl(m, tok, task, shots=(400,))
    seq = _Task("pairs", [], task.train, task.validation, task.test, task_type="seq2seq")
    with pytest.raises(ConfigError, match="needs a classification task"):
        evaluate_icl(m, tok, seq)


def test_trained_context_reads_the_run_config(tmp_path):
    (tmp_path / "model").mkdir()
    assert trained_context(tmp_path / "model") is None
    (tmp_path / "config.json").write_text(json.dumps({"model": {}, "train": {"seq_len": 96}}))
    assert trained_context(tmp_path / "model") == 96


# ---------------------------------------------------------------------------------- CLI
def test_cli_icl_on_builtin_imdb_prints_table_and_writes_json(tok, tmp_path, capsys):
    run = tmp_path / "run"
    m = _tiny(tok, seed=7)
    m.save_pretrained(run / "model")
    tok.save(run / "model")
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {"seq_len": 64}}))
    out = tmp_path / "icl.json"
    rc = cli(["icl", "--model", str(run / "model"), "--task", "imdb", "--shots", "0,1", "--n-test", "4",
              "--max-text-words", "8", "--output", str(out), "--no-progress"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "pre-training window of 64 tokens" in cap.err
    assert "in-context imdb" in cap.out and "majority" in cap.out
    data = json.loads(out.read_text())
    assert [r["shots"] for r in data["results"]] == [0, 1]
    assert data["settings"]["max_length"] == 64 and data["results"][0]["n"] == 4
    assert cli(["icl", "--model", str(run / "model"), "--shots", "0,x"]) == 2
    assert "--shots: expected comma-separated integers" in capsys.readouterr().err
    assert cli(["icl", "--model", str(run / "model"), "--task", "bbc-headlines", "--n-test", "2"]) == 2
    assert "needs a classification task" in capsys.readouterr().err
