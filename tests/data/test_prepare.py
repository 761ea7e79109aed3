"""prepare_corpus: shards, index, determinism, atomicity, no-op reruns; TokenShards; CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tiny import write_docs
from transferlab.cli import main
from transferlab.data import TokenShards, prepare_corpus, split_sentences
from transferlab.data import prepare as prep_mod
from transferlab.data.corpus import Document
from transferlab.data.prepare import token_dtype
from transferlab.data.sentences import sentence_starts, sentence_starts_batch
from transferlab.errors import DataError
from transferlab.tokenizer import Tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def _doc(i: int) -> str:
    rng = np.random.default_rng(i)
    sents = []
    for _ in range(1 + i % 4):
        words = [WORDS[k] for k in rng.integers(0, len(WORDS), size=3 + rng.integers(0, 6))]
        sents.append(" ".join(words).capitalize() + ".")
    return " ".join(sents)


DOCS = [_doc(i) for i in range(80)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(DOCS, kind="wordpiece", vocab_size=120)


@pytest.fixture()
def corpus(tmp_path):
    return write_docs(tmp_path / "corpus.txt", DOCS)


def _prep(corpus, tok, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return prepare_corpus(corpus, tok, out, **kw)


# ---------------------------------------------------------------------------------- layout
def test_layout_meta_and_contents(corpus, tok, tmp_path):
    out = tmp_path / "data"
    s = _prep(corpus, tok, out, val_fraction=0.1)
    assert not s["skipped"] and s["documents"] == len(DOCS)
    assert s["tokens"] == sum(len(tok.encode(d)) for d in DOCS)
    assert s["bytes"] == sum(len(d.encode()) for d in DOCS) and s["mb_per_s"] > 0
    names = sorted(os.listdir(out))
    assert names == sorted(["meta.json", "tokenizer", "train.tokens.bin", "train.docs.npy", "train.sents.npy",
                            "validation.tokens.bin", "validation.docs.npy", "validation.sents.npy"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint and meta["dtype"] == "uint16"
    assert meta["sources"][0]["path"] == str(corpus) and meta["sources"][0]["size"] == corpus.stat().st_size
    assert meta["options"]["seed"] == 0 and meta["format_version"] == 1
    assert Tokenizer.from_pretrained(out / "tokenizer").fingerprint == tok.fingerprint

    train, val = TokenShards(out, "train"), TokenShards(out, "validation")
    assert train.n_docs + val.n_docs == len(DOCS) and 1 <= val.n_docs < 20
    assert train.tokens.dtype == np.uint16 and train.n_tokens == len(train.tokens)
    # every document is stored exactly as tok.encode() gives it, train in corpus order
    encoded = [tok.encode(d) for d in DOCS]
    got_train = [train.document(i).tolist() for i in range(train.n_docs)]
    got_val = [val.document(i).tolist() for i in range(val.n_docs)]
    assert sorted(got_train + got_val) == sorted(encoded)
    it = iter(encoded)
    assert all(any(doc == e for e in it) for doc in got_train)  # a subsequence of the corpus order
    # sentences: every document start is a sentence start, and the splitter's count is kept
    assert set(train.doc_offsets.tolist()) <= set(train.sent_offsets.tolist())
    by_ids = {tuple(e): d for e, d in zip(encoded, DOCS)}
    for i in range(train.n_docs):
        offs = train.sentence_offsets_of(i)
        sents = [np.asarray(train.tokens[a:b], dtype=np.int64) for a, b in zip(offs[:-1], offs[1:])]
        assert np.concatenate(sents).tolist() == got_train[i]
        assert len(sents) == len(split_sentences(by_ids[tuple(got_train[i])]))
        assert all(tok.decode(s).endswith(".") for s in sents)
    assert train.tokenizer.fingerprint == tok.fingerprint


def test_workers_give_identical_bytes(corpus, tok, tmp_path):
    _prep(corpus, tok, tmp_path / "a", workers=0)
    _prep(corpus, tok, tmp_path / "b", workers=2, batch_chars=300)
    for name in ("train.tokens.bin", "train.docs.npy", "train.sents.npy", "validation.tokens.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_split_is_deterministic_by_document(corpus, tok, tmp_path):
    s0 = _prep(corpus, tok, tmp_path / "s0", val_fraction=0.2)
    s0b = _prep(corpus, tok, tmp_path / "s0b", val_fraction=0.2, batch_chars=100)
    s1 = _prep(corpus, tok, tmp_path / "s1", val_fraction=0.2, seed=1)
    assert s0["splits"] == s0b["splits"]
    v0 = TokenShards(tmp_path / "s0", "validation")
    v1 = TokenShards(tmp_path / "s1", "validation")
    assert v0.tokens.tolist() != v1.tokens.tolist()
    # a tiny corpus still gets one validation document
    tiny = tmp_path / "tiny.txt"
    tiny.write_text(DOCS[0] + "\n\n" + DOCS[1] + "\n")
    st = _prep(tiny, tok, tmp_path / "tiny", val_fraction=0.01)
    assert st["splits"]["validation"]["documents"] == 1 and st["splits"]["train"]["documents"] == 1
    v = TokenShards(tmp_path / "tiny", "validation")
    assert v.document(0).tolist() in (tok.encode(DOCS[0]), tok.encode(DOCS[1]))
    assert v.sent_offsets.tolist()[-1] == v.n_tokens and v.doc_offsets.tolist() == [0, v.n_tokens]
    none = _prep(tiny, tok, tmp_path / "noval", val_fraction=0.0)
    assert none["splits"]["validation"]["documents"] == 0
    empty_val = TokenShards(tmp_path / "noval", "validation")
    assert empty_val.n_tokens == 0


def test_split_hints_make_a_test_split(tok, tmp_path, monkeypatch):
    hinted = [Document(d, "x", i + 1, ("train", "validation", "test")[i % 3]) for i, d in enumerate(DOCS[:30])]
    monkeypatch.setattr(prep_mod, "iter_documents", lambda *a, **k: iter(hinted))
    f = tmp_path / "dummy.txt"
    f.write_text("unused")
    s = _prep(f, tok, tmp_path / "out")
    assert {k: v["documents"] for k, v in s["splits"].items()} == {"train": 10, "validation": 10, "test": 10}
    assert TokenShards(tmp_path / "out", "test").document(0).tolist() == tok.encode(DOCS[2])


def test_rerun_is_a_noop_and_changes_rebuild(corpus, tok, tmp_path):
    out = tmp_path / "data"
    _prep(corpus, tok, out)
    stamp = (out / "train.tokens.bin").stat().st_mtime_ns
    again = _prep(corpus, tok, out)
    assert again["skipped"] and again["tokens"] > 0
    assert (out / "train.tokens.bin").stat().st_mtime_ns == stamp
    assert not _prep(corpus, tok, out, force=True)["skipped"]
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("\nA brand new document. With two sentences.\n")
    changed = _prep(corpus, tok, out)
    assert not changed["skipped"] and changed["documents"] == len(DOCS) + 1
    other_tok = Tokenizer.train(DOCS, kind="bpe", vocab_size=300)
    assert not _prep(corpus, other_tok, out)["skipped"]
    assert TokenShards(out).meta["tokenizer"]["kind"] == "bpe"


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_leaves_nothing_that_looks_complete(corpus, tok, tmp_path, monkeypatch, workers):
    out = tmp_path / "data"
    calls = {"n": 0}
    real = prep_mod._dispatch

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep_mod, "_dispatch", flaky)
    with pytest.raises(KeyboardInterrupt):
        _prep(corpus, tok, out, batch_chars=200, workers=workers)
    assert not out.exists() and os.listdir(tmp_path) == [corpus.name]
    with pytest.raises(DataError, match="no such prepared dataset"):
        TokenShards(out)
    monkeypatch.setattr(prep_mod, "_dispatch", real)
    _prep(corpus, tok, out)
    before = (out / "train.tokens.bin").read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(prep_mod, "_dispatch", flaky)
    with pytest.raises(KeyboardInterrupt):
        _prep(corpus, tok, out, batch_chars=200, force=True, workers=workers)
    assert (out / "train.tokens.bin").read_bytes() == before  # the old complete version survives
    assert sorted(os.listdir(tmp_path)) == sorted([corpus.name, "data"])


def test_refuses_to_overwrite_other_folders(corpus, tok, tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(DataError, match="refusing to overwrite"):
        _prep(corpus, tok, other)
    assert (other / "thesis.tex").exists()


def test_dtype_choice():
    assert token_dtype(8000) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(250_000) == np.uint32


def test_shards_report_incomplete_data(corpus, tok, tmp_path):
    out = tmp_path / "data"
    _prep(corpus, tok, out)
    with pytest.raises(DataError, match="no split 'test'"):
        TokenShards(out, "test")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no meta.json"):
        TokenShards(tmp_path / "half")
    with open(out / "train.tokens.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="incomplete"):
        TokenShards(out)


# ---------------------------------------------------------------------------------- reference
# Documents that stress the vectorised worker: abbreviations and initials at document edges,
# punctuation + quotes + trailing spaces at the end, line breaks, non-ASCII (accents dropped by the
# normaliser, an ellipsis character, CJK, emoji), NUL (the batch regex's joiner) inside a document,
# unknown words, a document without tokens, and duplicates (same split).
TRICKY = [
    "Mr. Smith went to Washington. He said hi! Did he? Yes.",
    "r. Tolkien wrote this. J. R. R. Tolkien wrote e.g. that.  ",
    'He said "Stop." Then he left\u2026 And then? (Really.) OK',
    "line one\nline two.\n\n  line three  \nlower. case stays",
    "Caf\u00e9 cr\u00e8me. \u00c9t\u00e9 arriv\u00e9! \u4e2d\u6587\u53e5\u5b50\u3002 Next \U0001f600 one.",
    "ends with abbreviation Mr.",
    "\u0301\u0301. A start on a dropped accent. \u0301Again.",
    "nul\x00inside. Really\x00. Yes",
    "\x01\x02",
    "",
    "Zzqx wvvk! Qqq? Xx.",
    "Mr. Smith went to Washington. He said hi! Did he? Yes.",
] + DOCS[:25]


def _reference(tok, texts, seed=0, val_fraction=0.0):
    """The straightforward encoding prepare must reproduce: one document at a time."""
    import hashlib

    out = {s: ([], [0], [0]) for s in ("train", "validation")}
    for text in texts:
        enc = tok.backend.encode(text, add_special_tokens=False)
        if not enc.ids:
            continue
        starts = [0]
        for c in sentence_starts(text):
            t = enc.char_to_token(c)
            if t is not None and starts[-1] < t < len(enc.ids):
                starts.append(t)
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest(), "little")
        ids, docs, sents = out["validation" if h < int(val_fraction * 2**64) else "train"]
        sents[-1:] = [docs[-1] + s for s in starts] + [docs[-1] + len(enc.ids)]
        ids.extend(enc.ids)
        docs.append(docs[-1] + len(enc.ids))
    return out


def test_sentence_starts_batch_equals_one_document_at_a_time():
    texts = TRICKY + ["", "A.", "x", "Hi. \x00. Yo"]
    doc, offset = sentence_starts_batch(texts)
    want = [(d, c) for d, t in enumerate(texts) for c in sentence_starts(t)]
    assert list(zip(doc.tolist(), offset.tolist())) == want and len(want) > 20
    assert all(len(a) == 0 for a in sentence_starts_batch([]))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize("workers, batch_chars, val_fraction", [(0, 1 << 19, 0.0), (2, 150, 0.3), (0, 40, 0.3)])
def test_shards_equal_a_reference_encoding(tmp_path, kind, workers, batch_chars, val_fraction):
    tok = Tokenizer.train(DOCS + TRICKY, kind=kind, vocab_size=200)
    hinted = [Document(t, "x", i + 1) for i, t in enumerate(TRICKY)]
    src = tmp_path / "dummy.txt"
    src.write_text("unused")
    mp = pytest.MonkeyPatch()
    mp.setattr(prep_mod, "iter_documents", lambda *a, **k: iter(hinted))
    try:
        s = _prep(src, tok, tmp_path / "out", workers=workers, batch_chars=batch_chars, val_fraction=val_fraction)
    finally:
        mp.undo()
    ref = _reference(tok, TRICKY, val_fraction=val_fraction)
    empty = [t for t in TRICKY if not tok.encode(t, add_special_tokens=False)]
    assert s["dropped_documents"] == len(empty) >= 1
    assert s["documents"] == len(TRICKY) - len(empty)
    assert s["bytes"] == sum(len(t.encode()) for t in TRICKY if t not in empty)
    for split, (ids, docs, sents) in ref.items():
        sh = TokenShards(tmp_path / "out", split)
        assert sh.tokens.tolist() == ids, split
        assert sh.doc_offsets.tolist() == docs and sh.sent_offsets.tolist() == sents, split
    assert len(ref["validation"][1]) > 2 if val_fraction else len(ref["validation"][1]) == 1
    assert len(ref["train"][2]) - len(ref["train"][1]) > 25  # documents with several sentences


class _FakeEncoding:
    """Tokens of 8 characters each, except where ``holes`` say a character has no token, and
    token indices that can go backwards (``back``): the cases real tokenizers rarely produce."""

    def __init__(self, text, back):
        self.ids, self.back = [7] * ((len(text) + 7) // 8), back

    def __len__(self):
        return len(self.ids)

    def char_to_token(self, c):
        if c % 7 == 0:
            return None
        return max(c // 8 - 2, 0) if self.back and c % 5 == 0 else c // 8


class _FakeBackend:
    def encode_batch(self, texts, add_special_tokens):
        return [_FakeEncoding(t, i % 2) for i, t in enumerate(texts)]


def test_sentence_tokens_keep_only_increasing_starts():
    # boundaries inside one token, on characters without a token, and going backwards: each document
    # keeps exactly the starts that the one-document loop keeps
    texts = [" ".join(f"{w}." for w in WORDS).title(), "x", "\n".join(f"{w}!" for w in WORDS)] * 3
    ids, lens, sent_rel, n_sents, codes, doc_bytes, n_bytes, dropped = prep_mod._encode_docs(
        _FakeBackend(), texts, [None] * len(texts), np.dtype(np.uint16), 0, 0.0)
    want = []
    for i, t in enumerate(texts):
        enc, starts = _FakeEncoding(t, i % 2), [0]
        for c in sentence_starts(t):
            tk = enc.char_to_token(c)
            if tk is not None and starts[-1] < tk < len(enc):
                starts.append(tk)
        want.append(starts)
    assert n_sents.tolist() == [len(w) for w in want] and sent_rel.tolist() == sum(want, [])
    assert lens.tolist() == [len(_FakeEncoding(t, 0)) for t in texts] and dropped == 0
    assert any(len(w) < len(sentence_starts(t)) + 1 for w, t in zip(want, texts))  # the filter did drop some


def test_batches_shrink_at_the_end_and_keep_every_document_in_order():
    docs = [Document("x" * 100, "f", i + 1, ("test" if i == 5 else None)) for i in range(200)]
    batches = list(prep_mod._batches(iter(docs), batch_chars=1000, total_bytes=20_000))
    sizes = [sum(map(len, texts)) for texts, _ in batches]
    assert sizes == [1000] * 17 + [200] * 15  # full batches until 4 batches are left, then 1/8 (whole docs)
    assert [t for texts, _ in batches for t in texts] == [d.text for d in docs]
    assert [h for _, hints in batches for h in hints] == [d.split for d in docs]
    assert [len(b[0]) for b in prep_mod._batches(iter(docs), 10**9, max_docs=64)] == [64, 64, 64, 8]
    # the input size is in UTF-8 bytes, so the end is judged in bytes, not characters
    wide = [Document("\u00e9" * 100, "f", i + 1) for i in range(100)]
    sizes = [sum(map(len, t)) for t, _ in prep_mod._batches(iter(wide), batch_chars=1000, total_bytes=20_000)]
    assert sizes == [1000] * 9 + [200] * 5  # 18,000 of 20,000 bytes seen after 9,000 characters


# ---------------------------------------------------------------------------------- CLI
def test_cli_prepare_prints_summary(corpus, tok, tmp_path, capsys):
    tok.save(tmp_path / "tok")
    rc = main(["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(corpus), "--out",
               str(tmp_path / "d"), "--workers", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and f"documents {len(DOCS)}" in out and "tokens " in out and "MB/s" in out
    rc = main(["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(corpus), "--out",
               str(tmp_path / "d"), "--no-progress"])
    assert rc == 0 and "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: (p / "bad.txt").write_bytes(b"good line\n\xff\xfe\n") and p / "bad.txt", "bad.txt:2: invalid UTF-8"),
        (lambda p: (p / "empty.txt").write_bytes(b"") or p / "empty.txt", "empty.txt: no documents: the file is empty"),
        (lambda p: (p / "a.csv").write_text("id,body\n1,hello\n") and p / "a.csv", "a.csv:1: no column 'text'"),
        (lambda p: ((p / "dir").mkdir(), (p / "dir" / "x.bin").write_bytes(b"1"))[0] or p / "dir", "folder has no text files"),
    ],
    ids=["invalid-utf8", "empty-file", "csv-without-column", "folder-without-text"],
)
def test_cli_bad_inputs(tok, tmp_path, capsys, setup, message):
    tok.save(tmp_path / "tok")
    path = setup(tmp_path)
    rc = main(["prepare", "--tokenizer", str(tmp_path / "tok"), "--input", str(path), "--out",
               str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- long documents
# byte-level BPE needs more than its 256-byte alphabet to learn any merge
_LONG_VOCAB = {"wordpiece": 200, "bpe": 400, "unigram": 200}


def _long_docs():
    """Documents far longer than the test's pieces: the tricky ones joined by every kind of gap
    (one space, several, a line break, none), plus one without any whitespace."""
    body = [t for t in TRICKY if t.strip()]
    return [
        " ".join(body * 3),
        "   ".join(body) + "\n" + "\n\n".join(body),
        "".join(body),
        "x" * 3000,
        "Caf\u00e9 \u4e2d\u6587\u53e5\u5b50\u3002 " * 120,
        "Alpha beta. " * 30 + "y" * 700 + " gamma delta." * 40,  # no cut for 700 characters: pieces grow
    ]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize("workers", [0, 2])
def test_long_documents_in_pieces_equal_the_whole_encoding(tmp_path, kind, workers):
    tok = Tokenizer.train(DOCS + TRICKY, kind=kind, vocab_size=_LONG_VOCAB[kind])
    texts = _long_docs() + TRICKY[:6]
    docs = [Document(t, "x", i + 1) for i, t in enumerate(texts)]
    src = tmp_path / "dummy.txt"
    src.write_text("unused")
    mp = pytest.MonkeyPatch()
    mp.setattr(prep_mod, "iter_documents", lambda *a, **k: iter(docs))
    calls = []
    real = prep_mod._encode_long
    mp.setattr(prep_mod, "_encode_long", lambda *a: calls.append(len(a[1])) or real(*a))
    try:
        _prep(src, tok, tmp_path / "out", workers=workers, piece_chars=64, val_fraction=0.3)
    finally:
        mp.undo()
    if workers == 0:
        assert len(calls) == 6  # every long document went the piece path (> 4 pieces of 64)
    ref = _reference(tok, texts, val_fraction=0.3)
    for split, (ids, docs_, sents) in ref.items():
        sh = TokenShards(tmp_path / "out", split)
        assert sh.tokens.tolist() == ids, split
        assert sh.doc_offsets.tolist() == docs_ and sh.sent_offsets.tolist() == sents, split


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_pieces_cut_cleanly_and_cover_the_text(kind):
    tok = Tokenizer.train(DOCS + TRICKY, kind=kind, vocab_size=_LONG_VOCAB[kind])
    text = _long_docs()[0]
    spans = list(prep_mod._pieces(tok.backend, text, 64))
    assert spans[0][0] == 0 and spans[-1][1] == len(text) and len(spans) > 20
    assert all(a < b == c for (a, b), (c, _) in zip(spans, spans[1:]))
    assert max(b - a for a, b in spans) <= 96 + 32  # about a piece each: no cut needed a longer search
    enc = tok.backend.encode_batch([text[a:b] for a, b in spans], add_special_tokens=False)
    assert sum((e.ids for e in enc), []) == tok.backend.encode(text, add_special_tokens=False).ids
    # 700 characters without a place to cut: the piece grows past them, the rest is cut as usual
    text2 = _long_docs()[-1]
    spans2 = list(prep_mod._pieces(tok.backend, text2, 64))
    assert max(b - a for a, b in spans2) > 700 and len(spans2) > 10
    enc2 = tok.backend.encode_batch([text2[a:b] for a, b in spans2], add_special_tokens=False)
    assert sum((e.ids for e in enc2), []) == tok.backend.encode(text2, add_special_tokens=False).ids
    # one word without whitespace has no place to cut: one piece, tokenized whole
    assert list(prep_mod._pieces(tok.backend, "x" * 1000, 64)) == [(0, 1000)]
    # a cut inside a word changes its tokens: the check refuses it
    word = text.index(" epsilon") + 1
    assert prep_mod._cut_is_clean(tok.backend, text, word - 1)  # before the space: clean for all three
    assert not any(prep_mod._cut_is_clean(tok.backend, text, i) for i in range(word + 1, word + 4))


def test_char_to_token_vectorised_equals_the_encoding():
    tok = Tokenizer.train(DOCS + TRICKY, kind="bpe", vocab_size=_LONG_VOCAB["bpe"])
    text = " ".join(TRICKY)
    enc = tok.backend.encode(text, add_special_tokens=False)
    chars = np.arange(len(text))
    want = [-1 if t is None else t for t in map(enc.char_to_token, chars.tolist())]
    assert prep_mod._char_to_token(enc, chars).tolist() == want


def _one_line(n_chars: int, seed: int = 0) -> str:
    """A deterministic single line of about ``n_chars`` characters: words, sentences, no newline."""
    rng = np.random.default_rng(seed)
    n_words = n_chars // 6
    words = np.array(WORDS + ["Mr.", "e.g.", "caf\u00e9", "42"])[rng.integers(0, len(WORDS) + 4, n_words)]
    ends = np.where(rng.random(n_words) < 0.08, np.array(list(".!?"))[rng.integers(0, 3, n_words)], "")
    return " ".join(np.char.add(words, ends).tolist())


_MEASURE = r"""
import sys
from transferlab.data import prepare_corpus
from transferlab.tokenizer import Tokenizer

