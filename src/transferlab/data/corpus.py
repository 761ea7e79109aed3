"""Streaming corpus reading: text files and folders, JSONL, CSV/TSV and built-in corpora.

Everything is a generator of :class:`Document` (text + where it came from), so a corpus of any
size is read in constant memory. Every way a file can be wrong (unreadable, not UTF-8, empty, a
missing field or column, malformed JSON/CSV) raises :class:`~transferlab.errors.DataError` whose
message starts with ``path:line:`` and says what was expected.

Formats (``format=``; inferred from the suffix when ``None``, ``.gz`` is read transparently):

* ``text``: documents separated by blank lines (``doc_sep="blank"``), one per line
  (``doc_sep="line"``) or one per file (``doc_sep="file"``);
* ``jsonl``: one JSON object per line, the document in ``text_column``;
* ``csv`` / ``tsv``: a header row naming the columns, the document in ``text_column``.

Languages: a JSONL field or CSV/TSV column named ``lang_column`` (``lang``), when present, gives
each document's language; otherwise the language given for its input (``languages``, from
``prepare --language``); built-in corpora declare their own. A declared language whose script
does not match the text (Latin letters declared ``ru``) is counted and reported as one warning
per input.

A folder is read recursively in sorted path order; without ``format`` only files with a known
suffix are read. ``builtin:NAME`` reads a built-in corpus (see :mod:`transferlab.data.builtin`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from ..errors import DataError
from .documents import BUILTIN_PREFIX, Document, Source  # re-exported: their old home

__all__ = [
    "Document",
    "Source",
    "read_documents",
    "iter_documents",
    "resolve_inputs",
    "infer_format",
    "FORMATS",
    "DOC_SEPS",
    "names",
    "quote",
    "parse_json_line",
]

FORMATS = ("text", "jsonl", "csv", "tsv")
DOC_SEPS = ("blank", "line", "file")
_SUFFIX_FORMAT = {
    ".txt": "text", ".text": "text", ".md": "text", ".raw": "text", ".tokens": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
}

# one CSV field may hold a whole book
csv.field_size_limit(2**31 - 1)


def infer_format(path: str | Path) -> str | None:
    """The format implied by a file's suffix (``.gz`` looked through), or ``None``."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None


def _check_options(format: str | None, doc_sep: str) -> None:
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown format {format!r}; expected one of: {', '.join(FORMATS)}")
    if doc_sep not in DOC_SEPS:
        raise DataError(f"unknown doc_sep {doc_sep!r}; expected one of: {', '.join(DOC_SEPS)}")


def resolve_inputs(
    inputs: str | Path | Iterable[str | Path], format: str | None = None, flag: str | None = None
) -> list[Source]:
    """Expand inputs (files, folders, ``builtin:`` names) into a list of :class:`Source`.

    Args:
        inputs: one input or several.
        format: force this format for every file (folders then include files of any suffix).
        flag: the command-line option the inputs came from (``"--input"``); errors then start
            with it, so ``--input corpus_typo`` reads as a typo rather than as a corpus.

    Returns:
        Sources in a stable order, with sizes and modification times (used to decide whether a
        prepared dataset is up to date).

    Raises:
        DataError: a path that does not exist, or a folder without text files.
    """
    _check_options(format, "blank")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[Source] = []
    for item in inputs:
        s = str(item)
        if s.startswith(BUILTIN_PREFIX):
            from .builtin import corpus_source

            out.append(corpus_source(s))
            continue
        p = Path(s)
        try:
            st = p.stat()
        except FileNotFoundError:
            hint = " (inputs are files, folders or builtin:NAME)" if flag else ""
            raise DataError(f"{flag + ' ' if flag else ''}{p}: no such file or folder{hint}") from None
        except OSError as e:
            raise DataError(f"{flag + ' ' if flag else ''}{p}: cannot read ({e.strerror or e})") from None
        if p.is_dir():
            files = []
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") for part in rel) or not f.is_file():
                    continue
                fmt = format or infer_format(f)
                if fmt:
                    fst = f.stat()
                    files.append(Source(str(f), fmt, fst.st_size, fst.st_mtime, str(p)))
            if not files:
                kinds = ", ".join(f"*{k}" for k in _SUFFIX_FORMAT)
                raise DataError(f"{p}: folder has no text files (looked for {kinds}); pass --format to read other files")
            out.extend(files)
        else:
            out.append(Source(str(p), format or infer_format(p) or "text", st.st_size, st.st_mtime, str(p)))
    if not out:
        raise DataError("no inputs given")
    return out


