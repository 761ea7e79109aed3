"""How close does ``prepare`` get to the raw speed of the tokenizer?

Prints the MB/s of UTF-8 text that ``prepare_corpus`` turns into shards with ``--workers``
processes (reading, tokenizing, sentence splitting, split hashing and writing included), beside
the speed of one ``tokenizers`` ``encode_batch`` call on the same documents already in memory, in
one process (Rust parallelism on: all cores). That call is the ceiling: prepare does strictly
more work. Target: prepare >= 80% of it.

The corpus is first written to a temporary text file (documents separated by blank lines), so
both sides see exactly the same text and no time goes to parsing built-in CSVs. Wall-clock MB/s is
the best of ``--repeats`` runs; because the machine may be shared, the script also prints MB per
CPU-second (user + system time of every thread and worker process), which other jobs barely move.

    .venv/bin/python benchmarks/prepare_throughput.py                      # builtin:reviews+news
    .venv/bin/python benchmarks/prepare_throughput.py --tokenizer runs/tok --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the prepare workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default="builtin:reviews+news", help="corpus (default: %(default)s)")
    ap.add_argument("--tokenizer", default="builtin:minilm",
                    help="tokenizer folder or builtin:minilm / builtin:gpt2 (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="prepare worker processes (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each side (default: %(default)s)")
    ap.add_argument("--max-mb", type=float, default=0, help="use only the first MB of text (0 = all)")
    args = ap.parse_args()

    from transferlab.data import prepare_corpus, read_documents
    from transferlab.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        texts: list[str] = []
        size = 0
        with open(corpus, "w", encoding="utf-8") as f:
            for doc in read_documents(args.input):
                text = "\n".join(line for line in doc.text.split("\n") if line.strip())  # no blank lines inside
                f.write(text + "\n\n")
                texts.append(text)
                size += len(text.encode("utf-8"))
                if args.max_mb and size >= args.max_mb * 1e6:
                    break
        mb = size / 1e6
        print(f"corpus: {args.input}, {len(texts):,} documents, {mb:.1f} MB UTF-8; tokenizer {tok.kind} "
              f"vocab {tok.vocab_size}; {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}")

        ceiling, prep, ceiling_cpu, prep_cpu = [], [], [], []
        for r in range(args.repeats):
            c0, t0 = _cpu(), time.perf_counter()
            encs = tok.backend.encode_batch(texts, add_special_tokens=False)
            ceiling.append(mb / (time.perf_counter() - t0))
            ceiling_cpu.append(mb / (_cpu() - c0))
            n_tokens = sum(len(e.ids) for e in encs)
            del encs
            c0 = _cpu()
            s = prepare_corpus(corpus, tok, Path(tmp) / "out", workers=args.workers, force=True, progress=False)
            prep_cpu.append(mb / (_cpu() - c0))
            prep.append(s["mb_per_s"])
            assert s["tokens"] == n_tokens, (s["tokens"], n_tokens)
            print(f"  run {r + 1}: encode_batch {ceiling[-1]:.2f} MB/s ({ceiling_cpu[-1]:.2f} MB/cpu-s)   "
                  f"prepare {prep[-1]:.2f} MB/s ({prep_cpu[-1]:.2f} MB/cpu-s; {s['tokens']:,} tokens, "
                  f"{s['sentences']:,} sentences, {s['seconds']:.1f}s)")
        best_c, best_p = max(ceiling), max(prep)
        cpu_c, cpu_p = max(ceiling_cpu), max(prep_cpu)
        print(f"tokenizers encode_batch, 1 process (ceiling): {best_c:.2f} MB/s   {cpu_c:.2f} MB per CPU-second")
        print(f"transferlab prepare, {args.workers} workers:          {best_p:.2f} MB/s   {cpu_p:.2f} MB per CPU-second")
        print(f"prepare / ceiling: {100 * best_p / best_c:.0f}% of the wall-clock speed (target >= 80%), "
              f"{100 * cpu_p / cpu_c:.0f}% of the CPU efficiency")

if __name__ == "__main__":
    main()
