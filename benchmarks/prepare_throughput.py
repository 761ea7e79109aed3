"""How close does ``prepare`` get to the raw speed of the tokenizer?

Prints the MB/s of UTF-8 text that ``prepare_corpus`` turns into shards with ``--workers``
processes (reading, tokenizing, sentence splitting, split hashing and writing included), beside
the speed of one ``tokenizers`` ``encode_batch`` call on the same documents already in memory, in
one process (Rust parallelism on: all cores). That call is the ceiling: prepare does strictly
more work. Target: prepare >= 80% of it.

Fairness: both sides see exactly the same text (the corpus is first written to a temporary text
file, documents separated by blank lines, so no time goes to parsing built-in CSVs, and the page
cache is warm for prepare's reads); both are warmed up once on the first MB; the two sides
alternate within each repeat; the ceiling is timed without freeing its ``Encoding`` objects
(printed separately), which makes it the stricter bar. Wall-clock MB/s is the best of ``--repeats``
runs. Because the machine may be shared, the script also prints MB per CPU-second (user + system
time of every thread and worker process), which other jobs move less, the median of the per-repeat
ratios, and the load average before and after.

    .venv/bin/python benchmarks/prepare_throughput.py --repeats 3               # builtin:reviews+news
    .venv/bin/python benchmarks/prepare_throughput.py --tokenizer runs/tok --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default="builtin:reviews+news", help="corpus (default: %(default)s)")
    ap.add_argument("--tokenizer", default="builtin:minilm",
                    help="tokenizer folder or builtin:minilm / builtin:gpt2 (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="prepare worker processes (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each side (default: %(default)s)")
    ap.add_argument("--max-mb", type=float, default=0, help="use only the first MB of text (0 = all)")
    args = ap.parse_args()

    from transferlab.data import prepare_corpus, read_documents
    from transferlab.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        corpus, warm = Path(tmp) / "corpus.txt", Path(tmp) / "warm.txt"
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
              f"vocab {tok.vocab_size}; {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; "
              f"load average {_load()}")

        # warm-up on the first MB: rayon's thread pool, prepare's lazy imports, the page cache
        head, n = [], 0
        for t in texts:
            head.append(t)
            n += len(t)
            if n > 1e6:
                break
        warm.write_text("\n\n".join(head) + "\n", encoding="utf-8")
        tok.backend.encode_batch(head, add_special_tokens=False)
        prepare_corpus(warm, tok, Path(tmp) / "warm-out", workers=args.workers, progress=False)

        def ceiling() -> tuple[float, float, int, float]:
            c0, t0 = _cpu(), time.perf_counter()
            encs = tok.backend.encode_batch(texts, add_special_tokens=False)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            n_tokens = sum(len(e) for e in encs)
            c0 = _cpu()
            del encs
            return mb / wall, mb / cpu, n_tokens, _cpu() - c0

        def prepare() -> tuple[float, float, dict]:
            c0, t0 = _cpu(), time.perf_counter()  # the whole call, not just the part prepare times itself
            s = prepare_corpus(corpus, tok, Path(tmp) / "out", workers=args.workers, force=True, progress=False)
            return mb / (time.perf_counter() - t0), mb / (_cpu() - c0), s

        rows = []
        for r in range(args.repeats):
            if r % 2 == 0:
                c, p = ceiling(), prepare()
            else:
                p, c = prepare(), ceiling()
            (c_wall, c_cpu, n_tokens, free_cpu), (p_wall, p_cpu, s) = c, p
            assert s["tokens"] == n_tokens, (s["tokens"], n_tokens)
            rows.append((c_wall, c_cpu, p_wall, p_cpu))
            print(f"  run {r + 1}: encode_batch {c_wall:.2f} MB/s ({c_cpu:.2f} MB/cpu-s; freeing the Encodings "
                  f"after: {free_cpu:.2f} cpu-s, not counted)   prepare {p_wall:.2f} MB/s ({p_cpu:.2f} MB/cpu-s; "
                  f"{s['tokens']:,} tokens, {s['sentences']:,} sentences)   "
                  f"ratio {100 * p_wall / c_wall:.0f}% wall, {100 * p_cpu / c_cpu:.0f}% CPU")
        best = [max(col) for col in zip(*rows)]
        print(f"tokenizers encode_batch, 1 process (ceiling): {best[0]:.2f} MB/s   {best[1]:.2f} MB per CPU-second")
        print(f"transferlab prepare, {args.workers} workers:          {best[2]:.2f} MB/s   {best[3]:.2f} MB per CPU-second")
        print(f"prepare / ceiling (best of {args.repeats} each): {100 * best[2] / best[0]:.0f}% of the wall-clock speed "
              f"(target >= 80%), {100 * best[3] / best[1]:.0f}% of the CPU efficiency; median of the per-run "
              f"ratios {100 * statistics.median(p / c for c, _, p, _ in rows):.0f}% wall, "
              f"{100 * statistics.median(p / c for _, c, _, p in rows):.0f}% CPU; load average {_load()}")


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
