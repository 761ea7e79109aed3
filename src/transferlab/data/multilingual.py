"""Languages of a corpus: codes, scripts, the multilingual built-in text and temperature sampling.

* :data:`LANGUAGES`: the ISO 639-1 codes ``prepare`` accepts (``--language``, a ``lang`` field),
  each with its name and the Unicode scripts its text is written in; :func:`check_language`
  turns anything else into a one-line :class:`~transferlab.errors.DataError`.
* :func:`dominant_script` / :func:`script_mismatch`: the script most of a text's letters are in,
  so a document declared Russian but written in Latin letters is reported (a warning: mixed text
  is real, a wrong label usually is too).
* :func:`chatterbot_documents`: the dialogues of the ``chatterbot-corpus`` package (BSD-3), one
  document per conversation, for ``builtin:multilingual`` (see :mod:`.builtin`).
* :func:`temperature_shares`: XLM's ``q_l = p_l^alpha / sum_k p_k^alpha``.
* :class:`LanguageSampler`: the trainer's example order under temperature sampling, a pure
  function of the global stream position (so resumed and data-parallel runs draw exactly the
  examples one uninterrupted process draws).
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import DataError
from .documents import Document, RawTexts

__all__ = [
    "LANGUAGES", "UNDETERMINED", "CHATTERBOT_LANGUAGES", "check_language", "dominant_script",
    "script_mismatch", "chatterbot_files", "chatterbot_documents", "temperature_shares", "LanguageSampler",
    "LanguagePlan", "item_languages", "language_groups", "sample_by_language", "fertility", "input_languages",
]

#: the code of a document whose language nobody declared (ISO 639-2 "undetermined")
UNDETERMINED = "und"

_LATIN, _CYR = ("Latin",), ("Cyrillic",)
#: code -> (English name, scripts its text is normally written in)
LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ar": ("Arabic", ("Arabic",)), "bn": ("Bengali", ("Bengali",)), "bg": ("Bulgarian", _CYR),
    "ca": ("Catalan", _LATIN), "cs": ("Czech", _LATIN), "da": ("Danish", _LATIN), "de": ("German", _LATIN),
    "el": ("Greek", ("Greek",)), "en": ("English", _LATIN), "es": ("Spanish", _LATIN),
    "et": ("Estonian", _LATIN), "eu": ("Basque", _LATIN), "fa": ("Persian", ("Arabic",)),
    "fi": ("Finnish", _LATIN), "fr": ("French", _LATIN), "gu": ("Gujarati", ("Gujarati",)),
    "he": ("Hebrew", ("Hebrew",)), "hi": ("Hindi", ("Devanagari",)), "hr": ("Croatian", _LATIN),
    "hu": ("Hungarian", _LATIN), "id": ("Indonesian", _LATIN), "it": ("Italian", _LATIN),
    "ja": ("Japanese", ("Han", "Hiragana", "Katakana")), "kn": ("Kannada", ("Kannada",)),
    "ko": ("Korean", ("Hangul", "Han")), "lt": ("Lithuanian", _LATIN), "lv": ("Latvian", _LATIN),
    "ml": ("Malayalam", ("Malayalam",)), "mr": ("Marathi", ("Devanagari",)), "ms": ("Malay", _LATIN),
    "nl": ("Dutch", _LATIN), "no": ("Norwegian", _LATIN), "or": ("Oriya", ("Oriya",)),
    "pa": ("Punjabi", ("Gurmukhi",)), "pl": ("Polish", _LATIN), "pt": ("Portuguese", _LATIN),
    "ro": ("Romanian", _LATIN), "ru": ("Russian", _CYR), "sk": ("Slovak", _LATIN), "sl": ("Slovenian", _LATIN),
    "sr": ("Serbian", ("Cyrillic", "Latin")), "sv": ("Swedish", _LATIN), "sw": ("Swahili", _LATIN),
    "ta": ("Tamil", ("Tamil",)), "te": ("Telugu", ("Telugu",)), "th": ("Thai", ("Thai",)),
    "tl": ("Tagalog", _LATIN), "tr": ("Turkish", _LATIN), "uk": ("Ukrainian", _CYR), "ur": ("Urdu", ("Arabic",)),
    "vi": ("Vietnamese", _LATIN), "yo": ("Yoruba", _LATIN), "zh": ("Chinese", ("Han",)),
    # BCP 47 tags for the two chatterbot corpora that are not one ISO 639-1 language in its usual script
    "zh-hant": ("Chinese (Traditional)", ("Han",)), "hi-latn": ("Hinglish (Hindi-English, Latin script)", _LATIN),
}

#: chatterbot-corpus data folder -> language code
CHATTERBOT_LANGUAGES: dict[str, str] = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "hinglish": "hi-latn", "indonesian": "id", "italian": "it", "japanese": "ja",
    "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru",
    "spanish": "es", "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh-hant",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}

CHATTERBOT_PIP = "chatterbot-corpus==1.3.3"


def check_language(code: str, where: str = "language") -> str:
    """The normalised (lower-case) code, or a one-line :class:`DataError` naming ``where``.

    Args:
        code: an ISO 639-1 code (``en``, ``es``) or one of the BCP 47 tags in :data:`LANGUAGES`.
        where: what the code came from (``--language``, ``file.jsonl:3: field 'lang'``).

    Returns:
        The code as :data:`LANGUAGES` spells it.
    """
    c = str(code).strip().lower().replace("_", "-")
    if c not in LANGUAGES:
        raise DataError(f"{where}: unknown language code {code!r}; expected an ISO 639-1 code such as "
                        f"en, es, zh (known: {', '.join(sorted(LANGUAGES))})")
    return c


def input_languages(inputs: str | Path | Iterable[str | Path], languages: Iterable[str] | None) -> dict[str, str]:
    """Input as given (``Source.group``) -> its language code.

    Args:
        inputs: the inputs as the user gave them (one or a list).
        languages: ``--language`` codes: one per input, in order, or one for all (None: none).

    Returns:
        ``{input: code}`` ({} without languages).
    """
    if languages is None:
        return {}
    langs = [check_language(c, "--language") for c in ([languages] if isinstance(languages, str) else languages)]
    items = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    if not langs:
        return {}
    if len(langs) == 1:
        langs = langs * len(items)
    if len(langs) != len(items):
        raise DataError(f"--language: give one code per --input ({len(items)}) or one for all, got {len(langs)}")
    return {str(Path(i)) if not i.startswith("builtin:") else i: c for i, c in zip(items, langs)}


# ---------------------------------------------------------------------------------- scripts
# (first code point, script) for the blocks that decide a language's script; letters elsewhere
# (symbols, other blocks) count as "Other"
_BLOCKS = [
    (0x0041, "Latin"), (0x0250, "Other"), (0x0370, "Greek"), (0x0400, "Cyrillic"), (0x0530, "Other"),
    (0x0590, "Hebrew"), (0x0600, "Arabic"), (0x0780, "Other"), (0x0900, "Devanagari"), (0x0980, "Bengali"),
    (0x0A00, "Gurmukhi"), (0x0A80, "Gujarati"), (0x0B00, "Oriya"), (0x0B80, "Tamil"), (0x0C00, "Telugu"),
    (0x0C80, "Kannada"), (0x0D00, "Malayalam"), (0x0D80, "Other"), (0x0E00, "Thai"), (0x0E80, "Other"),
    (0x1100, "Hangul"), (0x1200, "Other"), (0x1E00, "Latin"), (0x1F00, "Greek"), (0x2000, "Other"),
    (0x3040, "Hiragana"), (0x30A0, "Katakana"), (0x3100, "Other"), (0x3130, "Hangul"), (0x3190, "Other"),
    (0x3400, "Han"), (0x4DC0, "Other"), (0x4E00, "Han"), (0xA000, "Other"), (0xAC00, "Hangul"),
    (0xD7B0, "Other"), (0xF900, "Han"), (0xFB00, "Other"), (0xFB50, "Arabic"), (0xFE00, "Other"),
    (0xFE70, "Arabic"), (0xFF00, "Other"),
]
_STARTS = [b[0] for b in _BLOCKS]


def dominant_script(text: str, sample: int = 2000) -> str | None:
    """The script most letters of ``text`` (its first ``sample`` characters) are written in.

    Args:
        text: any text.
        sample: how many characters to look at (the check runs on every document).

    Returns:
        ``Latin``, ``Cyrillic``, ``Han``, ... or None when the text has no letters.
    """
    counts: dict[str, int] = {}
    for ch in text[:sample]:
        if not ch.isalpha():
            continue
        i = bisect.bisect_right(_STARTS, ord(ch)) - 1
        s = _BLOCKS[i][1] if i >= 0 else "Other"
        if s == "Other" and unicodedata.category(ch).startswith("M"):
            continue  # combining marks follow their base letter's script
        counts[s] = counts.get(s, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def script_mismatch(text: str, lang: str) -> str | None:
    """The dominant script of ``text`` when ``lang`` is not normally written in it, else None."""
    entry = LANGUAGES.get(lang)
    s = dominant_script(text)
    if entry is None or s is None or s == "Other" or s in entry[1]:
        return None
    return s


# ---------------------------------------------------------------------------------- chatterbot
def _chatterbot_root() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"built-in multilingual data needs the package {CHATTERBOT_PIP}: pip install {CHATTERBOT_PIP}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def chatterbot_files(lang: str | None = None) -> list[Path]:
    """The chatterbot-corpus YAML files of one language (all languages when None), sorted."""
    root = _chatterbot_root()
    folders = [d for d, c in CHATTERBOT_LANGUAGES.items() if lang is None or c == lang]
    return [f for d in sorted(folders) for f in sorted((root / d).glob("*.yml"))]


@functools.lru_cache(maxsize=None)
def _chatterbot_file(path: str) -> tuple[tuple[tuple[str, ...], int], ...]:
    """``(turns, conversation number)`` of each conversation of one YAML file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable chatterbot-corpus file ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with 'categories' and 'conversations'")
    out = []
    for n, conv in enumerate(data.get("conversations") or [], 1):
        turns = conv if isinstance(conv, list) else [conv]  # a few files hold one-line entries
        turns = tuple(str(t).strip() for t in turns if t is not None and str(t).strip())
        if turns:
            out.append((turns, n))
    return tuple(out)


