"""Generation throughput: transferlab ``generate`` vs ``transformers`` ``generate``, same weights.

gpt-mini (4 layers, d_model 256, 4 heads, vocab 8192), a 16-token prompt, 128 new tokens,
greedy, no eos (every run produces exactly 128 tokens), batch 1 and batch 8, float32 and
bfloat16 weights on both sides (``model.to(dtype)``; no autocast). One process, the
implementations interleaved, ``--repeats`` timed runs each after a warm-up; prints the median
new tokens/s and the ratio ours / transformers. Outputs are checked token for token before timing.

``--compile`` adds ``generate(..., compile=True)`` as its own column, with its compile seconds:
the first call's time minus an eager call's, in a fresh inductor cache directory (cold).
``--kernels`` first times one pass over gpt-mini's decode-step linears (the 16 block linears
and the LM head, weights too big to stay in cache between passes): ``F.linear`` vs the oneDNN
prepacked weights the decode step uses.

    .venv/bin/python benchmarks/generate_throughput.py [--repeats 5] [--threads 2] [--compile] [--kernels]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def gpt_mini_pair(dtype: torch.dtype):
    """A random transformers GPT-2 with gpt-mini's shape and the same weights in transferlab."""
    import transformers as T

    from transferlab.config import get_preset
    from transferlab.interop.hf import from_hf

    torch.manual_seed(0)
    cfg = get_preset("gpt-mini")  # the preset: 4L / 256 / 4 heads / vocab 8192 / 1024 positions
    hc = T.GPT2Config(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                      n_inner=cfg.d_ff, n_positions=cfg.max_positions, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
                      bos_token_id=None, eos_token_id=None)  # no eos: every run makes all its tokens
    hf = T.GPT2LMHeadModel(hc).eval()
    ours = from_hf(hf)  # the shared GPT-2 key map (transferlab.hf)
    ours.config.eos_token_id = ours.config.bos_token_id = -1
    return hf.to(dtype).eval(), ours.to(dtype).eval()


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def kernels(model: torch.nn.Module, rows: int, repeats: int) -> tuple[float, float, float]:
    """Seconds for one pass over the decode step's linears: F.linear vs oneDNN-prepacked, and MB read.

    Twelve copies of the weights are cycled (~250 MB in fp32), so each pass reads them from
    memory as a decode step does (a single copy would sit in cache and flatter both).
    """
    import torch.nn.functional as F

    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # 16 block linears
    pairs = [(m.weight, m.bias) for m in lins] + [(model.get_input_embeddings().weight, None)]  # + tied LM head
    copies = [[(w.detach().clone(), None if b is None else b.detach().clone()) for w, b in pairs] for _ in range(12)]
    packed = [[(torch.ops.mkldnn._reorder_linear_weight(w, rows), b) for w, b in c] for c in copies]
    x = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w, _ in pairs}
    mb = sum(w.numel() * w.element_size() for w, _ in pairs) / 2**20

    def plain():
        for c in copies:
            for w, b in c:
                F.linear(x[w.shape[1]], w, b)

    def prepacked():
        for c, cp in zip(copies, packed):
            for (w, _), (p, b) in zip(c, cp):
                torch.ops.mkldnn._linear_pointwise(x[w.shape[1]], p, b, "none", [], "")

    with torch.inference_mode():
        plain(), prepacked()
        a, b = [], []
        for _ in range(repeats):  # interleaved
            a.append(_median_time(plain, 1))
            b.append(_median_time(prepacked, 1))
    return statistics.median(a) / 12, statistics.median(b) / 12, mb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--compile", action="store_true", help="add a generate(..., compile=True) column")
    ap.add_argument("--kernels", action="store_true", help="first time F.linear vs prepacked on the step's linears")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:  # a fresh cache: the compile seconds printed are a cold start's
        cache_dir = tempfile.mkdtemp(prefix="tl-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
          f"prompt {args.prompt}, new tokens {args.new_tokens}, greedy, repeats {args.repeats}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.kernels:
        print(f"{'dtype':<9} {'rows':>4} {'weights MB':>10} {'F.linear ms':>11} {'prepacked ms':>12} {'GB/s':>11} {'ratio':>6}")
        for dname in args.dtypes.split(","):
            _, ours = gpt_mini_pair(getattr(torch, dname))
            for bs in (int(b) for b in args.batches.split(",")):
                a, b, mb = kernels(ours, bs, args.repeats)
                gbs = f"{mb / 1024 / a:.1f} / {mb / 1024 / b:.1f}"
                print(f"{dname:<9} {bs:>4} {mb:>10.1f} {a * 1e3:>11.2f} {b * 1e3:>12.2f} {gbs:>11} {a / b:>5.2f}x")
        sys.stdout.flush()

    head = f"{'dtype':<9} {'batch':>5} {'transformers tok/s':>19} {'transferlab tok/s':>18} {'ratio':>6}"
    if args.compile:
        head += f" {'compiled tok/s':>15} {'ratio':>6} {'compile s':>9}"
    print(head)
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        hf, ours = gpt_mini_pair(dtype)
        for bs in (int(b) for b in args.batches.split(",")):
            g = torch.Generator().manual_seed(bs)
            ids = torch.randint(0, ours.config.vocab_size, (bs, args.prompt), generator=g)
            kw = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

            def run_hf():
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=0, **kw)

            def run_ours():
                return ours.generate(ids, **kw)

            def run_compiled():
                return ours.generate(ids, compile=True, **kw)

            runs = {"hf": run_hf, "ours": run_ours}
            a, b = run_hf(), run_ours()  # warm-up + same output check
            notes = [] if torch.equal(a, b) else ["transformers != ours" + (" (bf16 rounding)" if dtype != torch.float32 else "!")]
            if args.compile:
                t = time.perf_counter()
                c = run_compiled()
                first = time.perf_counter() - t
                compile_s = first - _median_time(run_ours, 1)
                runs["compiled"] = run_compiled
                if not torch.equal(b, c):
                    notes.append("compiled != eager" + (" (bf16 rounding)" if dtype != torch.float32 else "!"))
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # interleaved so machine noise hits all alike
                for name, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            n = bs * args.new_tokens
            tps = {name: n / statistics.median(ts) for name, ts in times.items()}
            line = f"{dname:<9} {bs:>5} {tps['hf']:>19,.0f} {tps['ours']:>18,.0f} {tps['ours'] / tps['hf']:>5.2f}x"
            if args.compile:
                line += f" {tps['compiled']:>15,.0f} {tps['compiled'] / tps['hf']:>5.2f}x {compile_s:>9.1f}"
            print(line + ("  (" + "; ".join(notes) + ")" if notes else ""))
            sys.stdout.flush()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    sys.exit(main())
