"""Peak memory of ``transferlab prepare`` on one huge single-line document.

A corpus that is one long line (a dump without newlines, a book pasted into one field) is one
document; ``prepare`` must tokenize it in bounded pieces instead of handing the whole line to the
tokenizer at once (whose ``Encoding`` costs ~100 bytes per token). This script writes a
deterministic single-line file of ``--mb`` MB (words from a fixed list, with sentence punctuation),
runs ``transferlab prepare`` on it in a subprocess and prints:

* ``max_rss_one``: the largest resident set of any one process (the parent or a worker), from
  ``getrusage(RUSAGE_CHILDREN)`` (Linux reports the largest descendant);
* ``peak_tree``: the largest sum over the process tree, sampled every 20 ms with psutil;
* both divided by the input size.

    .venv/bin/python benchmarks/prepare_memory.py --mb 50 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("the of and to in is was for on that with as by at from his her an which or be this were "
         "are had it not but have one they their new first been has after also who two its more "
         "people time year years state city world school company music house water market river "
         "government Europe London Paris Mr. Dr. U.S. 1990 2024 42 3.5 data model token sentence").split()


def write_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """One line of ``mb`` MB of words; sentences end with '. ', '! ' or '? ' and start upper case."""
    import numpy as np

    rng = np.random.default_rng(seed)
    target = int(mb * 1e6)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        while n < target:
            idx = rng.integers(len(WORDS), size=20000)
            ends = rng.random(20000) < 0.07
            parts = []
            cap = True
            for w, e in zip(idx.tolist(), ends.tolist()):
                word = WORDS[w]
                parts.append(word.capitalize() if cap else word)
                cap = e
                if e:
                    parts[-1] += ".!?"[w % 3]
            chunk = " ".join(parts) + " "
            f.write(chunk)
            n += len(chunk)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokenizer", default="builtin:minilm")
    ap.add_argument("--keep", metavar="DIR", help="write the corpus and output here (kept)")
    ap.add_argument("--timeout", type=float, default=0, help="stop the run after this many seconds (0: never); "
                    "the peaks so far are still printed (for a slow baseline)")
    args = ap.parse_args()
    import psutil

    with tempfile.TemporaryDirectory(prefix="tl-mem-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        corpus = root / f"oneline-{args.mb:g}mb.txt"
        if not corpus.exists():
            write_corpus(corpus, args.mb)
        size = corpus.stat().st_size
        out = root / "prepared"
        cmd = [sys.executable, "-m", "transferlab", "prepare", "--tokenizer", args.tokenizer, "--input",
               str(corpus), "--out", str(out), "--workers", str(args.workers), "--force", "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        peak = [0]

        def sample() -> None:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    rss = 0
                peak[0] = max(peak[0], rss)
                time.sleep(0.02)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            rc = proc.wait(args.timeout or None)
        except subprocess.TimeoutExpired:
            for c in psutil.Process(proc.pid).children(recursive=True):
                c.kill()
            proc.kill()
            rc = f"killed after {args.timeout:g}s"
            proc.wait()
        th.join()
        secs = time.perf_counter() - t0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        one = kids.ru_maxrss * 1024  # KiB on Linux
        cpu = kids.ru_utime + kids.ru_stime
        print(f"input {size / 1e6:.1f} MB, workers {args.workers}, tokenizer {args.tokenizer}, rc {rc}, {secs:.1f}s wall, "
              f"{cpu:.1f} CPU-s (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
        print(f"max_rss_one {one / 1e6:.0f} MB ({one / size:.1f}x input)  "
              f"peak_tree {peak[0] / 1e6:.0f} MB ({peak[0] / size:.1f}x input)")


if __name__ == "__main__":
    from _machine import machine_line

    print(machine_line(), flush=True)  # BENCHMARKS.md keeps one section per machine type
    main()