#: file stems of chatterbot-corpus that name a topic another way -> the English stem
_TOPIC_ALIASES = {"ia": "ai", "dinero": "money", "emociones": "emotion", "emotions": "emotion",
                  "perfilbot": "botprofile", "profile": "botprofile", "psicologia": "psychology",
                  "computer": "computers", "coversations": "conversations", "sport": "sports", "greeting": "greetings"}


def chatterbot_topic(path: str | Path) -> str:
    """The topic of a chatterbot-corpus file, the same name in every language (its English file stem)."""
    stem = Path(path).stem.lower()
    return _TOPIC_ALIASES.get(stem, stem)


def chatterbot_documents(lang: str | None = None) -> Iterator[tuple[Document, str]]:
    """``(document, topic)`` per conversation (turns one per line), de-duplicated per language;
    the topic is the file's, named alike in every language (:func:`chatterbot_topic`).

    Args:
        lang: a code of :data:`CHATTERBOT_LANGUAGES` (all languages when None).

    Returns:
        An iterator in (folder, file, conversation) order; each document's ``lang`` is set.
    """
    root = _chatterbot_root()
    for folder in sorted(CHATTERBOT_LANGUAGES):
        code = CHATTERBOT_LANGUAGES[folder]
        if lang is not None and code != lang:
            continue
        seen: set[str] = set()
        for f in sorted((root / folder).glob("*.yml")):
            for turns, n in _chatterbot_file(str(f)):
                text = "\n".join(turns)
                if text in seen:
                    continue
                seen.add(text)
                yield Document(text, str(f), n, None, code), chatterbot_topic(f)


