"""Pre-training throughput: our trainer step vs ``transformers`` at identical sizes.

bert-mini MLM vs ``BertForMaskedLM``, gpt-mini CLM vs ``GPT2LMHeadModel``, bart-mini denoising vs
``BartForConditionalGeneration``: 4 layers (BART 2+2) x 256 hidden x 4 heads x 1024 MLP, vocab
8192, batch 32 x 128, bf16 autocast, fused AdamW (transformers' Trainer default) + gradient clipping at
1.0 on both sides.

* ours: :meth:`Trainer.train_step` of the real loop with the pre-training defaults of
  ``transferlab pretrain`` (``PRETRAIN_MODEL_DEFAULTS_CPU``: plain-matmul attention, no dropout;
  the fused chunked LM-head loss) — it *includes* collating a fresh batch from the dataset each
  step (masking/noise); ``+compile`` is the same with ``train.compile=true`` (the whole model +
  loss compiled; its warm-up, recompiles included, is printed);
* transformers: a pre-collated batch (the same tensors our collator made), ``model(**batch).loss``,
  in two settings: its defaults (dropout 0.1, SDPA attention) and tuned like ours (no dropout,
  eager attention, the faster one at length 128 on CPUs).

Both run in one process, so both get the allocator setting the trainer applies on CPUs
(:func:`transferlab.training.loop.tune_cpu_allocator`, no per-step page faults); ``--no-malloc-tuning``
runs everything on glibc's defaults instead (run it separately to see what the setting gives).

Tokens are counted the same way on both sides: input tokens processed (encoder + decoder inputs
for BART). Timing: interleaved rounds (every variant runs ``--steps`` steps in turn), median
tokens/s over ``--repeats`` rounds. The machine is shared: a round during which other processes
used more than ``--max-foreign`` cores (from ``/proc/stat``) is discarded and re-run (up to 3x
``--repeats`` rounds). After each model a line gives its matmul ceiling: the step's matmul FLOPs
(:func:`transferlab.cost.estimate_flops`) at this CPU's measured bf16 matmul peak, i.e. the
speed of a step that did nothing but matmuls, and that ceiling over HF tuned: the largest ratio
any implementation of the same computation could reach here.

    .venv/bin/python benchmarks/train_throughput.py [--repeats 5] [--steps 2] [--models mlm,clm,denoise]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

B, T, V = 32, 128, 8192
MODELS = {"mlm": ("bert-mini", "mlm", "BertForMaskedLM"), "clm": ("gpt-mini", "clm", "GPT2LMHeadModel"),
          "denoise": ("bart-mini", "denoise", "BartForConditionalGeneration")}


def specials():
    from transferlab.objectives import TokenizerIds

    # BERT-style and BART-style ids in one vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK] <s> </s>
    return TokenizerIds(V, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4,
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
    tc = TrainConfig(batch_size=B, seq_len=T, max_steps=10**9, dtype=DTYPE, compile=compile, progress=False,
                     tensorboard=False, log_every=0, eval_every=0, save_every=0, num_threads=threads)
    return Trainer(model, ob, ob.dataset(data, T), tc, tempfile.mkdtemp(prefix="tl-bench-")), ob


#: the autocast dtype of both sides (set from --dtype in main)
DTYPE = "bf16"


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
    # fused AdamW: transformers' own Trainer default (``adamw_torch_fused`` with torch >= 2.8), and
    # what our trainer uses on CPUs too
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=DTYPE == "bf16"):
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


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError):  # not Linux: no filtering
        busy = 0.0
    t = os.times()
    return busy, t.user + t.system


def measure(fns: dict, steps: int, repeats: int, max_foreign: float) -> tuple[dict[str, float], int, int]:
    """Interleaved rounds: each round times ``steps`` calls of every fn in turn. A round during
    which other processes used more than ``max_foreign`` cores is dropped. Median tokens/s.

    Returns:
        ({name: median tokens/s}, rounds kept, rounds dropped).
    """
    for fn, _ in fns.values():  # warm-up (first-call allocations, oneDNN kernel selection)
        fn(), fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    dropped = 0
    while len(rates[next(iter(fns))]) < repeats and dropped < 2 * repeats:
        busy0, own0 = _cpu_seconds()
        w0 = time.perf_counter()
        cur = {}
        for name, (fn, tok_of) in fns.items():
            t0 = time.perf_counter()
            n = sum(tok_of(fn()) for _ in range(steps))
            cur[name] = n / (time.perf_counter() - t0)
        busy1, own1 = _cpu_seconds()
        if (busy1 - busy0 - (own1 - own0)) / (time.perf_counter() - w0) > max_foreign:
            dropped += 1
            continue
        for k, v in cur.items():
            rates[k].append(v)
    if not rates[next(iter(fns))]:  # never quiet: report the disturbed rounds rather than nothing
        return measure(fns, steps, repeats, float("inf"))[0], 0, dropped
    return {k: statistics.median(v) for k, v in rates.items()}, len(rates[next(iter(fns))]), dropped


def step_flops(trainer, batch: dict) -> float:
    """Analytic matmul FLOPs of our training step on ``batch`` (sparse MLM: masked rows only)."""
    from transferlab.cost import estimate_flops

    cfg = trainer.final_model().config
    seq = batch["input_ids"].shape[1]
    dec = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else None
    pred = float(batch["n_targets"]) / batch["input_ids"].shape[0] if "decoder_input_ids" not in batch and \
        bool((batch["labels"] == -100).any()) else None
    return batch["input_ids"].shape[0] * estimate_flops(cfg, seq, "train", decoder_len=dec, n_predicted=pred)


def bf16_matmul_peak(threads: int) -> float:
    """FLOP/s of a 1024^3 matmul in the run's dtype here now, the peak the ceiling lines use: the measurement
    behind the trainer's MFU (:func:`transferlab.cost.device_peak_flops`), taken fresh rather than
    from its cache, so it reflects this run's machine state."""
    from transferlab.cost import _benchmark_matmul

    torch.set_num_threads(threads)
    return _benchmark_matmul(torch.device("cpu"), DTYPE, 1024, 1.0)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="rounds kept per model (median)")
    p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="mlm,clm,denoise", help="comma-separated subset of mlm,clm,denoise")
    p.add_argument("--max-foreign", type=float, default=0.15,
                   help="drop a round when other processes used more than this many cores during it")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-ablation", action="store_true", help="skip the 'ours, plain loss' rows")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="autocast dtype of both sides; auto: bf16 where the CPU has it natively "
                        "(avx512_bf16 / AMX), else fp32 (emulated bf16 runs ~40x slower than fp32)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default allocator settings (what the trainer changes on CPUs)")
    args = p.parse_args()
    global DTYPE
    from transferlab.runtime import cpu_has_native_bf16

    DTYPE = args.dtype if args.dtype != "auto" else ("bf16" if cpu_has_native_bf16() else "fp32")
    if args.no_malloc_tuning:
        os.environ["TRANSFERLAB_MALLOC_TUNING"] = "0"
    torch.set_num_threads(args.threads)
    import transformers

    import transferlab.objectives.fused_ce as fused_ce
    from transferlab.training.loop import tune_cpu_allocator

    tuned = tune_cpu_allocator()
    peak = bf16_matmul_peak(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"batch {B} x {T}, vocab {V}, {DTYPE}; median of {args.repeats} interleaved rounds x "
          f"{args.steps} steps; allocator tuned: {tuned}; {DTYPE} matmul peak here {peak / 1e9:.0f} GFLOP/s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    data = shards()
    print(f"{'model':<20}{'ours':>8}{'+compile':>10}{'HF default':>12}{'HF tuned':>10}"
          f"{'ours/default':>14}{'ours/tuned':>12}{'compiled/default':>18}{'compiled/tuned':>16}", flush=True)
    ablation: dict[str, tuple[float, float]] = {}
    for kind in args.models.split(","):
        preset, objective, ref = MODELS[kind]
        trainer, ob = ours(preset, objective, data, threads=args.threads)
        batch = ob.collate([trainer.train_data[i] for i in range(B)], np.random.default_rng(0))
        hb = hf_batch(kind, batch)
        torch.manual_seed(0)
        fns = {"ours": (trainer.train_step, lambda rec: rec["step_tokens"])}
        if not args.no_compile:
            compiled, _ = ours(preset, objective, data, compile=True, threads=args.threads)
            t0 = time.perf_counter()
            # denoising batches change shape: dynamo recompiles once or twice (then the lengths are
            # dynamic); run those warm-up steps here, not in the timed rounds
            for _ in range(4 if objective == "denoise" else 1):
                compiled.train_step()
            print(f"  ({preset}: torch.compile warm-up {time.perf_counter() - t0:.0f}s)", flush=True)
            fns["compiled"] = (compiled.train_step, lambda rec: rec["step_tokens"])
        fns["hf_default"] = (hf_step(hf_model(kind, tuned=False), hb), lambda _: n_tokens(batch))
        fns["hf_tuned"] = (hf_step(hf_model(kind, tuned=True), hb), lambda _: n_tokens(batch))
        if not args.no_ablation and objective != "mlm":
            plain, _ = ours(preset, objective, data, threads=args.threads)

            def plain_step(tr=plain) -> dict:
                fused_ce.ENABLED = False
                try:
                    return tr.train_step()
                finally:
                    fused_ce.ENABLED = True

            fns["plain_loss"] = (plain_step, lambda rec: rec["step_tokens"])
        r, kept, dropped = measure(fns, args.steps, args.repeats, args.max_foreign)
        c = r.get("compiled", float("nan"))
        print(f"{preset + ' ' + objective:<20}{r['ours']:>8,.0f}{c:>10,.0f}{r['hf_default']:>12,.0f}"
              f"{r['hf_tuned']:>10,.0f}{r['ours'] / r['hf_default']:>13.2f}x{r['ours'] / r['hf_tuned']:>11.2f}x"
              f"{c / r['hf_default']:>17.2f}x{c / r['hf_tuned']:>15.2f}x   vs {ref}", flush=True)
        ceiling = n_tokens(batch) / (step_flops(trainer, batch) / peak)
        print(f"  ({kept} rounds kept, {dropped} dropped as disturbed; matmul ceiling "
              f"{step_flops(trainer, batch) / 1e9:.0f} GFLOP/step -> {ceiling:,.0f} tok/s = "
              f"{ceiling / r['hf_tuned']:.2f}x HF tuned)", flush=True)
        if "plain_loss" in r:
            ablation[preset + " " + objective] = (r["ours"], r["plain_loss"])
        del trainer, fns
    if ablation:
        print("\nablation: ours eager with the plain LM-head loss (F.cross_entropy on materialised logits)")
        for name, (fused, plain) in ablation.items():
            print(f"  {name:<18} fused {fused:>8,.0f} tok/s   plain {plain:>8,.0f} tok/s   fused/plain {fused / plain:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    sys.exit(main())
