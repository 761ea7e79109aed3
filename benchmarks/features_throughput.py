"""Frozen feature extraction throughput: ``transferlab.features`` vs ``transformers``.

all-MiniLM-L6-v2 (6 layers, d_model 384) on Rotten Tomatoes snippets (<= 128 tokens): every
layer's hidden states, mean-pooled over real tokens, the work ``features --layer all`` and
``features probe`` do. Ours is :func:`transferlab.features.extract_features` end to end
(tokenisation, length-sorted batches, pooling, copy to NumPy); transformers is
``BertModel(output_hidden_states=True)`` on the same length-sorted, padded batches with the same
masked mean, tokenisation excluded (so the comparison favours transformers slightly). fp32 and
bf16 autocast, our sdpa and math attention, transformers eager and sdpa; one process, the
variants interleaved, median of ``--repeats`` rounds; prints texts/s and ours / best
transformers. It also checks that both give the same vectors (fp32).

    .venv/bin/python benchmarks/features_throughput.py [--texts 256] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers as T

    from transferlab.data.builtin import load_task, minilm_dir
    from transferlab.finetune.features import extract_features, load_model_and_tokenizer
    from transferlab.models.blocks import Attention

    ours, tok = load_model_and_tokenizer("builtin:minilm")
    texts = [e["text"] for e in load_task("rotten-tomatoes").train[: args.texts]]
    enc = tok(texts, truncation=True, max_length=args.max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    batches = []
    for s in range(0, len(order), args.batch_size):
        idx = order[s : s + args.batch_size]
        T_ = max(len(enc["input_ids"][i]) for i in idx)
        ids = torch.zeros(len(idx), T_, dtype=torch.long)
        mask = torch.zeros(len(idx), T_, dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(enc["input_ids"][i])
            ids[r, :n] = torch.tensor(enc["input_ids"][i])
            mask[r, :n] = 1
        batches.append((ids, mask))
    n_tokens = sum(int(m.sum()) for _, m in batches)
    hf = {impl: T.BertModel.from_pretrained(str(minilm_dir()), attn_implementation=impl, add_pooling_layer=False).eval()
          for impl in ("eager", "sdpa")}

    def ours_run(impl: str, dtype: str):
        def run() -> float:
            for m in ours.modules():
                if isinstance(m, Attention):
                    m.impl = impl
            t = time.perf_counter()
            extract_features(ours, tok, texts, "all", "mean", batch_size=args.batch_size,
                             max_length=args.max_length, dtype=dtype)
            return time.perf_counter() - t
        return run

    def hf_run(model, dtype: str):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

        def run() -> float:
            t = time.perf_counter()
            with torch.inference_mode(), ctx():
                for ids, mask in batches:
                    hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                    h = torch.stack(hs).float()  # (L+1, B, T, C)
                    m = mask.to(h.dtype)[None, :, :, None]
                    ((h * m).sum(2) / m.sum(2)).transpose(0, 1).numpy()
            return time.perf_counter() - t
        return run

    # same vectors (fp32, input order restored for transformers)
    a = extract_features(ours, tok, texts[:64], "all", "mean", max_length=args.max_length).values
    with torch.inference_mode():
        e = tok(texts[:64], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        hs = torch.stack(hf["eager"](input_ids=e["input_ids"], attention_mask=e["attention_mask"],
                                     token_type_ids=e["token_type_ids"], output_hidden_states=True).hidden_states)
        m = e["attention_mask"][None, :, :, None].float()
        b = ((hs * m).sum(2) / m.sum(2)).transpose(0, 1).numpy()
    diff = float(np.abs(a - b).max())

    variants = {}
    for dtype in ("fp32", "bf16"):
        for impl in ("sdpa", "math"):
            variants[f"ours {impl} {dtype}"] = ours_run(impl, dtype)
        for impl, model in hf.items():
            variants[f"transformers {impl} {dtype}"] = hf_run(model, dtype)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():  # interleaved
            times[k].append(fn())
    print(f"MiniLM frozen features, all 7 hidden states mean-pooled, {len(texts)} Rotten Tomatoes snippets "
          f"({n_tokens} tokens, batch {args.batch_size}, <= {args.max_length} tokens), {args.threads} threads, "
          f"median of {args.repeats}; max |ours - transformers| (fp32) = {diff:.2e}")
    tps = {k: len(texts) / statistics.median(v) for k, v in times.items()}
    for dtype in ("fp32", "bf16"):
        best = max(tps[f"transformers {i} {dtype}"] for i in ("eager", "sdpa"))
        for k in variants:
            if k.endswith(dtype):
                print(f"  {k:<26} {tps[k]:>8,.1f} texts/s   ratio vs best transformers {tps[k] / best:.2f}x")


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
