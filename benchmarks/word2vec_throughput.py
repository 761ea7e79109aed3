"""Skip-gram training speed: transferlab's ``skipgram`` objective against gensim's ``Word2Vec``.

Both sides train skip-gram with negative sampling (window 5, 5 negatives, subsampling 1e-3,
vectors of ``--dim``) on exactly the same tokens: the prepared shards' training windows of
``--seq-len`` tokens, given to gensim as lists of token strings (specials dropped, as our
collator drops them). Ours runs through ``pretrain`` (the trainer, AdamW, logging; no
checkpoints in between), gensim through ``Word2Vec.train`` after ``build_vocab`` (not timed).
Both use ``--threads`` threads. Words/s = input tokens / training seconds; the ratio printed is
ours / gensim. Because the machine may be shared, words per CPU-second (user + system time of the
process around each side's call; ours includes pretrain's set-up, final evaluation and saving,
which only makes it stricter for ours) is printed too, and the load average.

    .venv/bin/python benchmarks/word2vec_throughput.py --max-tokens 500000 --threads 2
    .venv/bin/python benchmarks/word2vec_throughput.py --data runs/data --dim 256
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _prepare(tmp: Path, max_mb: float) -> Path:
    from transferlab.data import prepare_corpus, read_documents
    from transferlab.tokenizer import Tokenizer

    texts, size = [], 0
    for doc in read_documents("builtin:reviews+news"):
        texts.append(doc.text)
        size += len(doc.text.encode())
        if size > max_mb * 1e6:
            break
    (tmp / "c.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    prepare_corpus([str(tmp / "c.txt")], Tokenizer.from_pretrained("builtin:minilm"), tmp / "data",
                   val_fraction=0.01, workers=0, progress=False)
    return tmp / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="prepared shards (default: the first --max-mb of builtin:reviews+news, minilm tokenizer)")
    ap.add_argument("--max-mb", type=float, default=4.0, help="text prepared when --data is not given")
    ap.add_argument("--max-tokens", type=int, default=500_000, help="tokens each side trains on")
    ap.add_argument("--dim", type=int, default=128, help="vector width")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from _machine import machine_line
    from transferlab.data import TokenShards
    from transferlab.training.config import TrainConfig
    from transferlab.training.pretrain import pretrain

    print(machine_line())
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tl-w2v-") as t:
        tmp = Path(t)
        data = Path(args.data) if args.data else _prepare(tmp, args.max_mb)
        shards = TokenShards(data, "train")
        tok = shards.tokenizer
        n = min(args.max_tokens, shards.n_tokens) // args.seq_len * args.seq_len
        special = set(tok.all_special_ids)
        vocab = tok.convert_ids_to_tokens(list(range(tok.vocab_size)))
        ids = np.asarray(shards.tokens[:n]).reshape(-1, args.seq_len)
        sentences = [[vocab[i] for i in row if i not in special] for row in ids.tolist()]

        # ours: the skipgram objective through pretrain, over the same n tokens
        train = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, max_tokens=n, lr=2e-3, warmup=0.05,
                            weight_decay=0.0, eval_every=0, eval_batches=1, save_every=0, log_every=50,
                            dtype="fp32", progress=False, tensorboard=False, num_threads=args.threads)
        c0 = _cpu()
        s = pretrain("word2vec-128", "skipgram", {"window": 5, "negatives": 5, "sample": 1e-3}, train, data,
                     tmp / "ours", model_overrides=[f"model.d_model={args.dim}"])
        ours = float(s["tokens_per_s"])
        ours_cpu = n / (_cpu() - c0)

        # gensim: the same windows as token strings, vocabulary built first (not timed)
        from gensim.models import Word2Vec

        w2v = Word2Vec(vector_size=args.dim, window=5, negative=5, sample=1e-3, sg=1, min_count=1,
                       workers=args.threads, seed=0)
        w2v.build_vocab(sentences)
        t0, c0 = time.perf_counter(), _cpu()
        w2v.train(sentences, total_examples=len(sentences), epochs=1)
        theirs = n / (time.perf_counter() - t0)
        theirs_cpu = n / (_cpu() - c0)
    import gensim

    print(f"tokens {n:,} | dim {args.dim} | window 5, negatives 5, sample 1e-3 | threads {args.threads}")
    print(f"transferlab skipgram (torch, pretrain): {ours:,.0f} words/s, {ours_cpu:,.0f} words/CPU-s")
    print(f"gensim {gensim.__version__} Word2Vec (sg=1):   {theirs:,.0f} words/s, {theirs_cpu:,.0f} words/CPU-s")
    print(f"ratio ours / gensim: {ours / theirs:.2f}x wall, {ours_cpu / theirs_cpu:.2f}x per CPU-second")
    import os

    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
