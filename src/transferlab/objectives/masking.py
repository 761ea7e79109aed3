"""Vectorised masking primitives shared by the objectives (numpy, no per-token Python loops).

Everything works on *units*: a unit is a token, or a whole word (a word start plus its
continuation pieces) for whole-word masking. A batch is described by ``unit_of`` (B, T): the
unit index of every token within its row, -1 for tokens that may never be picked (special tokens,
padding). Selection happens in unit space, then maps back to tokens.

Rates are exact in expectation: the number of units (or spans) to pick is ``p * n`` rounded
*stochastically* (floor plus a Bernoulli draw on the fractional part), so short rows are not
biased the way ``round`` or ``ceil`` would bias them.
"""

from __future__ import annotations

import numpy as np


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``floor(x) + Bernoulli(x - floor(x))``: an integer array whose expectation is exactly x."""
    x = np.asarray(x, dtype=np.float64)
    fl = np.floor(x)
    return (fl + (rng.random(x.shape) < (x - fl))).astype(np.int64)


def units(candidates: np.ndarray, word_start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Number the units of each row.

    Args:
        candidates: (B, T) bool, tokens that may be picked.
        word_start: (B, T) bool or None. With it, a unit is a word: it starts at a candidate that
            is a word start *or* follows a non-candidate (a window may begin mid-word).

    Returns:
        unit_of (B, T) int64 (-1 for non-candidates) and n_units (B,) int64.
    """
    if word_start is None:
        starts = candidates
    else:
        prev = np.zeros_like(candidates)
        prev[:, 1:] = candidates[:, :-1]
        starts = candidates & (word_start | ~prev)
    unit_of = np.cumsum(starts, axis=1, dtype=np.int64) - 1
    unit_of[~candidates] = -1
    return unit_of, starts.sum(1).astype(np.int64)


