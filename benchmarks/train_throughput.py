"""Pre-training throughput: our trainer step vs ``transformers`` at identical sizes.

bert-mini MLM vs ``BertForMaskedLM``, gpt-mini CLM vs ``GPT2LMHeadModel``, bart-mini denoising vs
``BartForConditionalGeneration``: 4 layers (BART 2+2) x 256 hidden x 4 heads x 1024 MLP, vocab
8192, batch 32 x 128, bf16 autocast, AdamW + gradient clipping at 1.0 on both sides.

* ours: :meth:`Trainer.train_step` of the real loop with the pre-training defaults of
  ``transferlab pretrain`` (``PRETRAIN_MODEL_DEFAULTS_CPU``: plain-matmul attention, no dropout)
  — it *includes* collating a fresh batch from the dataset each step (masking/noise);
* transformers: a pre-collated batch (the same tensors our collator made), ``model(**batch).loss``,
  in two settings: its defaults (dropout 0.1, SDPA attention) and tuned like ours (no dropout,
  eager attention, the faster one at length 128 on CPUs).

Tokens are counted the same way on both sides: input tokens processed (encoder + decoder inputs
for BART). One process, interleaved, medians of ``--repeats`` timings of ``--steps`` steps.
The ``+compile`` column is ours with ``train.compile=true`` (each block compiled; not for BART
denoising, whose batches change shape every step). A small ablation on bert-mini shows what our
other defaults buy (math vs SDPA attention, no dropout).

    .venv/bin/python benchmarks/train_throughput.py [--repeats 4] [--steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

B, T, V = 32, 128, 8192


def specials():
    from transferlab.objectives import SpecialIds

    # BERT-style and BART-style ids in one vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK] <s> </s>
    return SpecialIds(V, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4,
                      bos_token_id=5, eos_token_id=6)


def shards(n_docs: int = 2000, seed: int = 0) -> SimpleNamespace:
    """Synthetic prepared data: documents of 8-30 sentences of 8-40 ordinary tokens."""
    r = np.random.default_rng(seed)
    lens = r.integers(8, 41, size=n_docs * 30)
    per_doc = r.integers(8, 31, size=n_docs)
    sent_offsets = np.concatenate([[0], np.cumsum(lens[: per_doc.sum()])])
    doc_offsets = sent_offsets[np.concatenate([[0], np.cumsum(per_doc)])]
    tokens = r.integers(7, V, size=int(sent_offsets[-1]))
    return SimpleNamespace(tokens=tokens, doc_offsets=doc_offsets.astype(np.int64),
                           sent_offsets=sent_offsets.astype(np.int64))


def ours(preset: str, objective: str, data, overrides: list[str] | None = None, compile: bool = False,
         threads: int = 2):
    """Our trainer (pre-training defaults + overrides), ready to call ``train_step``."""
    from transferlab.models.model import TransferModel
    from transferlab.objectives import build_objective
    from transferlab.training.config import TrainConfig
    from transferlab.training.loop import Trainer
    from transferlab.training.pretrain import fit_config_to_tokenizer, pretrain_model_config

    sp = specials()
    ob = build_objective(objective, sp)
    cfg = pretrain_model_config(preset, overrides, device="cpu", heads=ob.heads)
    fit_config_to_tokenizer(cfg, sp, ob)
    torch.manual_seed(0)
    model = TransferModel(cfg)
    tc = TrainConfig(batch_size=B, seq_len=T, max_steps=10**9, dtype="bf16", compile=compile, progress=False,
                     tensorboard=False, log_every=0, eval_every=0, save_every=0, num_threads=threads)
    return Trainer(model, ob, ob.dataset(data, T), tc, tempfile.mkdtemp(prefix="tl-bench-")), ob


def hf_model(kind: str, tuned: bool):
    import transformers as Tr

    drop = 0.0 if tuned else 0.1
    attn = "eager" if tuned else "sdpa"
    if kind == "mlm":
        return Tr.BertForMaskedLM(Tr.BertConfig(
            vocab_size=V, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=512, hidden_dropout_prob=drop, attention_probs_dropout_prob=drop,
            attn_implementation=attn))
    if kind == "clm":
        return Tr.GPT2LMHeadModel(Tr.GPT2Config(
            vocab_size=V, n_embd=256, n_layer=4, n_head=4, n_inner=1024, n_positions=1024,
            activation_function="gelu_new", resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop,
            attn_implementation=attn))
    return Tr.BartForConditionalGeneration(Tr.BartConfig(
        vocab_size=V, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=1024,
        dropout=drop, attention_dropout=drop, activation_dropout=0.0, pad_token_id=0, bos_token_id=5,
        eos_token_id=6, decoder_start_token_id=6, forced_eos_token_id=None, attn_implementation=attn))


def hf_step(model, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    model.train()

    def step() -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return 0

    return step


def hf_batch(kind: str, batch: dict) -> dict:
    if kind == "mlm":
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    if kind == "clm":
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    return {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "labels")}


def n_tokens(batch: dict) -> int:
    n = batch["input_ids"].numel()
    return n + (batch["decoder_input_ids"].numel() if "decoder_input_ids" in batch else 0)


def measure(fns: dict, steps: int, repeats: int) -> dict[str, float]:
    """Interleaved: each repeat times ``steps`` calls of every fn in turn. Median tokens/s."""
    for fn, _ in fns.values():  # warm-up (first-call allocations, oneDNN kernel selection)
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    toks: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, (fn, tok_of) in fns.items():
            t0 = time.perf_counter()
            n = sum(tok_of(fn()) for _ in range(steps))
            times[name].append(time.perf_counter() - t0)
            toks[name].append(n)
    return {k: statistics.median(n / t for n, t in zip(toks[k], times[k])) for k in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="steps per timing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ablation", action="store_true", help="skip the attention/dropout ablation")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"batch {B} x {T}, vocab {V}, bf16 autocast; median of {args.repeats} x {args.steps} steps, interleaved")
    data = shards()
    print(f"{'model':<22}{'ours':>9}{'+compile':>10}{'HF default':>12}{'HF tuned':>10}"
          f"{'ours/default':>14}{'ours/tuned':>12}{'compiled/default':>18}{'compiled/tuned':>16}")
    for preset, objective, kind, ref in (("bert-mini", "mlm", "mlm", "BertForMaskedLM"),
                                          ("gpt-mini", "clm", "clm", "GPT2LMHeadModel"),
                                          ("bart-mini", "denoise", "denoise", "BartForConditionalGeneration")):
        trainer, ob = ours(preset, objective, data, threads=args.threads)
        batch = ob.collate([trainer.train_data[i] for i in range(B)], np.random.default_rng(0))
        hb = hf_batch(kind, batch)
        torch.manual_seed(0)
        fns = {"ours": (trainer.train_step, lambda rec: rec["step_tokens"])}
        # compile only where shapes are static: denoising batches change length every step and
        # recompile (minutes on 2 cores), see BENCHMARKS.md
        if objective != "denoise" and not args.no_compile:
            compiled, _ = ours(preset, objective, data, compile=True, threads=args.threads)
            t0 = time.perf_counter()
            compiled.train_step()
            print(f"  ({preset}: compiling the blocks took {time.perf_counter() - t0:.0f}s)", flush=True)
            fns["compiled"] = (compiled.train_step, lambda rec: rec["step_tokens"])
        fns["hf_default"] = (hf_step(hf_model(kind, tuned=False), hb), lambda _: n_tokens(batch))
        fns["hf_tuned"] = (hf_step(hf_model(kind, tuned=True), hb), lambda _: n_tokens(batch))
        r = measure(fns, args.steps, args.repeats)
        c = r.get("compiled", float("nan"))
        print(f"{preset + ' ' + objective:<22}{r['ours']:>9,.0f}{c:>10,.0f}{r['hf_default']:>12,.0f}"
              f"{r['hf_tuned']:>10,.0f}{r['ours'] / r['hf_default']:>13.2f}x{r['ours'] / r['hf_tuned']:>11.2f}x"
              f"{c / r['hf_default']:>17.2f}x{c / r['hf_tuned']:>15.2f}x   vs {ref}", flush=True)
        del trainer, fns

    if args.no_ablation:
        return
    print("\nablation, bert-mini MLM, ours (tokens/s; ratio to the pre-training defaults)")
    variants = {
        "defaults (math attention, no dropout)": [],
        "SDPA attention": ["model.attn_impl=sdpa"],
        "dropout 0.1": ["model.dropout=0.1", "model.attention_dropout=0.1"],
    }
    fns = {name: (ours("bert-mini", "mlm", data, ov, threads=args.threads)[0].train_step,
                  lambda rec: rec["step_tokens"]) for name, ov in variants.items()}
    r = measure(fns, args.steps, args.repeats)
    base = r["defaults (math attention, no dropout)"]
    for name, v in r.items():
        print(f"  {name:<40}{v:>9,.0f} tok/s  {v / base:5.2f}x")


if __name__ == "__main__":
    main()
