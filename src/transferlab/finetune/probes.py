"""Tools on frozen features: linear probes per layer and on a learned scalar mix, and a word's
contextual nearest neighbours.

* :func:`probe` — linear probes (logistic regression) on frozen pooled features of a
  classification task: one per layer, one on the uniform average of the layers and one on a
  scalar mix learned jointly with a linear head, the mix's weights reported.
* :func:`neighbours` — contextual nearest neighbours of a word in context ("play" the verb, the
  theatre piece and the sports move get different vectors), next to the static input-embedding
  nearest vocabulary tokens. A word split into sub-words gets the mean of its pieces' vectors.

Both take a :class:`~transferlab.finetune.features.FeaturesConfig` and/or its fields as keywords.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .features import (PLAY_EXAMPLES, FeaturesConfig, ScalarMix, _n_states, _resolve_layer, extract_features,
                       features_config)

#: what the tools default to where extraction's defaults do not suit them
_TOOL_DEFAULTS: dict[str, Any] = {"max_length": 128}


def _tool_config(config: FeaturesConfig | None, **settings: Any) -> FeaturesConfig:
    """``config``, or the tools' defaults (:data:`_TOOL_DEFAULTS`), with ``settings`` applied."""
    return features_config(config if config is not None else FeaturesConfig(**_TOOL_DEFAULTS), **settings)


