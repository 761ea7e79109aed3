"""Peak memory and step time with and without activation checkpointing, and with LoRA.

Two workloads, each variant in a fresh process (so one variant's peak cannot hide another's):

* MiniLM fine-tuning (``builtin:minilm``, all-MiniLM-L6-v2: 6 layers, d_model 384) with a fresh
  2-way classifier through the real wiring (``finetune.task_types.Classification.loss_sum``): full fine-tuning,
  + activation checkpointing, LoRA r=8 on every block projection, LoRA + checkpointing;
* bert-small MLM pre-training (preset, 4 layers, d_model 512) through the real objective:
  without and with activation checkpointing.

Per variant: median step time (forward + backward + AdamW) over ``--steps`` timed steps after one
warm-up; *peak RSS growth* during those steps (Linux ``VmHWM`` reset through
``/proc/self/clear_refs`` after set-up, minus the RSS before the first step: activations,
gradients and optimizer state, with glibc's default malloc, i.e. without the trainer's allocator
tuning); and *saved for backward*: the bytes autograd keeps between forward and backward in one
step, summed over the distinct tensors passed to ``torch.autograd.graph.saved_tensors_hooks``
(exact and machine-independent; under checkpointing only each block's input is kept, the
recomputed activations live during one block's backward only). On a GPU (``--device cuda``) the
peak is ``torch.cuda.max_memory_allocated`` instead.

    .venv/bin/python benchmarks/memory_throughput.py [--batch-size 16] [--seq-len 128] [--steps 3] [--threads 2]
        [--variants 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["TRANSFERLAB_MALLOC_TUNING"] = "0"

VARIANTS = [
    ("minilm-finetune", "full", {}),
    ("minilm-finetune", "full + activation ckpt", {"gc": True}),
    ("minilm-finetune", "LoRA r=8", {"lora": 8}),
    ("minilm-finetune", "LoRA r=8 + activation ckpt", {"lora": 8, "gc": True}),
    ("bert-small-pretrain", "full", {}),
    ("bert-small-pretrain", "full + activation ckpt", {"gc": True}),
]


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(workload: str, opts: dict, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from transferlab.models.blocks import set_gradient_checkpointing
    from transferlab.training.optim import build_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    B, T = args.batch_size, args.seq_len
    if workload == "minilm-finetune":
        from transferlab.finetune.config import TaskSpec
        from transferlab.finetune.task_types import build_wiring
        from transferlab.models.model import from_pretrained
        from transferlab.tokenizer import Tokenizer

        model = from_pretrained("builtin:minilm")
        tok = Tokenizer.from_pretrained("builtin:minilm")
        wiring = build_wiring(TaskSpec("classification", labels=["neg", "pos"], max_length=T), tok, model.config)
        wiring.setup_model(model, fresh=True)
        trainable = None
        if opts.get("lora"):
            from transferlab.finetune.lora import LoRAConfig, apply_lora

            trainable = apply_lora(model, LoRAConfig(r=opts["lora"]))["trainable"]
        ids = torch.randint(1000, tok.vocab_size, (B, T))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (B,))}

        def loss_fn():
            return wiring.loss_sum(model, batch) / B
    else:
        from transferlab.config import get_preset
        from transferlab.models import build_model
        from transferlab.objectives import TokenizerIds, build_objective

        cfg = get_preset("bert-small")
        sp = TokenizerIds(cfg.vocab_size, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
                        mask_token_id=4)
        objective = build_objective("mlm", sp)
        model = build_model(cfg)
        objective.check_model(model.config)
        trainable = None
        windows = np.random.default_rng(0).integers(10, cfg.vocab_size, (B, T - 2))
        batch = objective.collate(list(windows), np.random.default_rng(0))

        def loss_fn():
            return objective.loss(model, batch).loss_sum / batch["n_targets"]

    model.to(dev).train()
    if opts.get("gc"):
        set_gradient_checkpointing(model, True)
    batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    opt = build_optimizer(model, 1e-4)
    trainable = trainable or sum(p.numel() for p in model.parameters() if p.requires_grad)

    saved: dict[int, int] = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    def step(measure_saved: bool = False) -> float:
        t0 = time.perf_counter()
        if measure_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = loss_fn()
        else:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()  # warm-up: optimizer state exists from here on, as in a running job
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS")
    times = [step() for _ in range(args.steps)]
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status("VmHWM")) - base
    step(measure_saved=True)
    return {"step_s": statistics.median(times), "peak_growth_mb": peak / 2**20,
            "saved_mb": sum(saved.values()) / 2**20, "trainable": trainable,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="", help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        workload, _, opts = VARIANTS[args.worker]
        print(json.dumps(_worker(workload, opts, args)))
        return
    print(f"batch {args.batch_size} x {args.seq_len} tokens, fp32, {args.threads} threads, device {args.device}, "
          f"median of {args.steps} steps")
    print("| workload | variant | trainable params | step (s) | peak memory growth (MB) | saved for backward (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    only = {int(x) for x in args.variants.split(",") if x.strip()}
    for i, (workload, name, _) in enumerate(VARIANTS):
        if only and i not in only:
            continue
        cmd = [sys.executable, __file__, "--worker", str(i), "--batch-size", str(args.batch_size), "--seq-len",
               str(args.seq_len), "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {workload} | {name} | {r['trainable']:,} of {r['params']:,} | {r['step_s']:.3f} | "
              f"{r['peak_growth_mb']:.0f} | {r['saved_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    from _machine import machine_line

    if "--worker" not in sys.argv:  # workers report to the parent on stdout
        print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