# ---------------------------------------------------------------------------------- sampling
def temperature_shares(sizes: Mapping[str, float], alpha: float) -> dict[str, float]:
    """XLM's sampling distribution ``q_l = p_l^alpha / sum_k p_k^alpha``, ``p_l = size_l / sum``.

    Args:
        sizes: language -> amount of text (tokens); languages of size 0 get ``q = 0``.
        alpha: the temperature exponent, ``> 0`` (1: as the data is; towards 0: uniform).

    Returns:
        language -> q_l, summing to 1.
    """
    if not alpha > 0:
        raise DataError(f"language_alpha must be > 0 (1.0 samples languages as the data holds them), got {alpha}")
    total = float(sum(sizes.values()))
    if total <= 0:
        raise DataError("temperature sampling needs text in at least one language")
    w = {k: (v / total) ** alpha if v > 0 else 0.0 for k, v in sizes.items()}
    z = sum(w.values())
    return {k: v / z for k, v in w.items()}


def _allocate(q: np.ndarray, k: int) -> np.ndarray:
    """Integer counts summing to ``k``, as close to ``q * k`` as possible (largest remainder)."""
    exact = q * k
    counts = np.floor(exact).astype(np.int64)
    rest = k - int(counts.sum())
    order = np.lexsort((np.arange(len(q)), -(exact - counts)))  # largest remainder first, ties by index
    counts[order[:rest]] += 1
    return counts


