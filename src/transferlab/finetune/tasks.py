"""Task data for fine-tuning: built-in tasks, derived offline tasks, user files, subsampling.

Every task is a :class:`TaskData`: a task type, a label list and train / validation / test lists
of *normalised examples* (plain dicts, one layout per task type):

======================  ================================================================
task type               example
======================  ================================================================
classification          ``{"text": str, "label": str}``
pair-classification     ``{"text": str, "pair": str, "label": str}``
regression              ``{"text": str, ["pair": str,] "label": float}``
tagging                 ``{"tokens": [str], "tags": [str]}`` (BIO tags)
qa                      ``{"context": str, "question": str, "answers": [str],
                        "answer_starts": [int]}`` (extractive: character offsets)
seq2seq                 ``{"source": str, "target": str}``
======================  ================================================================

Examples read from files also carry ``"_where": "path:line"`` so any later complaint about an
example (an unseen label, an answer that is not in its context) names the file and line.

Sources:

* built-in tasks from :func:`transferlab.data.builtin.load_task` (``imdb``, ``rotten-tomatoes``,
  ``bbc-topic``, ``twitter-ner``, ``bbc-headlines``);
* two **derived** tasks, built here from the BBC articles because no human-labelled sentence-pair
  or extractive-QA set exists offline. They are synthetic and say so (``TaskData.derived``):

  - ``bbc-pairs``: pair-classification of two BBC sentences as ``same`` topic or ``different``
    topic. Each article of a split contributes one same-topic and one different-topic pair
    (sentences drawn with a fixed seed from articles of the *same* split, so no article crosses
    splits). The labels come from the BBC topic folders; no human judged the pairs.
  - ``bbc-qa``: extractive QA. The question is the article's headline with one content word
    blanked out (``"___"``, the longest headline word of 4+ letters, not a stop word, that also
    occurs in the body); the context is the body paragraph holding its first occurrence; the
    answer is that occurrence (``answer_start`` is its character offset). It measures
    "find the span of the body that fills the headline's blank", a cloze-style proxy for QA.

* user files: CSV / TSV (header row), JSONL (one object per line), CoNLL-style tagging files
  (``token<TAB>tag`` per line, a blank line between sentences; whitespace-separated columns with
  the tag last are accepted too; ``-DOCSTART-`` lines are skipped), and QA JSONL
  (``context``, ``question``, ``answer`` + ``answer_start``; SQuAD's ``answers`` =
  ``{"text": [...], "answer_start": [...]}`` also works).

The task type is inferred from the data where that is unambiguous (see :func:`infer_task_type`)
or given explicitly.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data.corpus import names, parse_json_line, quote, read_lines
from ..errors import ConfigError, DataError
from .task_types import TASK_TYPES as _TYPES
from .task_types import get_task_type, task_type_names
from .task_types.classification import Classification, PairClassification
from .task_types.regression import Regression
from .task_types.tagging import BIO_TAG

__all__ = [
    "TASK_TYPES",
    "TaskData",
    "Columns",
    "list_tasks",
    "load_builtin",
    "load_files",
    "read_examples",
    "infer_task_type",
    "subsample",
    "check_labels",
    "task_defaults",
    "DERIVED_TASKS",
]

#: the registered task types (each one module under ``finetune/task_types``), in registration order
TASK_TYPES = task_type_names()


def _has_classes(task_type: Any) -> bool:
    """Whether ``task_type`` (a name, possibly unregistered) has one class label per example."""
    t = _TYPES.get(str(task_type))
    return t is not None and t.has_classes

#: derived offline tasks (see the module docstring)
DERIVED_TASKS = {
    "bbc-pairs": "same-topic vs different-topic BBC sentence pairs (derived from BBC topics)",
    "bbc-qa": "extractive QA: fill the blanked headline word with a span of the article (derived)",
}

# Defaults that keep each built-in task fast on a CPU without cutting much: (max_length,
# max_target_length). IMDb reviews average ~300 word pieces; 256 keeps most of each review.
_DEFAULTS: dict[str, tuple[int, int]] = {
    "imdb": (256, 0),
    "rotten-tomatoes": (128, 0),
    "bbc-topic": (256, 0),
    "bbc-pairs": (128, 0),
    "bbc-qa": (256, 0),
    "twitter-ner": (128, 0),
    "bbc-headlines": (256, 32),
}


def task_defaults(name: str | None, task_type: str) -> tuple[int, int]:
    """``(max_length, max_target_length)`` for a task: per built-in task, else 256 / 64."""
    if name in _DEFAULTS:
        ml, mt = _DEFAULTS[name]
        return ml, mt or 64
    return 256, 64


@dataclass
class Columns:
    """Which fields of a user file hold what. ``None`` means the task type's usual name.

    ``text`` is the input text (classification/regression), the source (seq2seq), the context
    (qa) or the token list (tagging JSONL); ``pair`` is the second sentence (pairs) or the
    question (qa); ``label`` is the label (classification/regression), the target (seq2seq),
    the answer (qa) or the tag list (tagging JSONL).
    """

    text: str | None = None
    pair: str | None = None
    label: str | None = None

    def resolve(self, task_type: str) -> dict[str, str | None]:
        """The concrete field names for ``task_type``."""
        default = get_task_type(task_type).default_columns
        return {
            "text": self.text or default[0],
            "pair": self.pair or default[1],
            "label": self.label or default[2],
        }


@dataclass
class TaskData:
    """A task ready for fine-tuning: normalised examples of each split and the label set."""

    name: str
    task_type: str
    labels: list[str]  #: classes or BIO tags (sorted, "O" first for tags); [] otherwise
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    columns: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  #: split -> file it was read from
    derived: bool = False  #: True for synthetic tasks built from other data (bbc-pairs, bbc-qa)
    description: str = ""
    notes: list[str] = field(default_factory=list)  #: e.g. "validation carved from train"

    def __getitem__(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "validation", "test"):
            raise KeyError(split)
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {s: len(self[s]) for s in ("train", "validation", "test")}


def list_tasks() -> list[str]:
    """Built-in and derived task names accepted by :func:`load_builtin`."""
    from ..data.builtin import list_tasks as _builtin

    return list(_builtin()) + list(DERIVED_TASKS)


# ------------------------------------------------------------------------------ built-in tasks
def load_builtin(name: str) -> TaskData:
    """A built-in (``imdb`` ...) or derived (``bbc-pairs``, ``bbc-qa``) task with fixed splits.

    Raises:
        DataError: an unknown name or a data package that is not installed.
    """
    if name == "bbc-pairs":
        return _bbc_pairs()
    if name == "bbc-qa":
        return _bbc_qa()
    from ..data.builtin import load_task

    try:
        t = load_task(name)
    except DataError as e:
        if "unknown task" in str(e):
            raise DataError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}") from None
        raise
    kind = t.task_type
    if kind not in _TYPES:  # pragma: no cover - guards a future built-in of a new kind
        raise DataError(f"built-in task {name!r} has task type {kind!r}, which fine-tuning does not know")
    labels = _TYPES[kind].order_labels(list(t.labels))
    return TaskData(name, kind, labels, t.train, t.validation, t.test,
                    columns=Columns().resolve(kind), description=str(t.source.get("origin", "")))


_STOP = frozenset(
    """
    about above after again against also amid among been before being below between both could
    does doing down during each even ever from further have having here into just more most much
    must need next only other over same says said should some such than that their them then
    there these they this those through under until upon very well were what when where which
    while will with would your year years says week new news
    """.split()
)


def _bbc_pairs() -> TaskData:
    import numpy as np

    from ..data.builtin import load_task
    from ..data.sentences import split_sentences

    topics = load_task("bbc-topic")
    splits: dict[str, list[dict[str, Any]]] = {}
    for s_i, split in enumerate(("train", "validation", "test")):
        docs = topics[split]
        sents: list[list[str]] = []
        for d in docs:
            body = d["text"]
            ss = [body[a:b].strip() for a, b in split_sentences(body)]
            sents.append([s for s in ss if 6 <= len(s.split()) <= 60])
        usable = [i for i, ss in enumerate(sents) if ss]
        by_topic: dict[str, list[int]] = {}
        for i in usable:
            by_topic.setdefault(docs[i]["label"], []).append(i)
        rng = np.random.default_rng(1234 + s_i)  # fixed: the derived task never changes
        out = []
        for i in usable:
            topic = docs[i]["label"]
            a = sents[i][rng.integers(len(sents[i]))]
            same = [j for j in by_topic[topic] if j != i]
            other = [j for t, js in sorted(by_topic.items()) if t != topic for j in js]
            pairs = []
            if same:
                pairs.append((same[rng.integers(len(same))], "same"))
            if other:
                pairs.append((other[rng.integers(len(other))], "different"))
            for j, lab in pairs:
                b = sents[j][rng.integers(len(sents[j]))]
                # the anchor goes first or second at random so position carries no signal
                ex = {"text": a, "pair": b, "label": lab} if rng.random() < 0.5 else {"text": b, "pair": a, "label": lab}
                out.append(ex)
        splits[split] = out
    return TaskData("bbc-pairs", "pair-classification", ["different", "same"], **splits,
                    columns=Columns().resolve("pair-classification"), derived=True,
                    description=DERIVED_TASKS["bbc-pairs"])


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")


def _bbc_qa() -> TaskData:
    from ..data.builtin import load_task

    heads = load_task("bbc-headlines")
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "validation", "test"):
        out = []
        for k, d in enumerate(heads[split]):
            ex = _cloze_example(d["target"], d["source"], f"bbc-qa/{split}/{k}")
            if ex is not None:
                out.append(ex)
        splits[split] = out
    return TaskData("bbc-qa", "qa", [], **splits, columns=Columns().resolve("qa"), derived=True,
                    description=DERIVED_TASKS["bbc-qa"])


def _cloze_example(headline: str, body: str, qid: str) -> dict[str, Any] | None:
    """A headline-cloze QA example, or None when no headline word occurs in the body."""
    cands = []
    for m in _WORD.finditer(headline):
        w = m.group()
        if len(w) >= 4 and w.lower() not in _STOP:
            hit = re.search(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", body, flags=re.IGNORECASE)
            if hit:
                cands.append((-len(w), m.start(), m, hit))
    if not cands:
        return None
    _, _, m, hit = min(cands, key=lambda c: (c[0], c[1]))
    # context: the paragraph (line) of the first occurrence, offsets made relative to it
    p_start = body.rfind("\n", 0, hit.start()) + 1
    p_end = body.find("\n", hit.end())
    context = body[p_start : p_end if p_end >= 0 else len(body)]
    question = headline[: m.start()] + "___" + headline[m.end() :]
    return {"id": qid, "context": context, "question": question, "answers": [hit.group()],
            "answer_starts": [hit.start() - p_start]}


# ------------------------------------------------------------------------------ user files
def _format_of(path: Path) -> str:
    suf = path.suffix.lower()
    if suf == ".gz":
        suf = Path(path.stem).suffix.lower()
    if suf == ".csv":
        return "csv"
    if suf in (".tsv", ".tab"):
        return "tsv"
    if suf in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suf in (".conll", ".conllu", ".bio", ".iob", ".iob2", ".ner", ".txt"):
        return "conll"
    raise DataError(
        f"{path}: unknown file type {path.suffix!r}; expected .csv, .tsv, .jsonl or a CoNLL "
        "tagging file (.conll/.bio/.txt: token<TAB>tag lines)"
    )


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row dict)`` of a CSV/TSV (header row) or JSONL file."""
    if fmt == "jsonl":
        for n, line in read_lines(path):
            if not line.strip():
                continue
            obj = parse_json_line(line, f"{path}:{n}")
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
            yield n, obj
        return
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell
    lines = read_lines(path)
    reader = csv.reader((ln for _, ln in lines), delimiter="\t" if fmt == "tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        for row in reader:
            if not any(c.strip() for c in row):
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{start}: row has {len(row)} fields, the header has {len(header)}")
            yield start, dict(zip(header, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({e})") from None


def _read_conll(path: Path, labelled: bool = True) -> list[dict[str, Any]]:
    """Sentences of a token<TAB>tag file; with ``labelled=False`` a line may be a bare token."""
    out: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for n, line in read_lines(path):
        s = line.rstrip("\r\n")
        if not s.strip():
            if tokens:
                out.append({"tokens": tokens, "tags": tags, "_where": f"{path}:{first}"})
            tokens, tags = [], []
            continue
        if s.startswith("-DOCSTART-"):
            continue
        parts = s.split("\t") if "\t" in s else s.split()
        if not labelled and len(parts) == 1 and parts[0].strip():
            parts = [parts[0], "O"]  # prediction input: tokens only
        if len(parts) < 2 or not parts[0].strip() or not parts[-1].strip():
            raise DataError(f"{path}:{n}: expected 'token<TAB>tag', got {quote(s)}")
        tag = parts[-1].strip()
        if not BIO_TAG.match(tag):
            raise DataError(f"{path}:{n}: tag {quote(tag)} is not a BIO tag (expected O, B-TYPE or I-TYPE)")
        if not tokens:
            first = n
        tokens.append(parts[0].strip())
        tags.append(tag)
    if tokens:
        out.append({"tokens": tokens, "tags": tags, "_where": f"{path}:{first}"})
    if not out:
        raise DataError(f"{path}: no sentences (expected token<TAB>tag lines, blank lines between sentences)")
    return out


def infer_task_type(fields: Sequence[str], columns: Columns, label_values: Sequence[Any] = ()) -> str:
    """The task type of a file from its field names (and label values).

    Rules: ``tokens`` + ``tags`` -> tagging; ``context`` + ``question`` + ``answer(s)`` -> qa;
    ``source`` + ``target`` -> seq2seq; otherwise a label column: floats with a fractional part
    (or JSON floats) -> regression, anything else -> classification (pair-classification when a
    pair column was given). Integer labels (``1``..``5`` stars) count as classes; pass
    ``task_type="regression"`` to regress on them.

    Raises:
        DataError: nothing fits; the message lists the fields found.
    """
    f = set(fields)
    if columns.text is None and columns.label is None:
        for name, t in _TYPES.items():  # the types that recognise their own field names
            if t.matches_fields(f):
                return name
    label = columns.label or "label"
    if label in f:
        if label_values and _is_regression(label_values):
            return Regression.name
        return PairClassification.name if columns.pair else Classification.name
    if (columns.text or "text") in f:
        raise DataError(f"no label column {quote(label)} (columns: {names(fields)}); pass --label-column")
    raise DataError(
        f"cannot tell the task type from the fields ({names(sorted(f))}): expected a "
        f"{quote(label)} column, tokens+tags, context+question+answer or source+target; pass --task-type "
        "and the column flags"
    )


def _number(v: Any) -> float | None:
    """``v`` as a finite number (a JSON number or a numeric string), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        x = float(v)
    except (ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


#: a label column where at least this fraction of values are numbers is numeric: its other
#: values are mistakes, not extra classes (a regression column with one "n/a" used to become a
#: classification task with that string as one more class, silently)
_NUMERIC_SHARE = 0.9


def _refuse_stray_non_numbers(path: Path, given: Sequence[tuple[int, Any]], label: str) -> None:
    """Raise when a label column inferred as classes is mostly numbers with a few non-numbers.

    Raises:
        DataError: ``path:line: label 'n/a' in column 'label' is not a number, but 97 of the
            98 labels are ...``, naming the first stray value.
    """
    if len(given) < 3:
        return
    stray = [(n, v) for n, v in given if _number(v) is None]
    if not stray or len(given) - len(stray) < _NUMERIC_SHARE * len(given):
        return
    n, v = stray[0]
    more = f" ({len(stray) - 1} more after it)" if len(stray) > 1 else ""
    raise DataError(
        f"{path}:{n}: label {quote(v)} in column {quote(label)} is not a number, but {len(given) - len(stray)} of the "
        f"{len(given)} labels are{more}; fix the value, or pass the task type (--task-type regression, or "
        "--task-type classification to treat every label as a class name)"
    )


def _is_regression(values: Sequence[Any]) -> bool:
    if any(isinstance(v, bool) for v in values):
        return False
    if all(isinstance(v, (int, float)) for v in values):
        return any(isinstance(v, float) for v in values)
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        return False
    return any(not math.isfinite(x) or x != int(x) for x in nums)


def read_examples(path: str | Path, task_type: str | None = None, columns: Columns | None = None,
                  labelled: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Read one task file into normalised examples.

    Args:
        path: a .csv / .tsv / .jsonl file, or a CoNLL-style tagging file.
        task_type: one of :data:`TASK_TYPES`, or None to infer it (:func:`infer_task_type`).
        columns: field names (defaults per task type, see :class:`Columns`).
        labelled: require labels (training / evaluation); False for prediction inputs, where a
            label column is read when present and otherwise not needed.

    Returns:
        ``(examples, task_type)``; each example has ``_where = "path:line"``.

    Raises:
        DataError: unreadable or malformed input, a missing column, an empty text or label, an
            answer that is not at its ``answer_start`` (each message names the file and line).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    columns = columns or Columns()
    if task_type is not None and task_type not in _TYPES:
        raise ConfigError(f"unknown task type {quote(task_type)}; expected one of: {', '.join(_TYPES)}")
    fmt = _format_of(p)
    if fmt == "conll":
        conll = next(n for n, t in _TYPES.items() if t.reads_conll)
        if task_type is not None and not _TYPES[task_type].reads_conll:
            raise DataError(f"{p}: a CoNLL-style file holds {conll} data, not {task_type}")
        return _read_conll(p, labelled), conll
    rows = list(_rows(p, fmt))
    if not rows:
        raise DataError(f"{p}: no examples (the file is empty or has only a header)")
    if task_type is None and not labelled:
        raise ConfigError("read_examples: the task type is needed to read unlabelled inputs")
    if task_type is None:
        first_fields = list(rows[0][1])
        label = columns.label or "label"
        given = [(n, r.get(label)) for n, r in rows if r.get(label) not in (None, "")]
        values = [v for _, v in given]
        try:
            task_type = infer_task_type(first_fields, columns, values)
        except DataError as e:
            raise DataError(f"{p}:{rows[0][0]}: {e}") from None
        if _has_classes(task_type):
            _refuse_stray_non_numbers(p, given, label)
    cols = columns.resolve(task_type)
    conv = _TYPES[task_type].convert
    if not labelled and cols["label"] not in rows[0][1]:
        cols = dict(cols, label=None)
    return [conv(row, cols, f"{p}:{n}") for n, row in rows], task_type


def load_files(
    train: str | Path | None,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    task_type: str | None = None,
    columns: Columns | None = None,
    validation_fraction: float = 0.1,
) -> TaskData:
    """A task from user files.

    Without a validation file, ``validation_fraction`` of the training file (stratified for
    classes, at least one example, always the same examples: seed 0) is held out for early
    stopping; the returned ``notes`` say so.

    Raises:
        DataError: malformed files, a label or tag in validation/test never seen in training,
            a split whose task type differs from the training file's.
    """
    columns = columns or Columns()
    if train is None:
        raise ConfigError("fine-tuning needs a task (--task NAME) or a training file (--train FILE)")
    tr, kind = read_examples(train, task_type, columns)
    splits = {"train": tr}
    files = {"train": str(train)}
    for split, path in (("validation", validation), ("test", test)):
        if path is not None:
            splits[split], _ = read_examples(path, kind, columns)
            files[split] = str(path)
    labels = label_list(tr, kind)
    for split in ("validation", "test"):
        if split in splits:
            check_labels(splits[split], kind, labels, str(train))
    notes = []
    if "validation" not in splits:
        n_val = max(1, round(validation_fraction * len(tr)))
        if len(tr) < 2:
            raise DataError(f"{train}: need at least 2 training examples to hold one out for validation")
        keep = subsample(tr, len(tr) - n_val, seed=0, task_type=kind)
        kept = set(id(e) for e in keep)
        splits["validation"] = [e for e in tr if id(e) not in kept]
        splits["train"] = keep
        notes.append(f"no validation file: held out {n_val} of {len(tr)} training examples (seed 0) for validation")
    name = Path(train).stem
    return TaskData(name, kind, labels, splits["train"], splits["validation"], splits.get("test", []),
                    columns=columns.resolve(kind), files=files, notes=notes)


def label_list(examples: Sequence[dict[str, Any]], task_type: str) -> list[str]:
    """Sorted classes (classification) or tags (tagging, ``O`` first, then B-/I- by type)."""
    return get_task_type(task_type).label_list(examples)


def check_labels(examples: Sequence[dict[str, Any]], task_type: str, labels: Sequence[str], train_name: str) -> None:
    """Raise if an example's label (or tag) never appears in training.

    Raises:
        DataError: ``path:line: label 'x' never appears in the training data (train.csv); ...``
    """
    get_task_type(task_type).check_labels(examples, labels, train_name)


# ------------------------------------------------------------------------------ subsampling
def subsample(examples: Sequence[dict[str, Any]], n: int | None, seed: int, task_type: str) -> list[dict[str, Any]]:
    """A deterministic subset of ``n`` examples (stratified by label for classification).

    The same ``(examples, n, seed)`` always gives the same subset, in the original order, so every
    method of a comparison sees the same labelled examples for a given seed and size. Uses
    scikit-learn's ``train_test_split`` (stratified when every class has at least two examples
    and ``n`` covers every class; otherwise a plain random subset).

    Args:
        examples: the training examples.
        n: how many to keep; ``None`` or ``>= len(examples)`` keeps all.
        seed: the subsampling seed.
        task_type: stratify for classification and pair-classification.

    Returns:
        The kept examples.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise ConfigError(f"train_size must be positive, got {n}")
    from sklearn.model_selection import train_test_split

    idx = list(range(len(examples)))
    strat = None
    if _has_classes(task_type):
        ys = [e["label"] for e in examples]
        counts: dict[str, int] = {}
        for y in ys:
            counts[y] = counts.get(y, 0) + 1
        if min(counts.values()) >= 2 and len(counts) <= n <= len(examples) - len(counts):
            strat = ys
    keep, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=strat)
    return [examples[i] for i in sorted(keep)]
