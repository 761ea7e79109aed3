"""Does what transferlab exports work in the tools people already use? A user-level check.

For every row of :data:`TARGETS` (one model per family and head) this script does what a user
does, with nothing but public entry points and *default arguments* on the transformers side:

1. train a tokenizer and build a model with transferlab, save the folder (``save_pretrained``
   + ``Tokenizer.save``, label names from the task), and export it with
   ``transferlab convert --to-hf``;
2. load the export with ``transformers``' ``AutoTokenizer`` and ``AutoModelFor*`` and compare
   outputs with transferlab's on the same texts, each side tokenising with its own tokenizer:
   probabilities / logits / hidden states within 1e-5, QA answers and greedy generations
   identical, label names present;
3. run the matching ``pipeline(...)`` on a 2,000-token input with ``truncation=True`` (it must
   not crash), and for plain encoders ``SentenceTransformer(export)`` against transferlab's
   mean-pooled features.

It prints one table row per target. Adding a target (lane hf adds architectures) is one
:class:`Target` row; the ``check`` column picks how outputs are compared.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/interop_check.py [--size tiny|small] [--only NAME ...]

transformers 5 has no ``question-answering`` or ``text2text-generation`` pipeline: QA is
checked through ``AutoModelForQuestionAnswering`` (answers by the usual start/end argmax) and
seq2seq through ``AutoModelForSeq2SeqLM.generate``, both with the 2,000-token input truncated by
the exported tokenizer. Where transformers 5.25 spells ``truncation=True`` otherwise it is spelled
so: ``fill-mask`` takes ``tokenizer_kwargs={"truncation": True}`` (``truncation=True`` is a
TypeError), ``token-classification`` truncates to ``model_max_length`` by itself (and takes no
``truncation``). ``text-generation`` runs with default arguments; on a learned-position decoder
(GPT-2) that is an IndexError, as for transformers' own ``GPT2LMHeadModel``, and the cell says so
and shows the run with ``handle_long_generation="hole"``; a rotary (Llama) export needs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOL = 1e-5
LONG_TOKENS = 2000

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "alice met bob in paris last summer while visiting the museum",
    "transfer learning means pre-training first and then fine-tuning on a task",
    "the movie was wonderful and the actors were great",
    "the food was cold and the service was terrible",
    "john smith works for the united nations in new york",
    "what is the capital of france? paris is the capital of france.",
    "tokenizers split text into sub-word units; rare words become pieces",
] * 6


@dataclass(frozen=True)
class Target:
    """One exported model: how to build it, which transformers class reads it, how to compare.

    Attributes:
        name: the row's label.
        preset: our preset (``bert-tiny``, ``gpt-mini``, ``bart-mini``, ``t5-mini``).
        heads: our heads (``{}`` = backbone only).
        tokenizer: ``wordpiece``, ``bpe`` or ``unigram``.
        auto: the transformers Auto class that must load the export.
        check: how outputs are compared: ``mlm``, ``cls``, ``pair``, ``tag``, ``qa``, ``features``,
            ``causal``, ``seq2seq``.
        pipeline: the transformers pipeline task run on the long input, or None.
        labels: class names / BIO tags of classification and tagging heads.
        overrides: more model config fields.
        st: also load with sentence-transformers and compare with mean-pooled features.
    """

    name: str
    preset: str
    heads: dict[str, Any]
    tokenizer: str
    auto: str
    check: str
    pipeline: str | None = None
    labels: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    st: bool = False


TARGETS: list[Target] = [
    Target("encoder / MLM", "bert-tiny", {"lm": {}}, "wordpiece", "AutoModelForMaskedLM", "mlm", "fill-mask"),
    Target("encoder / features", "bert-tiny", {}, "wordpiece", "AutoModel", "features", "feature-extraction", st=True),
    Target("encoder / classification", "bert-tiny", {"classification": {"num_labels": 2}}, "wordpiece",
           "AutoModelForSequenceClassification", "cls", "text-classification", ("negative", "positive")),
    Target("encoder / pairs", "bert-tiny", {"classification": {"num_labels": 3}}, "wordpiece",
           "AutoModelForSequenceClassification", "pair", "text-classification",
           ("entailment", "neutral", "contradiction")),
    Target("encoder / tagging", "bert-tiny", {"token_classification": {"num_labels": 5}}, "wordpiece",
           "AutoModelForTokenClassification", "tag", "token-classification", ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")),
    Target("encoder / QA", "bert-tiny", {"span": {}}, "wordpiece", "AutoModelForQuestionAnswering", "qa"),
    Target("decoder / causal LM", "gpt-mini", {"lm": {}}, "bpe", "AutoModelForCausalLM", "causal", "text-generation"),
    Target("decoder / causal LM (Llama)", "gpt-mini", {"lm": {}}, "bpe", "AutoModelForCausalLM", "causal",
           "text-generation", overrides=dict(position="rotary", norm="rmsnorm", norm_eps=1e-6, activation="swiglu",
                                             bias=False, tie_embeddings=False)),
    Target("decoder / classification", "gpt-mini", {"classification": {"num_labels": 2}}, "bpe",
           "AutoModelForSequenceClassification", "cls", "text-classification", ("negative", "positive")),
    Target("decoder / tagging", "gpt-mini", {"token_classification": {"num_labels": 3}}, "bpe",
           "AutoModelForTokenClassification", "tag", "token-classification", ("O", "B-ORG", "I-ORG")),
    Target("enc-dec / seq2seq (BART)", "bart-mini", {"lm": {}}, "bpe", "AutoModelForSeq2SeqLM", "seq2seq"),
    Target("enc-dec / seq2seq (T5)", "t5-mini", {"lm": {}}, "unigram", "AutoModelForSeq2SeqLM", "seq2seq",
           overrides={"d_head": 8}),
]

SIZES = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=4, d_ff=48, max_positions=64),
    "small": dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_positions=128),
}


# ------------------------------------------------------------------------------ building
def build(target: Target, work: Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path, Any, Any]:
    """Train the tokenizer, build + perturb the model, save our folder and export it with the CLI.

    Returns:
        ``(our_dir, hf_dir, model, tokenizer)``.
    """
    import transferlab
    from transferlab.cli import main as cli
    from transferlab.tokenizer import Tokenizer

    tok = Tokenizer.train(CORPUS, kind=target.tokenizer, vocab_size=160 if target.tokenizer != "unigram" else 120,
                          min_frequency=1, n_sentinels=4)
    specials = _special_ids(target, tok)
    torch.manual_seed(seed)
    model = transferlab.build_model(target.preset, vocab_size=len(tok), dropout=0.0, attention_dropout=0.0,
                                    heads=target.heads, **SIZES[size], **specials, **target.overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random init leaves biases at 0 and norms at 1: make every tensor matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if target.check in ("causal", "seq2seq") else 0.05))
    ours = work / "ours"
    # label names as `transferlab finetune` writes them (spelled out: the script also runs on
    # older checkouts, to show what changed)
    names = {"id2label": {str(i): x for i, x in enumerate(target.labels)},
             "label2id": {x: i for i, x in enumerate(target.labels)}} if target.labels else {}
    model.save_pretrained(ours, extra_config=names)
    if target.labels:  # and task.json, as a fine-tuned folder has
        (ours / "task.json").write_text(json.dumps({"labels": list(target.labels)}))
    tok.save(ours)
    hf_dir = work / "hf"
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # the CLI's one-line summary
        rc = cli(["convert", "--to-hf", str(ours), "--out", str(hf_dir)])
    if rc != 0:
        raise RuntimeError(f"convert --to-hf failed with exit status {rc}")
    return ours, hf_dir, transferlab.from_pretrained(ours), Tokenizer.from_pretrained(ours)


def _special_ids(target: Target, tok: Any) -> dict[str, int]:
    if target.tokenizer == "wordpiece":
        return {"pad_token_id": tok.pad_token_id}
    if target.tokenizer == "bpe":
        ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
        if target.check == "seq2seq":
            ids["decoder_start_token_id"] = tok.eos_token_id
        return ids
    return {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
            "decoder_start_token_id": tok.pad_token_id}


class _quiet:
    """Silence transformers' and our loggers and warnings inside the block (the table is the output)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars
        self.level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: Any) -> None:
        self.w.__exit__(*exc)
        logging.disable(self.level)