def _interleave(counts: np.ndarray) -> np.ndarray:
    """An order of ``counts[l]`` copies of each ``l`` in which every prefix holds each ``l``
    within one of its exact share (smooth weighted round-robin: each turn every language gains its
    count, the one furthest ahead is drawn and pays the total)."""
    total, weights = int(counts.sum()), counts.tolist()
    credit = [0] * len(weights)
    out = np.empty(total, np.int64)
    for p in range(total):
        for i, w in enumerate(weights):
            credit[i] += w
        m = max(range(len(weights)), key=credit.__getitem__)  # ties: the lowest id
        credit[m] -= total
        out[p] = m
    return out


class LanguageSampler:
    """Example order under temperature sampling: the :class:`~transferlab.training.distributed.GlobalSampler`
    interface (``positions``, ``indices``, ``epoch_of``), drawing languages with probabilities ``q``.

    The global stream of example positions is cut into blocks of ``block`` positions. Every block
    holds exactly ``round(q_l * block)`` positions of language ``l`` (largest remainder), in one
    fixed interleaved order (:func:`_interleave`), so every prefix of the stream holds each language
    within one example of its share. The ``k``-th position of language ``l`` in the whole stream
    reads item ``perm[k mod n_l]`` of that language, ``perm`` a permutation drawn by
    ``(seed, l, k // n_l)``: a small language is cycled through (a fresh order each pass), a large
    one read without repetition. Everything is a function of the position alone, so a resumed run
    or another split into ranks reads the same items, and the realised shares of the first ``N``
    positions are within ``1 / N`` of ``q`` (rounded to ``1 / block``).

    Args:
        item_langs: language id of every item of the dataset, ``(n_items,)``.
        shares: the sampling probability of each language id (``q``; zeros allowed).
        batch_size, seed, rank, world_size: as for ``GlobalSampler``.
        block: positions per block (the resolution of ``q``).
    """

    def __init__(self, item_langs: np.ndarray, shares: Sequence[float], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, block: int = 1 << 14) -> None:
        item_langs = np.asarray(item_langs, dtype=np.int64)
        q = np.asarray(shares, dtype=np.float64)
        self.n, self.batch_size, self.seed = len(item_langs), batch_size, seed
        self.rank, self.world_size, self.block = rank, world_size, block
        self.items = [np.flatnonzero(item_langs == i) for i in range(len(q))]  # items of each language
        self.n_items = np.array([max(len(x), 1) for x in self.items], np.int64)  # (L,)
        q = np.where([len(x) > 0 for x in self.items], q, 0.0)
        if q.sum() <= 0:
            raise DataError("temperature sampling: no language with both a share > 0 and examples")
        self.q = q / q.sum()
        self.counts = _allocate(self.q, block)  # (L,) positions of each language per block
        self._seq = _interleave(self.counts)  # (block,) language of each position of a block
        self._rank = np.zeros(block, np.int64)  # (block,) its rank among the block's positions of that language
        for lang in np.flatnonzero(self.counts):
            at = self._seq == lang
            self._rank[at] = np.arange(int(at.sum()))
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, lang: int, cycle: int) -> np.ndarray:
        """The item order of pass ``cycle`` over language ``lang`` (cached; safe to call from the
        trainer's prefetch thread and the logging thread at once: a local result, never re-read)."""
        key = (lang, cycle)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, 0x1A8, lang, cycle]).permutation(self.items[lang])
            if len(self._perm_cache) > 256:
                self._perm_cache = {}
            self._perm_cache[key] = perm
        return perm

    def drawn(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset indices and language ids of global stream positions ``[start, stop)``."""
        pos = np.arange(start, max(stop, start), dtype=np.int64)
        b, off = np.divmod(pos, self.block)
        langs = self._seq[off]
        k = b * self.counts[langs] + self._rank[off]  # rank among all positions of the language
        cycle, j = np.divmod(k, self.n_items[langs])
        items = np.zeros(len(pos), np.int64)
        keys = langs * (int(cycle.max(initial=0)) + 1) + cycle
        for key in np.unique(keys).tolist():
            sel = keys == key
            lang = int(langs[sel][0])
            items[sel] = self._perm(lang, int(cycle[sel][0]))[j[sel]]
        return items, langs

    def positions(self, micro_batch: int) -> np.ndarray:
        """Global stream positions this rank reads in global micro-batch ``micro_batch``."""
        start = (micro_batch * self.world_size + self.rank) * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def indices(self, micro_batch: int) -> list[int]:
        """Dataset indices this rank reads in global micro-batch ``micro_batch``."""
        p = self.positions(micro_batch)
        return self.drawn(int(p[0]), int(p[-1]) + 1)[0].tolist()

    def epoch_of(self, micro_batch: int) -> float:
        """Examples read after ``micro_batch`` global micro-batches, in dataset sizes."""
        return micro_batch * self.world_size * self.batch_size / max(self.n, 1)


def language_summary(meta: Mapping[str, Any], split: str = "train") -> dict[str, dict[str, int]]:
    """``{code: {"documents", "tokens"}}`` of one split of a prepared dataset's meta.json ({} when
    it was prepared without languages)."""
    return dict(meta.get("splits", {}).get(split, {}).get("languages", {}) or {})


def item_languages(view: Any) -> tuple[np.ndarray, list[str]] | None:
    """``(language id of each item, codes)`` of an objective's view over prepared shards, or None
    when its shards have no language index (older folders, synthetic test data)."""
    shards = getattr(view, "shards", None)
    if shards is None or not getattr(shards, "has_languages", False):
        return None
    from ..objectives.datasets import item_documents  # a view's items -> documents

    docs = item_documents(view)
    return np.asarray(shards.doc_langs, dtype=np.int64)[docs], list(shards.languages)


def language_groups(view: Any) -> dict[str, np.ndarray]:
    """``{code: item indices in order}`` for per-language validation ({} with fewer than two)."""
    try:
        found = item_languages(view)
    except DataError:  # a view that cannot say where its items come from: no per-language loss
        return {}
    if found is None:
        return {}
    langs, codes = found
    groups = {codes[i]: np.flatnonzero(langs == i) for i in range(len(codes))}
    groups = {c: g for c, g in groups.items() if len(g)}
    return groups if len(groups) > 1 else {}


class LanguagePlan:
    """Temperature sampling of one training run: the sampler, ``p``, ``q`` and the realised shares.

    Args:
        view: the objective's training view (over shards prepared with languages).
        alpha: ``train.language_alpha`` (> 0).
        batch_size, seed, rank, world_size: as for the trainer's ``GlobalSampler``.

    Raises:
        DataError: shards without a language index, alpha <= 0.
    """

    def __init__(self, view: Any, alpha: float, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        found = item_languages(view)
        if found is None:
            where = getattr(getattr(view, "shards", None), "path", "the data")
            raise DataError(f"train.language_alpha={alpha}: {where} has no language index; prepare it with "
                            "--language CODE per input, a 'lang' field, or builtin:multilingual")
        from ..objectives.datasets import item_lengths

        self.item_langs, self.codes = found
        self.lengths = item_lengths(view)  # (n_items,)
        sizes = view.shards.language_tokens()
        self.p = {c: sizes.get(c, 0) / max(sum(sizes.values()), 1) for c in self.codes}
        q = temperature_shares({c: sizes.get(c, 0) for c in self.codes}, alpha)
        self.sampler = LanguageSampler(self.item_langs, [q[c] for c in self.codes], batch_size, seed, rank, world_size)
        self.q = dict(zip(self.codes, self.sampler.q.tolist()))  # a language without examples gets 0
        self._done = 0
        self._tokens = np.zeros(len(self.codes), np.float64)

    def realised(self, positions: int) -> dict[str, float]:
        """Token share of each language among the first ``positions`` global stream positions
        (counted incrementally; a smaller ``positions`` than last time, after a resume, recounts)."""
        if positions < self._done:
            self._done, self._tokens[:] = 0, 0.0
        items, langs = self.sampler.drawn(self._done, positions)
        self._tokens += np.bincount(langs, weights=self.lengths[items], minlength=len(self.codes))
        self._done = positions
        total = max(float(self._tokens.sum()), 1.0)
        return {c: float(t) / total for c, t in zip(self.codes, self._tokens)}

    def table(self, positions: int) -> dict[str, dict[str, float]]:
        """``{code: {"p", "q", "realised"}}`` for the summary."""
        r = self.realised(positions)
        return {c: {"p": round(self.p[c], 6), "q": round(self.q[c], 6), "realised": round(r[c], 6)}
                for c in self.codes if self.p[c] > 0 or self.q[c] > 0}


# ---------------------------------------------------------------------------------- tokenizer text
def _doc_key(seed: int, text: str) -> bytes:
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()


def sample_by_language(docs: Iterable[Document], alpha: float, budget_bytes: int = 0, seed: int = 0,
                       ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Text for training a tokenizer, languages drawn as temperature sampling draws them.

    Each language gets ``q_l * budget_bytes`` bytes of text (``q`` from its share ``p_l`` of the
    documents' UTF-8 bytes), taken from its documents in a keyed-hash order and cycled when the
    language has less (the trainers count frequencies, so repetition is weighting, as XLM's
    sampled tokenizer corpus).

    Args:
        docs: documents with ``lang`` set (others count as ``und``).
        alpha: the temperature exponent (> 0).
        budget_bytes: total text to return (0: as much as the documents hold).
        seed: key of the document order.

    Returns:
        ``(texts, {code: {"p", "q", "bytes"}})``.
    """
    by_lang: dict[str, list[str]] = {}
    for d in docs:
        by_lang.setdefault(d.lang or UNDETERMINED, []).append(d.text)
    if not by_lang:
        raise DataError("no documents to sample a tokenizer corpus from")
    sizes = {c: sum(len(t.encode("utf-8")) for t in ts) for c, ts in by_lang.items()}
    total = sum(sizes.values())
    q = temperature_shares(sizes, alpha)
    budget = budget_bytes or total
    out = RawTexts()
    stats: dict[str, dict[str, float]] = {}
    for code in sorted(by_lang):
        texts = sorted(by_lang[code], key=lambda t: _doc_key(seed, t))
        want, got, i = q[code] * budget, 0, 0
        while got < want and texts:
            t = texts[i % len(texts)]
            out.append(t)
            got += len(t.encode("utf-8"))
            i += 1
        stats[code] = {"p": sizes[code] / total, "q": q[code], "bytes": got}
    return out, stats


