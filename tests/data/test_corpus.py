"""Corpus reading (text/JSONL/CSV/TSV, folders, errors with file and line) and sentence splitting."""

from __future__ import annotations

import gzip
import json

import pytest

from transferlab.data import read_documents, split_sentences
from transferlab.data.corpus import resolve_inputs
from transferlab.data.sentences import sentence_starts
from transferlab.errors import DataError


def _texts(*args, **kw):
    return [d.text for d in read_documents(*args, **kw)]


# ---------------------------------------------------------------------------------- formats
def test_text_blank_line_and_line_and_file_modes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first doc line 1\nline 2\n\n\n  second doc  \n\nthird\n", encoding="utf-8")
    docs = list(read_documents(f))
    assert [d.text for d in docs] == ["first doc line 1\nline 2", "second doc", "third"]
    assert [d.line for d in docs] == [1, 5, 7] and docs[0].source == str(f)
    assert _texts(f, doc_sep="line") == ["first doc line 1", "line 2", "second doc", "third"]
    assert _texts(f, doc_sep="file") == ["first doc line 1\nline 2\n\n\n  second doc  \n\nthird"]


def test_jsonl_csv_tsv_and_gzip(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"body": "x", "text": " two "}) + "\n")
    assert _texts(j) == ["one", "two"]
    c = tmp_path / "a.csv"
    c.write_text('id,text\n1,"multi\nline, with comma"\n2,plain\n3,\n', encoding="utf-8")
    docs = list(read_documents(c))
    assert [d.text for d in docs] == ["multi\nline, with comma", "plain"] and [d.line for d in docs] == [2, 4]
    t = tmp_path / "a.tsv"
    t.write_text("body\tlabel\nhello there\tpos\n", encoding="utf-8")
    assert _texts(t, text_column="body") == ["hello there"]
    g = tmp_path / "b.jsonl.gz"
    with gzip.open(g, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "zipped"}) + "\n")
    assert _texts(g) == ["zipped"]
    weird = tmp_path / "notes.data"
    weird.write_text('{"text": "forced"}\n')
    assert _texts(weird, format="jsonl") == ["forced"]


def test_folder_is_read_recursively_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "see"}\n')
    (tmp_path / "empty.txt").write_text("")  # empty files inside a folder are fine
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("hidden")
    assert _texts(tmp_path) == ["ay", "bee", "see"]
    assert _texts([tmp_path / "a.txt", tmp_path / "b.txt"]) == ["ay", "bee"]
    assert [s.size for s in resolve_inputs(tmp_path / "a.txt")] == [2]


def test_bom_is_ignored(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufefftext\nhello\n".encode("utf-8"))
    assert _texts(f) == ["hello"]


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("bad.txt", b"fine\nalso fine\nbro\xe9ken\n", {}, r"bad.txt:3: invalid UTF-8 \(byte 0xe9 at column 4\)"),
        ("empty.txt", b"", {}, r"empty.txt: no documents: the file is empty"),
        ("blank.txt", b"\n \n\n", {}, r"blank.txt: no documents: the file has no text"),
        ("a.csv", b"id,body\n1,hi\n", {}, r"a.csv:1: no column 'text' in the header \(columns: id, body\)"),
        ("a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', {}, r"a.jsonl:2: no field 'text'"),
        ("b.jsonl", b'{"text": "ok"}\n{"text": oops}\n', {}, r"b.jsonl:2: invalid JSON"),
        ("c.jsonl", b'{"text": 3}\n', {}, r"c.jsonl:1: field 'text' must be a string"),
        ("d.csv", b"text,id\n\"unterminated\n", {}, r"d.csv:\d+: malformed CSV"),
    ],
)
def test_bad_inputs_name_file_and_line(tmp_path, name, content, kwargs, message):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(read_documents(f, **kwargs))


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_documents(tmp_path / "nope.txt")
    (tmp_path / "only.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="folder has no text files"):
        read_documents(tmp_path)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "a.txt").write_text("")
    (sub / "b.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"sub: no documents: all 2 files in the folder are empty"):
        list(read_documents(sub))
    with pytest.raises(DataError, match="unknown format"):
        read_documents(sub, format="xml")
    with pytest.raises(DataError, match="unknown doc_sep"):
        read_documents(sub, doc_sep="para")


def test_unreadable_file(tmp_path, monkeypatch):
    import builtins
    import os

    f = tmp_path / "locked.txt"
    f.write_text("secret")
    f.chmod(0)
    if os.access(f, os.R_OK):
        # Running as root (as CI does): permissions are not enforced, so make the open fail the
        # way it does for an ordinary user.
        real_open = builtins.open

        def deny(path, *a, **kw):
            if str(path) == str(f):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **kw)

        monkeypatch.setattr(builtins, "open", deny)
    try:
        with pytest.raises(DataError, match="locked.txt: cannot read"):
            list(read_documents(f))
    finally:
        f.chmod(0o644)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    f = tmp_path / "cut.txt.gz"
    f.write_bytes(gzip.compress(b"a document\n\n" * 500)[:-40])
    with pytest.raises(DataError, match=r"cut.txt.gz:\d+: cannot read"):
        list(read_documents(f))


def test_reading_streams(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("doc\n\n" * 1000 + "\xff")  # a valid file: \xff is written as UTF-8 here
    it = read_documents(f)
    assert next(it).text == "doc"  # nothing was read beyond the first document yet


# ---------------------------------------------------------------------------------- sentences
def _sents(text):
    return [text[a:b] for a, b in split_sentences(text)]


def test_sentence_splitter_rules():
    assert _sents("Mr. Smith went to Washington. He said hi! Did he? Yes.") == [
        "Mr. Smith went to Washington.", "He said hi!", "Did he?", "Yes."]
    assert _sents("The U.S. economy grew 3.5% in Jan. last year. Then J. R. R. Tolkien wrote e.g. this.") == [
        "The U.S. economy grew 3.5% in Jan. last year.", "Then J. R. R. Tolkien wrote e.g. this."]
    assert _sents('He said "Stop." Then he left... And then? (Really.) OK') == [
        'He said "Stop."', "Then he left...", "And then?", "(Really.)", "OK"]
    assert _sents("line one\nline two.\n\n  line three  \nlower. case stays") == [
        "line one", "line two.", "line three", "lower. case stays"]
    assert _sents("   ") == [] and _sents("One") == ["One"] and _sents("  Padded.  ") == ["Padded."]


def test_sentence_starts_match_spans():
    text = "First one. Second one! Third?\nFourth"
    spans = split_sentences(text)
    assert sentence_starts(text) == [a for a, _ in spans[1:]]


# ---------------------------------------------------------------------------------- --input typos
@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "--vocab-size", "50", "--out", "{tmp}/tok", "--input"],
    ["tokenizer", "train", "--vocab-size", "50", "--out", "{tmp}/tok", "--input", "builtin:ptb", "--input"],
    ["prepare", "--tokenizer", "builtin:minilm", "--out", "{tmp}/data", "--input"],
    ["features", "--model", "builtin:minilm", "--output", "{tmp}/f.npy", "--input"],
])
@pytest.mark.parametrize("typo", ["corpus_typo", "data/corpus.txt", "corpus.jsonl"])
def test_missing_input_path_is_an_error_not_training_text(tmp_path, capsys, monkeypatch, argv, typo):
    # `tokenizer train --input corpus_typo` used to train a 20-token vocabulary on the string itself
    from transferlab.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + [typo])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err, err
    assert f"{typo}: no such file or folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