# ------------------------------------------------------------------------------ checking
def long_text(tok: Any) -> str:
    """A text of at least LONG_TOKENS tokens for ``tok``."""
    text = " ".join(CORPUS)
    while len(tok.encode(text)) < LONG_TOKENS:
        text = text + " " + text
    return text


def _ours(model: Any, enc: dict[str, torch.Tensor]) -> Any:
    with torch.no_grad():
        return model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids",
                                                              "decoder_input_ids", "decoder_attention_mask")})


def check(target: Target, work: Path, size: str = "tiny") -> dict[str, Any]:
    """Run one target end to end; returns its table row (``ok`` says whether everything held)."""
    import transformers as T

    t0 = time.perf_counter()
    ours_dir, hf_dir, model, tok = build(target, work, size)
    with _quiet():
        hf_tok = T.AutoTokenizer.from_pretrained(str(hf_dir))
        hf = getattr(T, target.auto).from_pretrained(str(hf_dir)).eval()
    row: dict[str, Any] = {"target": target.name, "hf class": type(hf).__name__,
                           "tokenizer": type(hf_tok).__name__, "labels": "-", "pipeline": "-", "st": "-"}
    try:
        diff, same = _compare(target, model, tok, hf, hf_tok)
    except Exception as e:  # report in the table, do not stop it
        diff, same = float("nan"), False
        row["same ids"] = f"FAILED: {type(e).__name__}: {str(e)[:60]}"
    row["max |diff|"] = diff
    row.setdefault("same ids", same)
    ok = same and diff <= TOL

    if target.labels:
        names = list(hf.config.id2label.values())
        row["labels"] = "ok" if names == list(target.labels) else f"{names}"
        ok = ok and names == list(target.labels)
    long = long_text(tok)
    try:
        row["pipeline"] = _long_input(target, hf, hf_tok, long)
    except Exception as e:  # the point of the check: report, do not stop the table
        row["pipeline"], ok = f"FAILED: {type(e).__name__}: {str(e)[:80]}", False
    if target.st:
        try:
            d = _sentence_transformers(hf_dir, model, tok)
            row["st"] = f"{d:.1e}"
            ok = ok and d <= TOL
        except Exception as e:
            row["st"], ok = f"FAILED: {type(e).__name__}: {str(e)[:80]}", False
    row["ok"] = ok
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _compare(target: Target, model: Any, tok: Any, hf: Any, hf_tok: Any) -> tuple[float, bool]:
    """``(max |diff|, same)`` of transferlab and transformers outputs on the same texts, each side
    tokenising with its own tokenizer (``same``: equal input tensors, QA answers, greedy ids)."""
    texts = CORPUS[:4]
    diff, same = float("nan"), True
    c = target.check
    # (small byte-level vocabularies make long sequences): cut at the model's positions, ours
    # explicitly, theirs by the exported model_max_length
    cut = {"truncation": True, "max_length": model.config.max_positions}
    if c in ("cls", "pair", "tag", "mlm", "features"):
        pairs = CORPUS[4:8] if c == "pair" else None
        mine = tok(texts, pairs, padding=True, return_tensors="pt", **cut)
        theirs = hf_tok(texts, pairs, padding=True, return_tensors="pt", truncation=True)
        same = _same_inputs(mine, theirs)  # AutoTokenizer feeds what we feed
        with torch.no_grad():
            a = hf(**theirs)
        b = _ours(model, dict(mine))
        if c in ("cls", "pair"):
            diff = (a.logits.softmax(-1) - b.logits.softmax(-1)).abs().max().item()
        elif c == "features":
            m = theirs["attention_mask"].bool()
            diff = (a.last_hidden_state[m] - b.last_hidden_state[m]).abs().max().item()
        else:
            m = theirs["attention_mask"].bool()
            diff = (a.logits[m] - b.logits[m]).abs().max().item()
    elif c == "qa":
        q = ["where did alice meet bob?", "what is the capital of france?"]
        ctx = [CORPUS[1], CORPUS[6]]
        mine = tok(q, ctx, padding=True, return_tensors="pt", **cut)
        theirs = hf_tok(q, ctx, padding=True, return_tensors="pt", truncation=True)
        same = _same_inputs(mine, theirs)
        with torch.no_grad():
            a = hf(**theirs)
        b = _ours(model, dict(mine)).logits  # (B, T, 2): start, end
        diff = max((a.start_logits - b[..., 0]).abs().max().item(), (a.end_logits - b[..., 1]).abs().max().item())
        same = same and _answers(a.start_logits, a.end_logits, theirs, hf_tok) == _answers(b[..., 0], b[..., 1], mine, tok)
    else:  # causal, seq2seq: logits on a batch, then greedy ids
        mine = tok(texts[:2], padding=True, return_tensors="pt", **cut)
        theirs = hf_tok(texts[:2], padding=True, return_tensors="pt", truncation=True)
        same = _same_inputs(mine, theirs)
        kw: dict[str, torch.Tensor] = {}
        if c == "seq2seq":
            dec = theirs["input_ids"][:, :5].clone()
            dec[:, 0] = model.config.decoder_start_token_id
            kw = {"decoder_input_ids": dec}
        with torch.no_grad():
            a = hf(**theirs, **kw).logits
        b = _ours(model, {**dict(mine), **kw}).logits
        v = theirs["attention_mask"].bool() if c == "causal" else torch.ones(a.shape[:2], dtype=torch.bool)
        diff = (a[v] - b[v]).abs().max().item()
        prompt = hf_tok(texts[:1], return_tensors="pt")
        with _quiet(), torch.no_grad():
            want = hf.generate(**prompt, max_new_tokens=8)
        got = model.generate(prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=8)
        same = same and torch.equal(want, got)
    return diff, same