def choose(n: np.ndarray, k: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """(B, width) bool: ``k[b]`` of the first ``n[b]`` slots of row b, uniformly without
    replacement: random keys, keep those at or below each row's k-th smallest key."""
    B = len(n)
    keys = rng.random((B, width))
    keys[np.arange(width)[None, :] >= n[:, None]] = 2.0  # invalid slots sort last
    kk = np.minimum(k, n)
    kth = np.sort(keys, axis=1)[np.arange(B), np.maximum(kk - 1, 0)]  # (B,) threshold
    return (keys <= np.where(kk > 0, kth, -1.0)[:, None]) & (keys < 2.0)


def place_spans(n: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Place spans uniformly at random, without overlap and with at least one free unit between
    consecutive spans (so every span stays a separate run: observed runs = sampled spans).

    Uniformity comes from a stars-and-bars argument: lay out the ``F = n - sum(l) - (k - 1)``
    free units and ``k`` blocks (span j plus its mandatory gap); choosing which ``k`` of the
    ``F + k`` items are blocks is a uniform random subset, and span j then starts at
    ``s_j + sum_{i<j} l_i`` where ``s_j`` is its block's index. Spans that do not fit are dropped
    from the end of the row (never happens at the usual 15-30% rates).

    Args:
        n: (B,) units per row.
        lengths: (B, K) span lengths in units (>= 0; length 0 = an insertion point), -1 = no span.

    Returns:
        starts (B, K) int64 (-1 where there is no span) and lengths (B, K) with dropped spans -1.
    """
    lengths = lengths.copy()
    valid = lengths >= 0
    li = np.where(valid, lengths, 0)
    # units needed by spans 0..j (with gaps between them)
    need = np.cumsum(li, axis=1) + np.cumsum(valid, axis=1) - 1
    valid &= need <= n[:, None]
    lengths[~valid] = -1
    li = np.where(valid, lengths, 0)
    k = valid.sum(1)
    free = n - li.sum(1) - np.maximum(k - 1, 0)  # >= 0 by construction
    m = free + k
    width = max(int(m.max(initial=0)), 1)
    chosen = choose(m, k, width, rng)  # (B, width)
    rows, cols = np.nonzero(chosen)  # row-major: block indices come out sorted within a row
    j = (np.cumsum(chosen, axis=1) - 1)[rows, cols]
    K = lengths.shape[1]
    s = np.full((len(n), K), -1, dtype=np.int64)
    s[rows, j] = cols
    # spans were kept as a prefix of each row (valid is a prefix), so block j <-> span j
    before = np.cumsum(li, axis=1) - li  # sum of earlier span lengths
    starts = np.where(valid, s + before, -1)
    return starts, lengths


def spans_to_mask(starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """(B, width) bool mask covering ``[start, start + length)`` of every span (difference array)."""
    B = starts.shape[0]
    diff = np.zeros((B, width + 1), dtype=np.int64)
    ok = (starts >= 0) & (lengths > 0)
    r = np.broadcast_to(np.arange(B)[:, None], starts.shape)[ok]
    np.add.at(diff, (r, starts[ok]), 1)
    np.add.at(diff, (r, starts[ok] + lengths[ok]), -1)
    return np.cumsum(diff, axis=1)[:, :width] > 0


def truncated_geometric(p: float, max_len: int) -> np.ndarray:
    """Probabilities of lengths 1..max_len for a geometric(p) truncated at max_len and
    renormalised (SpanBERT's sampler: mean 3.80 for p=0.2, max 10)."""
    k = np.arange(1, max_len + 1)
    w = p * (1 - p) ** (k - 1)
    return w / w.sum()


def truncated_geometric_mean(p: float, max_len: int) -> float:
    """Expected span length of :func:`truncated_geometric`."""
    return float((np.arange(1, max_len + 1) * truncated_geometric(p, max_len)).sum())


def span_lengths(rng: np.random.Generator, n_spans: np.ndarray, dist: str, **kw: float) -> np.ndarray:
    """(B, max n_spans) span lengths, -1 beyond each row's count.

    dist: ``geometric`` (kw ``p``, ``max_len``; truncated, >= 1) or ``poisson`` (kw ``lam``; >= 0).
    """
    B = len(n_spans)
    K = max(int(n_spans.max(initial=0)), 1)
    if dist == "geometric":
        probs = truncated_geometric(kw["p"], int(kw["max_len"]))
        lengths = rng.choice(np.arange(1, len(probs) + 1), size=(B, K), p=probs)
    elif dist == "poisson":
        lengths = rng.poisson(kw["lam"], size=(B, K))
    else:  # pragma: no cover - internal
        raise ValueError(dist)
    lengths = lengths.astype(np.int64)
    lengths[np.arange(K)[None, :] >= n_spans[:, None]] = -1
    return lengths


def select_units(
    unit_of: np.ndarray,
    n_units: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    span: dict | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pick units at ``rate`` (in expectation, exactly), uniformly or as spans.

    Args:
        unit_of, n_units: from :func:`units`.
        rate: expected fraction of units to pick.
        span: None for independent units, else ``{"dist": "geometric", "p":.., "max_len":..}``
            or ``{"dist": "poisson", "lam":..}``: ``rate * n / mean_length`` spans
            (stochastically rounded) of sampled lengths, placed by :func:`place_spans`.

    Returns:
        picked (B, U) bool (U = max n_units, at least 1) and, for spans, the span index of every
        unit (B, U) int64 (-1 outside spans; SpanBERT decides mask/random/keep per span), else None.
    """
    U = max(int(n_units.max(initial=0)), 1)
    if span is None:
        k = stochastic_round(rate * n_units, rng)
        return choose(n_units, k, U, rng), None
    span = dict(span)
    dist = span.pop("dist")
    mean = truncated_geometric_mean(span["p"], span["max_len"]) if dist == "geometric" else span["lam"]
    n_spans = stochastic_round(rate * n_units / mean, rng)
    lengths = span_lengths(rng, n_spans, dist, **span)
    starts, lengths = place_spans(n_units, lengths, rng)
    picked = spans_to_mask(starts, lengths, U)
    # span index of every covered unit: count of span starts at or before it (spans never touch)
    marks = np.zeros((len(n_units), U + 1), dtype=np.int64)
    ok = (starts >= 0) & (lengths > 0)
    r = np.broadcast_to(np.arange(len(n_units))[:, None], starts.shape)[ok]
    marks[r, starts[ok]] = 1
    span_of = np.where(picked, np.cumsum(marks[:, :U], axis=1) - 1, -1)
    return picked, span_of


def to_tokens(unit_values: np.ndarray, unit_of: np.ndarray, fill=False) -> np.ndarray:
    """Broadcast a (B, U) per-unit array to (B, T) tokens (``fill`` where unit_of is -1)."""
    rows = np.arange(unit_of.shape[0])[:, None]
    out = unit_values[rows, np.maximum(unit_of, 0)]
    return np.where(unit_of >= 0, out, fill)