# ------------------------------------------------------------------------------ probing
def fit_logreg(
    x_train: np.ndarray,
    y_train: Sequence[Any],
    x_val: np.ndarray,
    y_val: Sequence[Any],
    c_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    seed: int = 0,
) -> tuple[Any, float, float]:
    """Standardise + logistic regression, C picked by validation accuracy (ties: smaller C).

    Returns:
        ``(fitted sklearn pipeline, best C, validation accuracy)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        clf.fit(x_train, y_train)
        acc = float(np.mean(clf.predict(x_val) == np.asarray(y_val)))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    assert best is not None
    return best[2], best[1], best[0]


def train_scalar_mix(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1),
    layer_norm: bool = True,
    seed: int = 0,
) -> tuple[ScalarMix, nn.Linear, float]:
    """Learn a :class:`ScalarMix` and a linear classifier jointly on frozen per-layer features.

    Full-batch Adam on cross-entropy (the features are small: N x L x C). For each L2 strength
    of the classifier (the mix itself is not decayed: a decayed mix drifts to uniform) the step
    with the best validation accuracy is kept (ties: the lower validation loss); the best of those
    wins. A linear head on a few hundred dimensions fits 1,000 examples perfectly, so without this
    selection the mix weights would only record which layers make overfitting easiest.

    Args:
        x_train: ``(N, L, C)`` pooled features of every layer.
        y_train: ``(N,)`` integer class ids.
        x_val, y_val: the same for model selection.
        epochs: full-batch steps per weight decay.
        lr: Adam learning rate.
        weight_decays: L2 strengths tried on the classifier.
        layer_norm: see :class:`ScalarMix`.
        seed: for the classifier's initialisation.

    Returns:
        ``(mix, classifier, best validation accuracy)``.
    """
    xt, xv = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(x_val, dtype=torch.float32)
    yt, yv = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_val, dtype=torch.long)
    n_classes = int(max(yt.max(), yv.max())) + 1
    xt_l, xv_l = xt.transpose(0, 1), xv.transpose(0, 1)  # (L, N, C): the mix wants layers first
    best: tuple[float, float, Any] = (-1.0, math.inf, None)
    for wd in weight_decays:
        g = torch.Generator().manual_seed(seed)
        mix = ScalarMix(xt.shape[1], layer_norm=layer_norm)
        head = nn.Linear(xt.shape[2], n_classes)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
            head.bias.zero_()
        opt = torch.optim.Adam([{"params": mix.parameters(), "weight_decay": 0.0},
                                {"params": head.parameters(), "weight_decay": wd}], lr=lr)
        with torch.enable_grad():
            for _ in range(epochs):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(mix(xt_l)), yt).backward()
                opt.step()
                with torch.no_grad():
                    logits = head(mix(xv_l))
                    acc = float((logits.argmax(-1) == yv).float().mean())
                    vloss = float(F.cross_entropy(logits, yv))
                if acc > best[0] or (acc == best[0] and vloss < best[1]):
                    best = (acc, vloss, (mix.n_layers, layer_norm, {k: v.clone() for k, v in mix.state_dict().items()},
                                         {k: v.clone() for k, v in head.state_dict().items()}))
    n, ln, mix_state, head_state = best[2]
    mix, head = ScalarMix(n, layer_norm=ln), nn.Linear(xt.shape[2], n_classes)
    mix.load_state_dict(mix_state)
    head.load_state_dict(head_state)
    return mix, head, best[0]


@dataclass
class ProbeResult:
    """What :func:`probe` found. Accuracies on a 0-1 scale."""

    rows: list[dict[str, Any]]  #: one per layer + "mean" + "mix": {probe, layer, C, validation, test}
    mix_weights: list[float]  #: softmax-normalised learned weights, embeddings first
    mix_gamma: float
    n_train: int
    task: str
    pooling: str
    mix: ScalarMix | None = None

    def table(self) -> str:
        """A plain-text table of the rows plus the learned weights."""
        lines = [f"{'probe':<10} {'C':>6} {'val acc':>8} {'test acc':>8}"]
        for r in self.rows:
            test = f"{r['test']:.4f}" if r.get("test") is not None else "-"
            lines.append(f"{r['probe']:<10} {r['C']:>6g} {r['validation']:>8.4f} {test:>8}")
        w = " ".join(f"{x:.3f}" for x in self.mix_weights)
        lines.append(f"learned mix weights (layer 0 = embeddings .. {len(self.mix_weights) - 1}): {w}; gamma {self.mix_gamma:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "pooling": self.pooling, "n_train": self.n_train, "rows": self.rows,
                "mix_weights": self.mix_weights, "mix_gamma": self.mix_gamma}


def probe(
    model: nn.Module,
    tokenizer: Any,
    task: str | Any = "rotten-tomatoes",
    config: FeaturesConfig | None = None,
    **settings: Any,
) -> ProbeResult:
    """Linear probes on frozen features of every layer, their uniform average and a learned mix.

    Each probe is the same classifier (standardise + logistic regression, C tuned on the
    validation split), so the rows differ only in their features; the "mix" row uses the
    weights of a :class:`ScalarMix` trained jointly with a linear head (:func:`train_scalar_mix`).

    Args:
        model, tokenizer: the frozen model and its tokenizer.
        task: a built-in classification task name or a
            :class:`~transferlab.finetune.tasks.TaskData` (``{"text", "label"}`` examples,
            ``"pair"`` too for pair-classification).
        config: the :class:`FeaturesConfig`; default: one with ``max_length=128``. Its fields
            used: ``train_size`` (a seeded subsample; None = all), ``seed`` (subsample and
            initialisation), ``pooling`` (mean, cls or last), ``max_length``, ``batch_size``,
            ``dtype`` (extraction), ``c_grid`` (inverse regularisation strengths tried),
            ``eval_on_test``, ``progress``, ``mix_epochs`` (full-batch steps of the scalar-mix
            training per weight decay).
        **settings: :class:`FeaturesConfig` fields overriding ``config`` (``train_size=500``).

    Returns:
        :class:`ProbeResult`.
    """
    from .task_types import get_task_type
    from .tasks import load_builtin, subsample

    cfg = _tool_config(config, **settings)
    pooling, seed, eval_on_test = cfg.pooling, cfg.seed, cfg.eval_on_test
    if pooling == "none":
        raise ConfigError("probe needs a pooled vector per example: pooling cls, mean or last")
    splits = load_builtin(task) if isinstance(task, str) else task
    kind = splits.task_type
    task_kind = get_task_type(kind)
    if not task_kind.has_classes:
        raise ConfigError(f"probe needs a classification task, {splits.name!r} is {kind}")
    train = subsample(splits.train, cfg.train_size, seed, kind)
    parts = {"train": train, "validation": splits.validation}
    if eval_on_test:
        parts["test"] = splits.test
    labels = sorted({str(ex["label"]) for ex in splits.train + splits.validation})
    lid = {lab: i for i, lab in enumerate(labels)}
    feats, ys = {}, {}
    for name, exs in parts.items():
        if not exs:
            raise DataError(f"probe: the {name} split is empty")
        texts = [task_kind.feature_texts(ex) for ex in exs]  # (text, pair or None)
        pairs = [b for _, b in texts] if texts and texts[0][1] is not None else None
        feats[name] = extract_features(model, tokenizer, [a for a, _ in texts], "all", pooling, pairs,
                                       config=cfg).values  # (N, L+1, C)
        ys[name] = np.array([lid.get(str(ex["label"]), -1) for ex in exs])
    n_states = feats["train"].shape[1]
    rows: list[dict[str, Any]] = []

    def score(probe_name: str, layer: Any, x: dict[str, np.ndarray]) -> None:
        # the same classifier for every row: only the features differ
        clf, c, val = fit_logreg(x["train"], ys["train"], x["validation"], ys["validation"], cfg.c_grid, seed)
        test = float(np.mean(clf.predict(x["test"]) == ys["test"])) if eval_on_test else None
        rows.append({"probe": probe_name, "layer": layer, "C": c, "validation": val, "test": test})

    for j in range(n_states):
        score(f"layer {j}", j, {k: v[:, j] for k, v in feats.items()})
    score("mean", "mean", {k: v.mean(1) for k, v in feats.items()})
    mix, _, _ = train_scalar_mix(feats["train"], ys["train"], feats["validation"], ys["validation"],
                                 epochs=cfg.mix_epochs, seed=seed)
    with torch.no_grad():  # (N, L, C) -> layers first for the mix -> (N, C)
        score("mix", "mix", {k: mix(torch.as_tensor(v).transpose(0, 1)).numpy() for k, v in feats.items()})
    return ProbeResult(rows, [float(w) for w in mix.weights.detach()], float(mix.gamma.detach()), len(train),
                       splits.name, pooling, mix)


# ------------------------------------------------------------------------------ neighbours
def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def find_occurrences(sentences: Iterable[str], word: str) -> list[tuple[str, int, int]]:
    """Every whole-word, case-insensitive occurrence ``(sentence, start, end)`` of ``word``."""
    pat = _word_pattern(word)
    return [(s, m.start(), m.end()) for s in sentences for m in pat.finditer(s)]


def word_vectors(
    model: nn.Module,
    tokenizer: Any,
    occurrences: Sequence[tuple[str, int, int]],
    layer: int = -1,
    batch_size: int = 32,
    max_length: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Contextual vector of each word occurrence: the mean of its sub-word vectors at ``layer``.

    Args:
        occurrences: ``(sentence, start_char, end_char)`` of the word in each sentence.
        layer: hidden-state index (``0`` = embedding output, ``-1`` = last block).

    Returns:
        ``(vectors (K, C) float32, found (K,) bool)``; ``found`` is False where truncation cut the
        word off (its vector is then zero).
    """
    from ..checks import cap_max_length

    max_length = cap_max_length(model, max_length)
    occ = list(occurrences)
    feats = extract_features(model, tokenizer, [s for s, _, _ in occ], layer, "none",
                             batch_size=batch_size, max_length=max_length)
    enc = tokenizer([s for s, _, _ in occ], truncation=True, max_length=max_length, return_offsets_mapping=True)
    vecs = np.zeros((len(occ), feats.values.shape[-1]), dtype=np.float32)
    found = np.zeros(len(occ), dtype=bool)
    for i, (_, a, b) in enumerate(occ):
        # tokens whose character span overlaps the word; special tokens have empty (0, 0) spans
        pieces = [t for t, (s, e) in enumerate(enc["offset_mapping"][i]) if e > s and s < b and e > a]
        if pieces:
            vecs[i] = feats.values[i, pieces].mean(0)
            found[i] = True
    return vecs, found