def status(key):  # kB -> bytes; VmHWM is this process's own peak (ru_maxrss would include the
    with open("/proc/self/status") as f:  # forking parent's resident set, pytest's, copied before exec)
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

tok = Tokenizer.from_pretrained(sys.argv[1])
prepare_corpus(sys.argv[2], tok, sys.argv[3] + "-warm", workers=0, progress=False)  # imports, first allocations
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set (Linux >= 4.0)
except OSError:
    pass
base = status("VmRSS")
prepare_corpus(sys.argv[4], tok, sys.argv[3], workers=0, progress=False)
print(status("VmHWM") - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set from /proc (Linux)")
def test_one_huge_line_needs_bounded_memory(tmp_path, tok):
    # Peak resident set over the one before the run (one process, workers=0), for a 2.6 MB
    # single-line document, per input byte. Measured with this harness: 172 when the line was
    # tokenized whole (its Encoding: ids, offsets, token strings, masks), 10.5-11 in pieces (the
    # text, its UTF-8 copy for the split hash, the ids, a few pieces' Encodings) over 4 runs. The
    # bound of 40 leaves ~4x room for allocator noise and fails ~4x short of the old behaviour.
    import subprocess
    import sys

    text = _one_line(3_000_000)
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_text(text, encoding="utf-8")
    small.write_text("\n\n".join(DOCS), encoding="utf-8")
    tok.save(tmp_path / "tok")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "tok"), str(small), str(tmp_path / "out"), str(big)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    delta = int(run.stdout.split()[-1])
    assert delta < 40 * len(text.encode()), f"peak RSS grew by {delta / 1e6:.0f} MB for a {len(text) / 1e6:.1f} MB line"
    sh = TokenShards(tmp_path / "out", "train")
    assert sh.n_docs == 1 and sh.n_tokens > len(text) // 8 and sh.n_sents > 1000


def test_long_document_with_default_pieces_equals_the_reference(tmp_path, tok):
    # over the long-document threshold (4 pieces of 64K): the default piece path, checked
    # against one whole-document encoding with char_to_token for every sentence start
    text = _one_line(6 * prep_mod.PIECE_CHARS, seed=1)
    assert len(text) > prep_mod.LONG_DOC_PIECES * prep_mod.PIECE_CHARS
    f = tmp_path / "one.txt"
    f.write_text(text, encoding="utf-8")
    calls = []
    real = prep_mod._encode_long
    mp = pytest.MonkeyPatch()
    mp.setattr(prep_mod, "_encode_long", lambda *a: calls.append(1) or real(*a))
    try:
        _prep(f, tok, tmp_path / "out", val_fraction=0.0)
    finally:
        mp.undo()
    assert calls == [1]
    ids, docs, sents = _reference(tok, [text])["train"]
    sh = TokenShards(tmp_path / "out", "train")
    assert sh.tokens.tolist() == ids and sh.doc_offsets.tolist() == docs and sh.sent_offsets.tolist() == sents
    assert len(sents) > 300
