"""Generation throughput: transferlab ``generate`` vs ``transformers`` ``generate``, same weights.

gpt-mini (4 layers, d_model 256, 4 heads, vocab 8192), a 16-token prompt, 128 new tokens,
greedy, no eos (every run produces exactly 128 tokens), batch 1 and batch 8, float32 and
bfloat16. One process, the two implementations interleaved, ``--repeats`` timed runs each after
a warm-up; prints the median new tokens/s and the ratio ours / transformers. Outputs are checked
to be identical token for token before timing.

    .venv/bin/python benchmarks/generate_throughput.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def gpt_mini_pair(dtype: torch.dtype):
    """A random transformers GPT-2 with gpt-mini's shape and the same weights in transferlab."""
    import transformers as T

    from transferlab.config import get_preset
    from transferlab.hf import from_hf

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
          f"prompt {args.prompt}, new tokens {args.new_tokens}, greedy, repeats {args.repeats}")
    print(f"{'dtype':<9} {'batch':>5} {'transformers tok/s':>19} {'transferlab tok/s':>18} {'ratio':>6}")
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

            a, b = run_hf(), run_ours()  # warm-up + same output check
            same = torch.equal(a, b)
            times = {"hf": [], "ours": []}
            for _ in range(args.repeats):  # interleaved so machine noise hits both alike
                for name, fn in (("hf", run_hf), ("ours", run_ours)):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            n = bs * args.new_tokens
            hf_tps, our_tps = n / statistics.median(times["hf"]), n / statistics.median(times["ours"])
            print(f"{dname:<9} {bs:>5} {hf_tps:>19,.0f} {our_tps:>18,.0f} {our_tps / hf_tps:>5.2f}x"
                  + ("" if same else "  (outputs differ: bf16 rounding)" if dtype != torch.float32 else "  OUTPUTS DIFFER"))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