def static_neighbours(model: nn.Module, tokenizer: Any, word: str, k: int = 10) -> list[tuple[str, float]]:
    """Nearest vocabulary tokens to ``word``'s input embedding (mean of its pieces), by cosine.

    Special tokens and the word's own pieces are left out.
    """
    emb = model.get_input_embeddings().weight.detach().float()  # (V, C)
    variants = [word] + ([" " + word] if getattr(tokenizer, "kind", "") == "bpe" else [])
    ids = tokenizer(variants[-1], add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"the tokenizer produces no tokens for {word!r}")
    q = emb[ids].mean(0)
    sims = F.cosine_similarity(emb, q[None], dim=-1)  # (V,)
    exclude = set(ids) | set(getattr(tokenizer, "all_special_ids", []) or [])
    for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos"):
        t = getattr(tokenizer, f"{role}_token_id", None)
        if t is not None:
            exclude.add(t)
    order = torch.argsort(sims, descending=True).tolist()
    out = []
    for t in order:
        if t in exclude or t >= len(tokenizer):
            continue
        out.append((tokenizer.convert_ids_to_tokens(t), float(sims[t])))
        if len(out) == k:
            break
    return out


def sample_sentences(corpus: str | Sequence[str], word: str, n: int = 2000, seed: int = 0,
                     max_chars: int = 400) -> list[str]:
    """Up to ``n`` sentences containing ``word``, sampled reproducibly (reservoir) from a corpus.

    Args:
        corpus: ``builtin:NAME``, a file or folder (read with ``read_documents``), or a list of
            sentences/documents.
        word: only sentences containing it (whole word, any case) are kept.
        n: sample size.
        seed: reservoir-sampling seed.
        max_chars: sentences longer than this are skipped (run-ons and lists, not sentences).

    Returns:
        The sampled sentences (distinct: repeated boilerplate would crowd out real neighbours),
        in corpus order.
    """
    from ..data.sentences import split_sentences

    pat = _word_pattern(word)
    if isinstance(corpus, (str, Path)):
        from ..data.corpus import read_documents

        docs: Iterable[str] = (d.text for d in read_documents(str(corpus)))
    else:
        docs = corpus
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    seen = 0
    distinct: set[str] = set()
    for doc in docs:
        if not pat.search(doc):  # cheap pre-filter before sentence splitting
            continue
        for a, b in split_sentences(doc):
            s = " ".join(doc[a:b].split())
            if len(s) > max_chars or s in distinct or not pat.search(s):
                continue
            distinct.add(s)
            if len(reservoir) < n:
                reservoir.append((seen, s))
            else:
                j = rng.randint(0, seen)
                if j < n:
                    reservoir[j] = (seen, s)
            seen += 1
    return [s for _, s in sorted(reservoir)]