def fertility(tokenizer: Any, docs: Iterable[Document]) -> dict[str, dict[str, float]]:
    """Tokens per word and per character of each language's documents.

    Words are whitespace-separated (languages written without spaces, Chinese, Japanese, Thai,
    have few long "words": compare them by tokens per character).

    Args:
        tokenizer: a :class:`~transferlab.tokenizer.Tokenizer`.
        docs: documents with ``lang`` set.

    Returns:
        ``{code: {"docs", "words", "chars", "tokens", "tokens_per_word", "tokens_per_char", "unk"}}``.
    """
    acc: dict[str, list[str]] = {}
    for d in docs:
        acc.setdefault(d.lang or UNDETERMINED, []).append(d.text)
    unk = getattr(tokenizer, "unk_token_id", None)
    out: dict[str, dict[str, float]] = {}
    for code in sorted(acc):
        texts = acc[code]
        n = n_unk = 0
        for i in range(0, len(texts), 256):  # bounded memory: an Encoding costs ~150 bytes per character
            ids = tokenizer.encode_batch(texts[i : i + 256])
            n += sum(len(x) for x in ids)
            n_unk += sum(x.count(unk) for x in ids) if unk is not None else 0
        words = sum(len(t.split()) for t in texts)
        chars = sum(len("".join(t.split())) for t in texts)
        out[code] = {"docs": len(texts), "words": words, "chars": chars, "tokens": n,
                     "tokens_per_word": n / max(words, 1), "tokens_per_char": n / max(chars, 1), "unk": n_unk}
    return out