def _same_inputs(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    """The same tensors under the same names (a dropped ``token_type_ids`` counts as different)."""
    return set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def _answers(start: torch.Tensor, end: torch.Tensor, enc: dict[str, torch.Tensor], tok: Any) -> list[str]:
    """The best span inside the context (segment B, type id 1) by start + end score, as text."""
    out = []
    for i in range(start.shape[0]):
        ids = enc["input_ids"][i]
        first_sep = int((ids == tok.sep_token_id).nonzero()[0])  # the context follows the question's [SEP]
        ctx = (torch.arange(len(ids)) > first_sep) & enc["attention_mask"][i].bool() & (ids != tok.sep_token_id)
        s = start[i].masked_fill(~ctx, -1e9)
        e = end[i].masked_fill(~ctx, -1e9)
        scores = s[:, None] + e[None, :]
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).tril(-1), -1e9)  # end >= start
        k = int(scores.argmax())
        a, b = divmod(k, scores.shape[1])
        out.append(tok.decode(enc["input_ids"][i, a:b + 1].tolist()))
    return out


def _long_input(target: Target, hf: Any, hf_tok: Any, long: str) -> str:
    """Run the target's pipeline (or its Auto class) on a 2,000-token input, truncation=True."""
    import transformers as T

    n = hf_tok.model_max_length
    if target.pipeline is None:  # QA and seq2seq: transformers 5 has no pipeline for them
        if target.check == "qa":
            enc = hf_tok("what is this?", long, truncation=True, return_tensors="pt")
            with torch.no_grad():
                hf(**enc)
        else:
            enc = hf_tok(long, truncation=True, return_tensors="pt")
            with _quiet(), torch.no_grad():
                hf.generate(**enc, max_new_tokens=4)
        return f"Auto ok ({enc['input_ids'].shape[1]} tok)"
    with _quiet():
        pipe = T.pipeline(target.pipeline, model=hf, tokenizer=hf_tok)
        if target.pipeline == "text-classification":
            inp = {"text": long, "text_pair": long} if target.check == "pair" else long
            out = pipe(inp, truncation=True)
            label = out[0]["label"] if isinstance(out, list) else out["label"]
            if label not in target.labels:
                raise AssertionError(f"pipeline label {label!r} is not a task label")
            return f"ok: {label}"
        if target.pipeline == "token-classification":
            pipe = T.pipeline(target.pipeline, model=hf, tokenizer=hf_tok, aggregation_strategy="simple")
            ents = pipe(long)
            groups = {e["entity_group"] for e in ents}
            bare = {t.split("-", 1)[-1] for t in target.labels if t != "O"}
            if not groups <= bare:
                raise AssertionError(f"entity groups {sorted(groups)} are not grouped B-/I- tags {sorted(bare)}")
            return f"ok: {len(ents)} entities {sorted(groups)}"
        if target.pipeline == "fill-mask":
            out = pipe(long.replace(" the ", f" {hf_tok.mask_token} ", 1), tokenizer_kwargs={"truncation": True})
            return f"ok: top {out[0]['token_str']!r}" if isinstance(out[0], dict) else "ok"
        if target.pipeline == "feature-extraction":
            out = np.asarray(pipe(long, truncation=True))
            return f"ok: {tuple(out.shape)}"
        if target.pipeline == "text-generation":
            try:  # default arguments: the prompt is cut to model_max_length, then generation continues
                out = pipe(long, truncation=True, max_new_tokens=4)
                return f"ok: +{len(out[0]['generated_text']) - len(long)} chars"
            except IndexError:
                # a learned position table (GPT-2): the cut prompt fills every position and the next
                # token has none; transformers' own GPT2LMHeadModel fails the same way. Its
                # answer is "hole", which cuts the prompt to leave room for the new tokens
                out = pipe(long, truncation=True, max_new_tokens=4, handle_long_generation="hole")
                return f"ok with hole: +{len(out[0]['generated_text']) - len(long)} chars (default: IndexError)"
    raise ValueError(f"no long-input check for pipeline {target.pipeline!r}")


