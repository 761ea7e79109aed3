"""Fuzz test of the file readers: task files (CSV / TSV / JSONL / CoNLL, ``finetune.tasks``) and
corpus files (text / JSONL / CSV / TSV, ``data.corpus``).

Valid files of every shape are mutated at random (byte flips, truncation, inserted quotes, tabs,
commas, newlines, NUL, invalid UTF-8, a BOM, a huge field, deep JSON nesting, a 5,000-digit
number, NaN, columns dropped or added, lines duplicated or swapped, gzip damage) or replaced by
random bytes, and read every way a command reads them. The only outcomes allowed are success or a
:class:`~transferlab.errors.TransferlabError` whose message is one line and names the file; any
other exception fails. Deterministic: case ``k`` always builds the same bytes (seeded per case).

Run outside the suite with many cases (prints a count per failure class)::

    PYTHONPATH=src .venv/bin/python tests/finetune/test_task_fuzz.py --cases 20000
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import sys
import traceback
from pathlib import Path
from typing import Callable

import pytest

from transferlab.data.corpus import read_documents
from transferlab.errors import TransferlabError
from transferlab.finetune.tasks import TASK_TYPES, Columns, load_files, read_examples

#: cases in the normal suite: a few seconds
SUITE_CASES = 400


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


#: (file name, task type the file holds, valid content)
SEEDS: list[tuple[str, str, bytes]] = [
    ("cls.csv", "classification", b"text,label\nthe film was good,pos\n\"a, quoted\"\"one\"\"\",neg\nbad film,neg\nfine,pos\n"),
    ("reg.csv", "regression", b"text,label\na,0.5\nb,1.25\nc,3.75\nd,2.0\ne,4.5\n"),
    ("pair.tsv", "pair-classification", b"text\tpair\tlabel\na cat\ta dog\tsame\nrain\tsun\tdifferent\nx\ty\tsame\n"),
    ("cls.jsonl", "classification", _jsonl([{"text": "caf\u00e9 ok", "label": "pos"}, {"text": "no", "label": "neg"},
                                             {"text": "yes", "label": "pos"}])),
    ("reg.jsonl", "regression", _jsonl([{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5},
                                        {"text": "c", "label": 2}])),
    ("tag.jsonl", "tagging", _jsonl([{"tokens": ["John", "lives", "here"], "tags": ["B-PER", "O", "O"]},
                                     {"tokens": "New York".split(), "tags": ["B-LOC", "I-LOC"]}])),
    ("qa.jsonl", "qa", _jsonl([
        {"context": "The cat sat on the mat.", "question": "Where?", "answer": "the mat", "answer_start": 15},
        {"context": "Paris is big.", "question": "What?", "answers": {"text": ["Paris"], "answer_start": [0]}},
        {"context": "ab ab", "question": "q", "answers": [{"text": "ab", "answer_start": 3}], "id": 7},
        {"context": "xyz", "question": "q", "answer": "y"},
    ])),
    ("s2s.jsonl", "seq2seq", _jsonl([{"source": "long text here", "target": "short"}, {"source": "b", "target": "c"}])),
    ("ner.conll", "tagging", b"-DOCSTART- O\n\nJohn\tB-PER\nlives\tO\n\nin\tO\nNew York\tB-LOC\n\nParis I-LOC\n"),
    ("ner.bio", "tagging", b"a B-X\nb I-X\n\n\nc O\n"),
]
#: corpus files for the pre-training readers: (name, read_documents keyword arguments, content)
CORPUS_SEEDS: list[tuple[str, dict, bytes]] = [
    ("c.txt", {"doc_sep": "blank"}, b"First doc. Two lines\nhere.\n\nSecond doc\n\n\nthird\n"),
    ("c.txt", {"doc_sep": "line"}, b"one\ntwo\n\nthree\n"),
    ("c.txt", {"doc_sep": "file"}, b"all of it\n\none document\n"),
    ("c.jsonl", {}, _jsonl([{"text": "a doc"}, {"text": "another", "id": 2}, {"text": None}])),
    ("c.csv", {}, b"id,text\n1,\"quoted, doc\"\n2,plain\n"),
    ("c.tsv", {}, b"text\tid\nhello there\t1\nbye\t2\n"),
]

INSERTS = [b'"', b"'", b"\t", b",", b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"\xc3\x28", b"\xef\xbb\xbf", b"{", b"}",
           b"[", b"]", b":", b"\\", b'\\u0000', b"\\ud800", b" ", b"NaN", b"Infinity", b"-DOCSTART-", b"B-", b"I-X",
           b"true", b"null", b"1e400", b"-0", b"\xe2\x80\xa8", b"\x85", b"\x0b", b"\x1c"]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(14)
        pos = rng.randint(0, len(b))
        if op == 0 and b:  # flip a byte
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncate
            del b[pos:]
        elif op == 2:  # insert a special byte sequence
            b[pos:pos] = rng.choice(INSERTS)
        elif op == 3 and b:  # delete a span
            del b[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # a huge field
            b[pos:pos] = rng.choice([b"a", b"\xc3\xa9", b" ", b'"']) * rng.choice([1000, 70_000, 140_000])
        elif op == 5:  # deep JSON nesting
            b[pos:pos] = b"[" * rng.choice([100, 5000, 100_000])
        elif op == 6:  # a 5,000-digit number
            b[pos:pos] = b"1" * 5000
        elif op == 7:  # wrong column counts: drop or add a delimiter on a line
            lines = bytes(b).split(b"\n")
            i = rng.randrange(len(lines))
            d = rng.choice([b",", b"\t", b" "])
            lines[i] = lines[i].replace(d, b"", 1) if rng.random() < 0.5 else lines[i] + d + b"extra"
            b = bytearray(b"\n".join(lines))
        elif op == 8:  # duplicate or swap lines
            lines = bytes(b).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            b = bytearray(b"\n".join(lines))
        elif op == 9:  # a BOM, at the start or anywhere
            b[0 if rng.random() < 0.5 else pos : 0 if rng.random() < 0.5 else pos] = b"\xef\xbb\xbf"
        elif op == 10:  # JSON values of the wrong type
            for old, new in ((b'"label": "pos"', b'"label": [1]'), (b'"text": "', b'"text": {"a": "'),
                             (b'"answer_start": 15', b'"answer_start": "15"'), (b'"tokens": [', b'"tokens": [1, '),
                             (b'"answers": {"text": ["Paris"]', b'"answers": {"text": 5'),
                             (b'"answers": [{', b'"answers": [3, {'), (b"0.5", b"true"), (b'"label": 2', b'"label": 1e999')):
                if old in b and rng.random() < 0.5:
                    b = bytearray(bytes(b).replace(old, new, 1))
        elif op == 11:  # random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif op == 12:  # empty the file, or keep only its first line
            b = bytearray(b"" if rng.random() < 0.5 else bytes(b).split(b"\n")[0] + b"\n")
        else:  # lines with only whitespace
            b[pos:pos] = rng.choice([b"\n\n", b"\n \t \n", b"\n,\n", b"\n\t\n"])
    return bytes(b)


def _case(k: int, tmp: Path) -> tuple[Path, list[tuple[str, Callable[[], object]]]]:
    """Case ``k``: a file written under ``tmp`` and the reads to try on it."""
    rng = random.Random(k)
    corpus = rng.random() < 0.25
    if corpus:
        name, kwargs, data = CORPUS_SEEDS[rng.randrange(len(CORPUS_SEEDS))]
    else:
        name, kind, data = SEEDS[rng.randrange(len(SEEDS))]
    data = rng.randbytes(rng.randint(0, 300)) if rng.random() < 0.08 else _mutate(data, rng)
    gz = rng.random() < 0.05
    if gz:
        name += ".gz"
        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.5:  # damage the compressed stream
            data = _mutate(data, rng) if rng.random() < 0.5 else data[: rng.randint(0, len(data))]
    path = tmp / f"{k}-{name}"
    path.write_bytes(data)
    if corpus:
        return path, [("read_documents", lambda: [d.text for d in read_documents(path, **kwargs)])]
    cols = Columns()
    reads: list[tuple[str, Callable[[], object]]] = [
        ("read_examples", lambda: read_examples(path)),
        (f"read_examples({kind})", lambda: read_examples(path, kind, cols)),
        (f"read_examples({kind}, labelled=False)", lambda: read_examples(path, kind, cols, labelled=False)),
    ]
    other = rng.choice([t for t in TASK_TYPES if t != kind])
    reads.append((f"read_examples({other})", lambda: read_examples(path, other, cols)))
    if rng.random() < 0.3:
        reads.append(("load_files", lambda: load_files(path, test=path)))
    return path, reads


def _check(path: Path, label: str, read: Callable[[], object]) -> tuple[str, str] | None:
    """None when ``read`` succeeds or raises a one-line TransferlabError naming the file; else
    ``(failure class, detail)``."""
    try:
        read()
    except TransferlabError as e:
        msg = str(e)
        if "\n" in msg or "\r" in msg:
            return f"multi-line message: {msg.split(':', 3)[-1][:40]!r}", f"{label}: {msg[:160]!r}"
        if path.name not in msg:
            return f"message does not name the file: {msg[:40]!r}", f"{label}: {msg[:160]!r}"
        if len(msg) > 1000:  # a huge field quoted whole is one line, but nobody can read it
            return f"message of over 1,000 characters: {msg.split(': ', 2)[-1][:30]!r}", f"{label}: {msg[:160]!r}"
    except Exception as e:  # noqa: BLE001 - the point of the test
        tb = traceback.extract_tb(e.__traceback__)
        ours = [f for f in tb if "transferlab" in f.filename] or tb
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} -> {Path(tb[-1].filename).name}:{tb[-1].lineno}"
        return f"{type(e).__name__} at {where}", f"{label}: {str(e)[:160]}"
    return None


def run(cases: range, tmp: Path) -> tuple[collections.Counter, dict[str, str]]:
    """Failure classes over ``cases`` with their counts, and the first case and detail of each."""
    failures: collections.Counter = collections.Counter()
    first: dict[str, str] = {}
    for k in cases:
        path, reads = _case(k, tmp)
        for label, read in reads:
            bad = _check(path, label, read)
            if bad:
                failures[bad[0]] += 1
                first.setdefault(bad[0], f"case {k}: {bad[1]}")
        path.unlink()
    return failures, first


def test_fuzzed_task_and_corpus_files_give_success_or_a_one_line_error(tmp_path):
    failures, first = run(range(SUITE_CASES), tmp_path)
    assert not failures, "\n".join(f"{n}x {w} ({first[w]})" for w, n in failures.most_common(20))


@pytest.mark.parametrize("name, kind, data", SEEDS, ids=[s[0] for s in SEEDS])
def test_fuzz_seeds_are_valid(tmp_path, name, kind, data):
    # the mutations start from files that read cleanly, as the type they hold
    f = tmp_path / name
    f.write_bytes(data)
    ex, got = read_examples(f, kind)
    assert got == kind and len(ex) >= 2
    # inferred alike (a pair column is only used when named, so pairs infer as classification)
    assert read_examples(f)[1] == ("classification" if kind == "pair-classification" else kind)


def main() -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="fuzz the task and corpus file readers")
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        failures, first = run(range(args.start, args.start + args.cases), Path(tmp))
    print(f"{args.cases} cases, {sum(failures.values())} failing reads in {len(failures)} classes")
    for why, n in failures.most_common():
        print(f"{n:6d}  {why}  ({first[why]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())


# one example of each failure class the fuzzer found (each was a raw traceback before)
@pytest.mark.parametrize("name, data, message", [
    ("deep.jsonl", b"[" * 100_000 + b"\n", r"deep\.jsonl:1: invalid JSON \(nested too deeply\)"),
    ("big.jsonl", b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n", r"big\.jsonl:1: invalid JSON \(Exceeds the limit"),
    ("t.csv.gz", gzip.compress(b"text,label\n" + b"a,b\n" * 50, mtime=0)[:-12], r"t\.csv\.gz:\d+: cannot read"),
    ("t.jsonl.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 40, r"t\.jsonl\.gz:1: cannot read"),
    ("qa.jsonl", _jsonl([{"context": "c", "question": "q", "answers": {"text": 5, "answer_start": 0}}]),
     r"qa\.jsonl:1: empty answer"),
    ("hdr.csv", b'"te\rxt",label\na,b\n', r"hdr\.csv:1: no label column|hdr\.csv:2: no text column 'text' \(columns: 'te\\rxt', label\)"),
    ("qa2.jsonl", _jsonl([{"context": "c", "question": "q", "answers": [{"text": "c", "answer_start": 0}, 3]}]),
     r"qa2\.jsonl:1: answers in column 'answers' must all be objects"),
])
def test_fuzz_found_classes_are_one_line_errors(tmp_path, name, data, message):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(TransferlabError, match=message):
        read_examples(f, "qa" if name.startswith("qa") else None)