@dataclass
class NeighbourReport:
    """Result of :func:`neighbours`."""

    word: str
    layer: int
    queries: list[dict[str, Any]]  #: {sentence, neighbours: [(similarity, sentence), ...]}
    static: list[tuple[str, float]]  #: nearest vocabulary tokens by input embedding
    n_occurrences: int
    global_vectors: bool = False  #: a context-free model (word2vec): only the global neighbours

    def format(self, width: int = 110) -> str:
        def mark(s: str) -> str:
            return _word_pattern(self.word).sub(lambda m: f"[{m.group(0)}]", s, count=1)

        def clip(s: str) -> str:
            s = mark(s)
            if len(s) <= width:
                return s
            i = max(s.find("["), 0)
            a = max(0, min(i - width // 3, len(s) - width))
            return ("..." if a else "") + s[a : a + width - 6] + "..."

        toks = ", ".join(f"{t} ({s:.2f})" for t, s in self.static)
        if self.global_vectors:
            return (f"global nearest neighbours of {self.word!r} (cosine in the input vectors; a word vector does "
                    f"not depend on its context, so there are no contextual ones): {toks}")
        lines = [f"contextual neighbours of {self.word!r} (layer {self.layer}, {self.n_occurrences} corpus occurrences)"]
        for q in self.queries:
            lines.append(f"\n> {mark(q['sentence'])}")
            for sim, s in q["neighbours"]:
                lines.append(f"  {sim:.3f}  {clip(s)}")
        lines.append(f"\nstatic input-embedding neighbours of {self.word!r}: {toks}")
        return "\n".join(lines)


def neighbours(
    model: nn.Module,
    tokenizer: Any,
    word: str,
    corpus: str | Sequence[str] = "builtin:reviews+news",
    sentences: Sequence[str] | None = None,
    config: FeaturesConfig | None = None,
    **settings: Any,
) -> NeighbourReport:
    """Nearest corpus occurrences of ``word`` to each query sentence, by contextual vector.

    Args:
        word: the word to look at (whole-word, case-insensitive match).
        corpus: where occurrences come from (see :func:`sample_sentences`).
        sentences: query sentences containing ``word``; default :data:`PLAY_EXAMPLES` for
            "play", else the first three sampled sentences (then left out of the pool).
        config: the :class:`FeaturesConfig`; default: one with ``max_length=128``. Its fields
            used: ``n_sentences`` (corpus sentences containing the word to sample), ``k``
            (neighbours per query, and static neighbours), ``layer`` (a number: ``-1`` the last
            block), ``seed`` (sampling), ``batch_size``, ``max_length``.
        **settings: :class:`FeaturesConfig` fields overriding ``config`` (``k=3``).

    Returns:
        :class:`NeighbourReport`; ``format()`` renders it.
    """
    cfg = _tool_config(config, **settings)
    if not re.fullmatch(r"-?\d+", cfg.layer):
        raise ConfigError(f"neighbours: layer {cfg.layer!r}: expected a hidden-state number")
    layer, k, max_length = int(cfg.layer), cfg.k, cfg.max_length
    from ..models.backbone import backbone_of

    if not getattr(backbone_of(model), "contextual", True):  # word2vec: every occurrence has the same vector
        return NeighbourReport(word, 0, [], static_neighbours(model, tokenizer, word, k), 0, global_vectors=True)
    pool = sample_sentences(corpus, word, cfg.n_sentences, cfg.seed)
    if sentences is None:
        if word.lower() == "play":
            sentences = list(PLAY_EXAMPLES)
        else:
            sentences, pool = pool[:3], pool[3:]
    queries = list(sentences)
    for s in queries:
        if not _word_pattern(word).search(s):
            raise ConfigError(f"query sentence does not contain {word!r}: {s!r}")
    pool_occ = find_occurrences(pool, word)
    if not pool_occ:
        raise DataError(f"{word!r} does not occur in the corpus sample ({corpus if isinstance(corpus, str) else 'given sentences'})")
    q_occ = [next(iter(find_occurrences([s], word))) for s in queries]
    vecs, found = word_vectors(model, tokenizer, q_occ + pool_occ, layer, cfg.batch_size, max_length)
    for s, ok in zip(queries, found[: len(q_occ)]):
        if not ok:
            raise ConfigError(f"the word falls beyond max_length={max_length} tokens in the query {s[:60]!r}...; "
                              "shorten it or raise --max-length")
    v = torch.nn.functional.normalize(torch.as_tensor(vecs), dim=-1)
    qv, pv = v[: len(q_occ)], v[len(q_occ):]
    pool_ok = torch.as_tensor(found[len(q_occ):])
    sims = qv @ pv.T  # (Q, P) cosine
    sims[:, ~pool_ok] = -2.0
    out = []
    for i, s in enumerate(queries):
        top = torch.topk(sims[i], min(k, int(pool_ok.sum()))).indices.tolist()
        out.append({"sentence": s, "neighbours": [(float(sims[i, j]), pool_occ[j][0]) for j in top]})
    n_states = _n_states(model)
    return NeighbourReport(word, _resolve_layer(layer, n_states), out, static_neighbours(model, tokenizer, word, k),
                           len(pool_occ))
