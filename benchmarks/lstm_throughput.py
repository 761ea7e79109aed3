"""LSTM LM training throughput: our AWD-LSTM step vs a plain ``torch.nn.LSTM`` LM of the same size.

Both models: token table (V, E) -> three LSTM layers ``E -> H -> H -> E`` -> the tied output
matrix with a bias; fused AdamW, gradient clipping at 1.0, batch ``B x T`` windows.

* ours: ``transferlab``'s ``awd-lstm`` (``--preset``, default awd-lstm-mini: E 256, H 768) through
  the ``clm`` objective (its collator on fresh windows every step, the fused chunked LM-head loss)
  with every AWD regulariser on at the fastai defaults: embedding dropout 0.1, locked dropout
  0.6 / 0.2 / 0.1, DropConnect 0.5 on each hidden-to-hidden matrix (a fresh mask per step, the
  fused LSTM kernel on the dropped weights); ``ours (no dropout)`` is the same with every rate 0;
* plain: ``nn.Embedding`` + three ``nn.LSTM`` + ``F.linear`` + ``F.cross_entropy``, no dropout
  (``nn.LSTM`` has no DropConnect): the speed a user gets from torch alone.

Each in fp32 and under bf16 autocast (``--dtypes``; emulated on AVX2-only CPUs, where oneDNN has no
bf16 LSTM: ``nn.LSTM`` under bf16 autocast fails there, so both sides run the recurrence in fp32
and the rest, the vocabulary projection above all, in bf16). fastai's AWD-LSTM
is compared only where it is importable: ``pip install fastai`` currently resolves to another torch
(2.14.1 with CUDA wheels, through torchvision), so it is not installed here and the script says so.

Timing: interleaved rounds (every variant runs ``--steps`` steps in turn, the order rotated from
round to round), median tokens/s over ``--repeats`` rounds; the machine header gives the load average (a shared machine: compare the
ratios, which both sides share, more than the absolute numbers).

    .venv/bin/python benchmarks/lstm_throughput.py [--preset awd-lstm-mini] [--batch 32] [--seq-len 70]
        [--steps 3] [--repeats 5] [--dtypes fp32,bf16] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import machine_line  # noqa: E402
from transferlab.models.lstm import cpu_lowp_lstm_supported  # noqa: E402


class PlainLSTMLM(nn.Module):
    """The same LM from torch alone: embedding, ``nn.LSTM`` layers, tied output with a bias."""

    def __init__(self, V: int, E: int, H: int, L: int):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.rnns = nn.ModuleList(nn.LSTM(E if i == 0 else H, E if i == L - 1 else H, batch_first=True)
                                  for i in range(L))
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> mean next-token loss
        h = self.embed(ids[:, :-1])
        lowp = torch.is_autocast_enabled(h.device.type) and h.device.type == "cpu" and not cpu_lowp_lstm_supported()
        for rnn in self.rnns:
            if lowp:  # nn.LSTM fails under bf16 autocast without native bf16: the fp32 kernel, as ours does
                with torch.autocast("cpu", enabled=False):
                    h = rnn(h.float())[0]
            else:
                h = rnn(h)[0]
        logits = F.linear(h, self.embed.weight, self.bias)  # (B, T-1, V)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours_step(preset: str, V: int, B: int, T: int, device: torch.device, dtype: str,
              dropout: bool) -> Callable[[], int]:
    """One training step of our AWD-LSTM through the clm objective; returns tokens processed."""
    from transferlab.config import get_preset
    from transferlab.models.model import TransferModel
    from transferlab.objectives import TokenizerIds, build_objective
    from transferlab.training.optim import build_optimizer, clip_grad_norm

    torch.manual_seed(0)
    opts = {} if dropout else {"embed_p": 0.0, "input_p": 0.0, "weight_p": 0.0, "hidden_p": 0.0, "output_p": 0.0}
    base = get_preset(preset)
    cfg = get_preset(preset, vocab_size=V, eos_token_id=1,
                     family_options={"hidden_size": base.family_options.hidden_size, **opts})
    model = TransferModel(cfg).to(device).train()
    ob = build_objective("clm", TokenizerIds(V, eos_token_id=1))
    module = ob.wrap_model(model)
    opt = build_optimizer(model, 1e-3)
    rng = np.random.default_rng(0)

    def step() -> int:
        batch = ob.collate([rng.integers(2, V, T) for _ in range(B)], rng)
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, dtype):
            out = ob.loss(module, batch)
        (out.loss_sum / batch["n_targets"]).backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return B * T

    return step


def plain_step(preset: str, V: int, B: int, T: int, device: torch.device, dtype: str) -> Callable[[], int]:
    """One training step of :class:`PlainLSTMLM` at the preset's sizes."""
    from transferlab.config import get_preset

    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = PlainLSTMLM(V, cfg.d_model, cfg.family_options.hidden_size, cfg.n_layers).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    rng = np.random.default_rng(0)

    def step() -> int:
        ids = torch.from_numpy(rng.integers(2, V, (B, T))).to(device)
        with _autocast(device, dtype):
            loss = model(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return B * T

    return step


def measure(fns: dict[str, Callable[[], int]], steps: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Interleaved rounds of ``steps`` steps per variant; median tokens/s per variant."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():  # warm-up: first-call allocations, kernel selection
        fn(), fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no variant always first
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            n = sum(fn() for _ in range(steps))
            sync()
            rates[name].append(n / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="awd-lstm-mini")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=70)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(machine_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; preset {a.preset}, "
          f"vocab {a.vocab}, batch {a.batch} x {a.seq_len}, {a.steps} steps x {a.repeats} rounds")
    if importlib.util.find_spec("fastai") is None:
        print("fastai: not installed (pip install fastai resolves to another torch through torchvision); not compared")
    for dtype in a.dtypes.split(","):
        fns = {
            "ours (AWD dropouts on)": ours_step(a.preset, a.vocab, a.batch, a.seq_len, device, dtype, True),
            "ours (no dropout)": ours_step(a.preset, a.vocab, a.batch, a.seq_len, device, dtype, False),
            "plain nn.LSTM": plain_step(a.preset, a.vocab, a.batch, a.seq_len, device, dtype),
        }
        rates = measure(fns, a.steps, a.repeats, device)
        plain = rates["plain nn.LSTM"]
        for name, r in rates.items():
            print(f"{dtype:>4}  {name:<24} {r:10.0f} tok/s  {r / plain:5.2f}x plain nn.LSTM")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