def _open_binary(path: str) -> io.BufferedIOBase:
    try:
        if path.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text file (``.gz`` too) decoded as strict UTF-8, line
    endings kept, a leading BOM dropped; every fault a one-line :class:`DataError` naming the
    file and line (the one reader of corpus and task files)."""
    path = str(path)
    with _open_binary(path) as f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); re-encode the file as UTF-8"
                    ) from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line
        except (OSError, EOFError, zlib.error) as e:  # e.g. a truncated or damaged .gz, a vanished file
            raise DataError(f"{path}:{lineno + 1}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def quote(value: object, width: int = 60) -> str:
    """``repr(value)`` for a message, cut to about ``width`` characters: a 100K-character field
    quoted whole is one line, but not one anybody can read."""
    r = repr(value)
    if len(r) <= width:
        return r
    close = r[-1] if r[-1] in "'\"]})" else ""  # keep the closing quote or bracket
    return f"{r[: width - 4]}...{close}"


def names(items: Iterable[object], limit: int = 20, width: int = 40) -> str:
    """Column, field or label names for a one-line message: comma-separated, a name with a line
    break or another control character shown as its repr, long names and long lists cut."""
    out = []
    items = list(items)
    for x in items[:limit]:
        t = str(x)
        t = t if t.isprintable() else repr(t)
        out.append(t if len(t) <= width else t[: width - 3] + "...")
    if len(items) > limit:
        out.append(f"... {len(items) - limit} more")
    return ", ".join(out) or "none"


def parse_json_line(line: str, where: str) -> object:
    """``json.loads(line)``, every failure a :class:`DataError` starting with ``where``.

    Besides malformed JSON, the standard library raises a plain ``ValueError`` for an integer of
    more than 4,300 digits and ``RecursionError`` for arrays nested some thousand levels deep;
    both are malformed input here, not crashes.
    """
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # int_max_str_digits
        raise DataError(f"{where}: invalid JSON ({str(e).split(':')[0].strip()})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON (nested too deeply)") from None


def _read_text(path: str, doc_sep: str) -> Iterator[Document]:
    if doc_sep == "line":
        for n, line in read_lines(path):
            t = line.strip()
            if t:
                yield Document(t, path, n)
    elif doc_sep == "blank":
        buf: list[str] = []
        first = 0
        for n, line in read_lines(path):
            t = line.rstrip("\r\n")
            if t.strip():
                if not buf:
                    first = n
                buf.append(t)
            elif buf:
                yield Document("\n".join(buf).strip(), path, first)
                buf = []
        if buf:
            yield Document("\n".join(buf).strip(), path, first)
    else:  # one document per file
        text = "".join(line for _, line in read_lines(path)).strip()
        if text:
            yield Document(text, path, 1)


def _row_lang(value: object, where: str) -> str | None:
    """A row's declared language (None when empty), checked against the known codes."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    from .multilingual import check_language

    if not isinstance(value, str):
        raise DataError(f"{where}: expected a language code string, got {type(value).__name__}")
    return check_language(value, where)