def _sentence_transformers(hf_dir: Path, model: Any, tok: Any) -> float:
    """max |diff| between SentenceTransformer(export).encode and our mean-pooled last layer."""
    from sentence_transformers import SentenceTransformer

    from transferlab.finetune.features import extract_features

    with _quiet():
        st = SentenceTransformer(str(hf_dir), device="cpu")
    texts = CORPUS[:5]
    theirs = st.encode(texts, convert_to_numpy=True)
    mine = extract_features(model, tok, texts, "-1", "mean", max_length=st.max_seq_length).values
    return float(np.abs(theirs - mine).max())


# ------------------------------------------------------------------------------ table
COLUMNS = ("target", "hf class", "tokenizer", "max |diff|", "same ids", "labels", "pipeline", "st", "ok")


def run(targets: list[Target] | None = None, size: str = "tiny", work: Path | None = None) -> list[dict[str, Any]]:
    """Check every target (each in its own sub-folder of ``work``, a temp folder by default)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="interop-") as tmp:
        base = Path(work) if work else Path(tmp)
        for i, t in enumerate(targets or TARGETS):
            d = base / f"{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            rows.append(check(t, d, size))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of the rows."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.1e}"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return str(v).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--only", nargs="*", metavar="NAME", help="targets whose name contains NAME")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    targets = [t for t in TARGETS if not args.only or any(s in t.name for s in args.only)]
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, size {args.size}, "
          f"tolerance {TOL:g}, long input {LONG_TOKENS} tokens")
    rows = run(targets, args.size)
    print(table(rows))
    bad = [r["target"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} targets pass" + (f"; failing: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
