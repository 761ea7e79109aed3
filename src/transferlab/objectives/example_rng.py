"""Per-example random streams, so masks and noise do not depend on how a batch is split.

A collator draws its randomness in calls shaped ``(B, ...)``: row ``b`` of every draw belongs to
example ``b``. :class:`ExampleRNG` answers each such call with row ``b`` taken from a generator of
its own, keyed by ``(seed, key_b, call number)``, where ``key_b`` is the example's position in the
run's global example stream (which fixes the step and the example, see
:class:`~transferlab.training.distributed.GlobalSampler`). An example therefore gets the same
masks whether it is collated in one batch of 32, in 4 accumulated micro-batches of 8 or on the
second of 2 ranks, and gradient accumulation and data parallelism are exactly the large batch.

Two properties make that hold for the vectorised collators:

* a fresh generator per call: a draw's width (the batch's longest row, its largest number of
  spans) cannot shift the stream the next draw of the same row reads;
* numpy draws element by element in order, so the first ``n`` values of a row do not depend on
  how many more the call asked for (the padding of the widest row in the batch).

The object holds no state between batches: there is nothing to checkpoint, and a resumed run
draws the same numbers. Objectives opt in with ``per_example_rng = True``; per-row loops use
:func:`row_generators`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class ExampleRNG:
    """A ``numpy.random.Generator`` look-alike for ``(B, ...)``-shaped draws, one stream per row.

    Args:
        seed: the run's seed.
        keys: one integer per row (the example's global stream position, or its dataset index
            for evaluation).
    """

    def __init__(self, seed: int, keys: Sequence[int]):
        self.seed = int(seed)
        self.keys = [int(k) for k in keys]
        self.calls = 0

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self) -> list[np.random.Generator]:
        """One fresh generator per row for this call (for per-row loops)."""
        k = self.calls
        self.calls += 1
        return [np.random.default_rng([self.seed, key, k]) for key in self.keys]

    def _shape(self, size: Any) -> tuple[int, ...]:
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if not shape or shape[0] != len(self.keys):
            raise ValueError(f"ExampleRNG: a draw must be shaped (B={len(self.keys)}, ...), got {shape}")
        return shape

    def _draw(self, size: Any, fn) -> np.ndarray:
        shape = self._shape(size)
        return np.stack([np.asarray(fn(g, shape[1:])) for g in self.rows()]).reshape(shape)

    def random(self, size: Any) -> np.ndarray:
        return self._draw(size, lambda g, s: g.random(s))

    def integers(self, low: int, high: int | None = None, size: Any = None) -> np.ndarray:
        return self._draw(size, lambda g, s: g.integers(low, high, s))

    def choice(self, a: Any, size: Any = None, p: Any = None) -> np.ndarray:
        return self._draw(size, lambda g, s: g.choice(a, size=s, p=p))

    def poisson(self, lam: float, size: Any = None) -> np.ndarray:
        return self._draw(size, lambda g, s: g.poisson(lam, s))


def row_generators(rng: np.random.Generator | ExampleRNG, n_rows: int) -> list[np.random.Generator]:
    """Generators for a per-row loop: each example's own under :class:`ExampleRNG`, else the
    one shared batch generator for every row (consumed in row order, as before)."""
    if isinstance(rng, ExampleRNG):
        return rng.rows()
    return [rng] * n_rows


def example_rng(objective: Any, seed: int, keys: Sequence[int],
                fallback: np.random.Generator) -> np.random.Generator | ExampleRNG:
    """What a trainer passes to ``objective.collate``.

    Args:
        objective: an :class:`~transferlab.objectives.base.Objective`.
        seed: the run's seed.
        keys: one global stream position per example.
        fallback: the trainer's batch-level generator.

    Returns:
        An :class:`ExampleRNG` for objectives that declare ``per_example_rng``, else ``fallback``.
    """
    return ExampleRNG(seed, keys) if objective.per_example_rng else fallback