def _read_jsonl(path: str, field: str, lang_field: str = "lang") -> Iterator[Document]:
    for n, line in read_lines(path):
        if not line.strip():
            continue
        obj = parse_json_line(line, f"{path}:{n}")
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object with a {field!r} field, got {type(obj).__name__}")
        if field not in obj:
            raise DataError(f"{path}:{n}: no field {field!r} (fields: {names(obj)}); pass --text-column")
        text = obj[field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise DataError(f"{path}:{n}: field {field!r} must be a string, got {type(text).__name__}")
        text = text.strip()
        if text:
            lang = _row_lang(obj.get(lang_field), f"{path}:{n}: field {lang_field!r}") if lang_field in obj else None
            yield Document(text, path, n, None, lang)


def _read_csv(path: str, column: str, delimiter: str, lang_column: str = "lang") -> Iterator[Document]:
    lines = read_lines(path)
    reader = csv.reader((line for _, line in lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        if column not in header:
            raise DataError(
                f"{path}:1: no column {column!r} in the header (columns: {names(header)}); pass --text-column"
            )
        idx = header.index(column)
        li = header.index(lang_column) if lang_column in header else -1
        start = reader.line_num + 1
        for row in reader:
            if not row:
                start = reader.line_num + 1
                continue
            if idx >= len(row):
                raise DataError(f"{path}:{start}: row has {len(row)} fields but {column!r} is field {idx + 1} of the header")
            text = row[idx].strip()
            if text:
                lang = _row_lang(row[li], f"{path}:{start}: column {lang_column!r}") if 0 <= li < len(row) else None
                yield Document(text, path, start, None, lang)
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None


def _read_file(src: Source, text_column: str, doc_sep: str, lang_column: str = "lang") -> Iterator[Document]:
    if src.format == "text":
        return _read_text(src.path, doc_sep)
    if src.format == "jsonl":
        return _read_jsonl(src.path, text_column, lang_column)
    return _read_csv(src.path, text_column, "," if src.format == "csv" else "\t", lang_column)


def _with_language(docs: Iterator[Document], default: str | None, where: str) -> Iterator[Document]:
    """Give documents without a language ``default``; warn once (at the end) about documents
    whose script is not their declared language's."""
    from .multilingual import script_mismatch

    bad, first, total = 0, "", 0
    for doc in docs:
        if doc.lang is None and default is not None:
            doc = doc._replace(lang=default)
        if doc.lang is not None:
            total += 1
            s = script_mismatch(doc.text[:256], doc.lang)
            if s is not None:
                bad += 1
                first = first or f"{doc.source}:{doc.line}: declared {doc.lang!r}, written in {s} script"
        yield doc
    if bad:
        print(f"warning: {where}: {bad} of {total} documents are not in their declared language's script "
              f"(first: {first})", file=sys.stderr)


def iter_documents(
    sources: list[Source], text_column: str = "text", doc_sep: str = "blank",
    languages: Mapping[str, str] | None = None, lang_column: str = "lang",
) -> Iterator[Document]:
    """Stream the documents of resolved :class:`Source` s (see :func:`resolve_inputs`).

    Args:
        sources: from :func:`resolve_inputs`.
        text_column, doc_sep: see :func:`read_documents`.
        languages: input as given (``Source.group``) -> language code of its documents (a row's
            ``lang_column`` field still wins).
        lang_column: the JSONL field / CSV column holding a row's language, when present.

    Returns:
        An iterator of :class:`Document`.
    """
    _check_options(None, doc_sep)
    group_counts: dict[str, int] = {}
    languages = languages or {}
    for i, src in enumerate(sources):
        if src.is_builtin:
            from .builtin import iter_corpus

            yield from iter_corpus(src.path)
            continue
        count = 0
        docs = _read_file(src, text_column, doc_sep, lang_column)
        for doc in _with_language(docs, languages.get(src.group), src.path):
            count += 1
            yield doc
        in_folder = src.group and src.group != src.path
        if not in_folder and count == 0:
            why = "the file is empty" if src.size == 0 else "the file has no text (only blank lines or empty fields)"
            raise DataError(f"{src.path}: no documents: {why}")
        if in_folder:
            group_counts[src.group] = group_counts.get(src.group, 0) + count
            last_of_group = i + 1 == len(sources) or sources[i + 1].group != src.group
            if last_of_group and group_counts[src.group] == 0:
                n = sum(s.group == src.group for s in sources)
                raise DataError(f"{src.group}: no documents: all {n} files in the folder are empty")


def read_documents(
    path_or_builtin: str | Path | Iterable[str | Path],
    format: str | None = None,
    text_column: str = "text",
    doc_sep: str = "blank",
) -> Iterator[Document]:
    """Stream the documents of a file, a folder, a ``builtin:`` corpus (or a list of them).

    Args:
        path_or_builtin: a path, ``"builtin:reviews+news"``, or a list of these.
        format: ``text``, ``jsonl``, ``csv`` or ``tsv``; inferred from the suffix when ``None``.
        text_column: JSONL field or CSV/TSV column holding the text.
        doc_sep: for text files: ``blank`` (blank lines separate documents), ``line`` (one
            document per line) or ``file`` (one document per file).

    Returns:
        An iterator of :class:`Document` ``(text, source, line)``; text is stripped, never empty.

    Raises:
        DataError: naming the file (and line) for a missing/unreadable/empty file, invalid
            UTF-8, malformed JSON/CSV, or a missing field/column.
    """
    _check_options(format, doc_sep)
    return iter_documents(resolve_inputs(path_or_builtin, format), text_column, doc_sep)
