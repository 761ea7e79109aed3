"""Pre-training objectives: collator speed and training-step tokens/s against ``transformers``.

1. Collators, batch 32 x 128: our MLM collator (vectorised numpy, dynamic masking, 80/10/10) vs
   ``transformers.DataCollatorForLanguageModeling`` on the same windows and vocabulary; our
   T5 span corruption and BART denoising collators are timed too (no transformers counterpart).
2. One training step (forward + backward + AdamW), batch 32 x 128, vocab 8192, bf16 autocast:
   * MLM: transferlab bert-mini (4 layers / 256) with the ``mlm`` objective (sparse prediction:
     only the ~15% picked positions reach the vocabulary projection) vs ``BertForMaskedLM`` of
     the same shape with ``labels`` (dense logits, -100 ignored), and our model with a dense
     loss (what sparse prediction alone buys);
   * CLM: transferlab gpt-mini with the ``clm`` objective vs ``GPT2LMHeadModel`` with labels.

One process, ours and theirs interleaved, ``--repeats`` timed runs each after warm-up; prints
medians and the ratio ours / transformers (> 1: we are faster).

    .venv/bin/python benchmarks/objectives_throughput.py [--repeats 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

B, T, V = 32, 128, 8192


def specials():
    from transferlab.objectives import TokenizerIds

    return TokenizerIds(V, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4,
                      bos_token_id=5, eos_token_id=6, sentinel_token_ids=tuple(range(V - 1, V - 101, -1)))


def hf_tokenizer():
    """A transformers fast tokenizer with the same special ids (for its collator)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "<s>": 5, "</s>": 6}
    vocab.update({f"w{i}": i for i in range(7, V)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_collators(repeats: int) -> None:
    from transformers import DataCollatorForLanguageModeling

    from transferlab.objectives import build_objective

    rng = np.random.default_rng(0)
    windows = [rng.integers(7, V - 100, T - 2) for _ in range(B)]
    ours = build_objective("mlm", specials())
    theirs = DataCollatorForLanguageModeling(hf_tokenizer(), mlm_probability=0.15, return_tensors="pt")
    hf_examples = [{"input_ids": [2] + w.tolist() + [3]} for w in windows]
    g = np.random.default_rng(1)
    for _ in range(3):
        ours.collate(windows, g), theirs(hf_examples)
    a, b = [], []
    for _ in range(repeats):  # interleaved, 20 batches per timing
        a += timed(lambda: [ours.collate(windows, g) for _ in range(20)], 1)
        b += timed(lambda: [theirs(hf_examples) for _ in range(20)], 1)
    ta, tb = statistics.median(a) / 20, statistics.median(b) / 20
    print(f"collate mlm      ours {ta * 1e3:7.2f} ms/batch  transformers {tb * 1e3:7.2f} ms/batch  "
          f"ratio {tb / ta:5.2f}x  ({B * T / ta / 1e6:.1f}M tokens/s ours)")
    for name, kw, ex in (
        ("span-corruption", {}, [rng.integers(7, V - 100, 141) for _ in range(B)]),
        ("denoise", {"noise": "infill,permute"}, [{"tokens": rng.integers(7, V - 100, T - 2),
                                                    "sentence_starts": np.arange(0, T - 2, 20)} for _ in range(B)]),
    ):
        ob = build_objective(name, specials(), **kw)
        t = statistics.median(timed(lambda: [ob.collate(ex, g) for _ in range(20)], repeats)) / 20
        print(f"collate {name:16s} ours {t * 1e3:7.2f} ms/batch  ({B * T / t / 1e6:.1f}M tokens/s)")


def train_step_fn(module, batch, loss_fn, opt):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(module, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_training(repeats: int) -> None:
    import transformers as Tr

    from transferlab.models import build_model
    from transferlab.objectives import build_objective

    rng = np.random.default_rng(0)
    for kind in ("mlm", "clm"):
        torch.manual_seed(0)
        if kind == "mlm":
            ours_model = build_model("bert-mini", vocab_size=V)
            c = ours_model.config
            hf_model = Tr.BertForMaskedLM(Tr.BertConfig(
                vocab_size=V, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                intermediate_size=c.d_ff, max_position_embeddings=c.max_positions, attn_implementation="sdpa"))
            ob = build_objective("mlm", specials())
            batch = ob.collate([rng.integers(7, V - 100, T - 2) for _ in range(B)], rng)
            hf_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        else:
            ours_model = build_model("gpt-mini", vocab_size=V)
            c = ours_model.config
            hf_model = Tr.GPT2LMHeadModel(Tr.GPT2Config(
                vocab_size=V, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff,
                n_positions=c.max_positions, activation_function="gelu_new", attn_implementation="sdpa"))
            ob = build_objective("clm", specials())
            batch = ob.collate([rng.integers(7, V - 100, T) for _ in range(B)], rng)
            hf_batch = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
        ours = ob.wrap_model(ours_model).train()
        hf_model.train()
        n = batch["n_targets"]
        s_ours = train_step_fn(ours, batch, lambda m, b: ob.loss(m, b).loss_sum / n,
                               torch.optim.AdamW(ours.parameters(), lr=1e-4))
        s_hf = train_step_fn(hf_model, hf_batch, lambda m, b: m(**b).loss,
                             torch.optim.AdamW(hf_model.parameters(), lr=1e-4))
        steps = {"ours": s_ours, "hf": s_hf}
        if kind == "mlm":  # our model with a dense loss: isolates what sparse prediction buys
            dense = ob.unwrap_model(ours)
            steps["ours_dense"] = train_step_fn(dense, hf_batch, lambda m, b: m(**b).loss,
                                                torch.optim.AdamW(dense.parameters(), lr=1e-4))
        for _ in range(2):
            for f in steps.values():
                f()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(repeats):
            for k, f in steps.items():
                times[k] += timed(f, 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        ref = "BertForMaskedLM" if kind == "mlm" else "GPT2LMHeadModel"
        line = (f"train {kind} bf16  ours {B * T / med['ours']:8,.0f} tok/s  {ref} {B * T / med['hf']:8,.0f} tok/s  "
                f"ratio {med['hf'] / med['ours']:5.2f}x")
        if "ours_dense" in med:
            line += f"  (ours with a dense loss {B * T / med['ours_dense']:,.0f} tok/s: sparse gains {med['ours_dense'] / med['ours']:.2f}x)"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-training", action="store_true", help="collators only (seconds)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {B} x {T}, vocab {V}")
    bench_collators(args.repeats)
    if not args.skip_training:
        bench_training(args.repeats)


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
