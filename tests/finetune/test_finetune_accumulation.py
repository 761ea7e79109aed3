"""Gradient accumulation is the large batch for the fine-tuning task types that
tests/finetune/test_finetune_scale.py does not cover (classification, tagging and seq2seq are
there): pair classification, regression and extractive QA, 4 x 8 == 32 within 1e-6 in fp32."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tiny import FT_COLORS, FT_NAMES, FT_WORDS
from tiny import finetune_cfg as _cfg
from transferlab.finetune import finetune


@pytest.fixture(scope="module")
def env(finetune_env, tmp_path_factory) -> dict[str, Path]:
    """finetune_env's models plus 72-example pair, regression and QA files in its vocabulary."""
    root = tmp_path_factory.mktemp("accum-tasks")
    rng = random.Random(7)

    def jsonl(name: str, rows: list[dict]) -> Path:
        p = root / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return p

    pairs, reg, qa = [], [], []
    for _ in range(72):
        a = rng.choice(FT_COLORS)
        b = a if rng.random() < 0.5 else rng.choice([c for c in FT_COLORS if c != a])
        pairs.append({"first": f"the {a} film", "second": f"a {b} movie", "label": "same" if a == b else "diff"})
        k = rng.randint(0, 3)
        w = ["good"] * k + rng.sample(FT_COLORS, rng.randint(1, 4))  # lengths differ: ragged micro-batches
        rng.shuffle(w)
        reg.append({"text": " ".join(w), "label": 1.0 + 0.5 * k})
        n, c = rng.choice(FT_NAMES), rng.choice(FT_COLORS)
        pre = " ".join(rng.choices(FT_WORDS, k=rng.randint(1, 6)))
        ctx = f"{pre} {n} is {c} and " + " ".join(rng.choices(FT_WORDS, k=rng.randint(1, 6)))
        qa.append({"context": ctx, "question": f"what is {n} ?", "answer": c, "answer_start": ctx.index(f" {c} ") + 1})
    return {**finetune_env, "pairs": jsonl("pairs.jsonl", pairs), "reg": jsonl("reg.jsonl", reg),
            "qa": jsonl("qa.jsonl", qa)}


@pytest.mark.parametrize("case", ["pair-classification", "regression", "qa"])
def test_grad_accumulation_4x8_equals_one_batch_of_32(env, tmp_path, case):
    kw = {"pair-classification": dict(train_file=str(env["pairs"]), text_column="first", pair_column="second"),
          "regression": dict(train_file=str(env["reg"]), pooling="mean"),
          "qa": dict(train_file=str(env["qa"]), max_length=24, doc_stride=8)}[case]
    kw["validation_file"] = None
    big = finetune(_cfg(env, batch_size=32, out_dir=str(tmp_path / "big"), **kw))
    acc = finetune(_cfg(env, batch_size=8, grad_accum=4, out_dir=str(tmp_path / "acc"), **kw))
    assert big.task_type == acc.task_type == case
    assert big.steps == acc.steps >= 2
    lb, la = [r["train_loss"] for r in big.history], [r["train_loss"] for r in acc.history]
    assert len(lb) == big.steps and max(abs(a - b) for a, b in zip(la, lb)) < 1e-6, (la, lb)
    wa = load_file(str(tmp_path / "acc" / "model.safetensors"))
    wb = load_file(str(tmp_path / "big" / "model.safetensors"))
    # Adam divides by sqrt(v): last-bit differences of summing in another order grow for near-zero gradients.
    # QA's span bias is all rounding noise: a softmax over positions does not change when one bias is added
    # to every position's logit, so its exact gradient is 0 and Adam turns the noise into ~lr / 10 steps
    flat = {"heads.span.qa_outputs.bias"} if case == "qa" else set()
    bad = {k: float((wa[k] - wb[k]).abs().max()) for k in wa if k not in flat}
    assert max(bad.values()) < 1e-5, {k: v for k, v in bad.items() if v >= 1e-5}
