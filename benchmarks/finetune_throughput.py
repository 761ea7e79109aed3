"""Fine-tuning step throughput: transferlab vs ``transformers`` on the same MiniLM weights.

all-MiniLM-L6-v2 (6 layers, d_model 384, 12 heads, vocab 30,522) with a fresh 2-way classifier,
batch 16 IMDb reviews tokenised to at most 256 tokens (dynamic padding: the batch is padded to its
longest review), forward + backward + AdamW step, bf16 autocast (fp32 master weights) and fp32.
Ours runs through the real fine-tuning wiring (``finetune.task_types.Classification.loss``); transformers runs
``BertForSequenceClassification`` (eager and sdpa attention). One process, the variants
interleaved, ``--repeats`` timed rounds of ``--steps`` steps each after a warm-up; prints median
tokens/s (non-padding tokens) and the ratio ours / transformers.

    .venv/bin/python benchmarks/finetune_throughput.py [--repeats 5] [--steps 4] [--threads 2] [--dtypes bf16,fp32]
        [--attention-dropout 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp32")
    ap.add_argument("--attention-dropout", type=float, default=0.1,
                    help="dropout on attention probabilities for both (MiniLM's own is 0.1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers as T

    from transferlab.data.builtin import load_task, minilm_dir
    from transferlab.finetune.config import TaskSpec
    from transferlab.finetune.task_types import build_wiring
    from transferlab.models.model import from_pretrained
    from transferlab.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained("builtin:minilm")
    texts = [e["text"] for e in load_task("imdb").train[: args.batch_size * args.steps]]
    labels = [i % 2 for i in range(len(texts))]

    # ours: the fine-tuning wiring on our MiniLM
    ours = from_pretrained("builtin:minilm")
    from transferlab.finetune.loop import _set_dropout

    _set_dropout(ours, None, args.attention_dropout)
    spec = TaskSpec("classification", labels=["negative", "positive"], max_length=args.max_length)
    w = build_wiring(spec, tok, ours.config)
    torch.manual_seed(0)
    w.setup_model(ours, fresh=True)
    feats = w.encode([{"text": t, "label": spec.labels[y]} for t, y in zip(texts, labels)], train=True)
    ours_batches = [w.collate(feats[i : i + args.batch_size]) for i in range(0, len(feats), args.batch_size)]
    n_tokens = sum(int(b["attention_mask"].sum()) for b in ours_batches)

    # transformers: the same checkpoint, same inputs (token ids are identical: same vocabulary and template)
    hf_models = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        hf_models[impl] = T.BertForSequenceClassification.from_pretrained(
            str(minilm_dir()), num_labels=2, attn_implementation=impl,
            attention_probs_dropout_prob=args.attention_dropout)
    hf_batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                   "token_type_ids": b["token_type_ids"], "labels": b["labels"]} for b in ours_batches]

    variants = {}
    for dtype in args.dtypes.split(","):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
        for impl in ("sdpa", "math"):
            variants[f"ours {impl} {dtype}"] = _runner(ours, lambda m, b: w.loss(m, b), ours_batches, ctx, impl)
        for impl, m in hf_models.items():
            variants[f"transformers {impl} {dtype}"] = _runner(m, lambda m, b: m(**b).loss, hf_batches, ctx, None)

    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():  # interleaved
            times[k].append(fn())
    print(f"MiniLM fine-tuning step, batch {args.batch_size} x <= {args.max_length} tokens (IMDb, dynamic padding), "
          f"attention dropout {args.attention_dropout}, {args.threads} threads, median of {args.repeats} x "
          f"{args.steps} steps")
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    for dtype in args.dtypes.split(","):
        best_hf = max(tps[f"transformers {i} {dtype}"] for i in ("eager", "sdpa"))
        for k in variants:
            if k.endswith(dtype):
                print(f"  {k:<26} {tps[k]:>9,.0f} tokens/s   ratio vs best transformers {tps[k] / best_hf:.2f}x")


def _runner(model, loss_fn, batches, ctx, impl):
    from transferlab.models.blocks import Attention

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def run() -> float:
        if impl is not None:
            for m in model.modules():
                if isinstance(m, Attention):
                    m.impl = impl
        model.train()
        t = time.perf_counter()
        for b in batches:
            with ctx():
                loss = loss_fn(model, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return run


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
