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

Randomness that belongs to the whole step rather than to an example (mtlm's attention mode,
drawn once per batch as UniLM does) comes from :meth:`ExampleRNG.per_step`: a generator keyed by
``(seed, step_start, call number)``, where ``step_start`` is the global stream position of the
step's first example (``step * batch_size * grad_accum * world_size``, so it names the step). It
is the same on every micro-batch and rank of one step. Without ``step_start`` it falls back to
the batch's first example, which is the step's first example when a step is one micro-batch on
one process (the same numbers as before step keying existed).

The object holds no state between batches: there is nothing to checkpoint, and a resumed run
draws the same numbers. Objectives opt in with ``per_example_rng = True``; per-row loops use
:func:`row_generators`, ragged per-row calls :func:`row_streams`.
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
        step_start: the global stream position of the first example of the step these rows
            belong to (keys the per-step draws); None: the first row's key.
    """

    def __init__(self, seed: int, keys: Sequence[int], step_start: int | None = None):
        self.seed = int(seed)
        self.keys = [int(k) for k in keys]
        self.step_start = None if step_start is None else int(step_start)
        self.calls = 0

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self) -> list[np.random.Generator]:
        """One fresh generator per row for this call (for per-row loops)."""
        k = self.calls
        self.calls += 1
        return [np.random.default_rng([self.seed, key, k]) for key in self.keys]

    def per_step(self) -> np.random.Generator:
        """One fresh generator for this call, shared by every micro-batch and rank of the step.

        Returns:
            ``default_rng([seed, step_start, call])``. The call number advances as for a per-row
            draw, so the rows' later draws do not depend on whether this one was made; the first
            example's own stream for this call number is never used by a row.
        """
        k = self.calls
        self.calls += 1
        start = self.step_start if self.step_start is not None else (self.keys[0] if self.keys else 0)
        return np.random.default_rng([self.seed, start, k])

    def row(self, i: int) -> "ExampleRNG":
        """Row ``i`` alone, at the same call number (for a per-row call on ragged rows)."""
        out = ExampleRNG(self.seed, [self.keys[i]], self.step_start)
        out.calls = self.calls
        return out

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

    def permuted(self, x: Any, axis: int = 1) -> np.ndarray:
        """Each row of ``x`` (B, n) shuffled by its own stream (``Generator.permuted`` per row)."""
        x = np.asarray(x)
        if x.ndim != 2 or axis not in (1, -1):
            raise ValueError(f"ExampleRNG.permuted: shuffles the rows of a (B, n) array along axis 1, got "
                             f"shape {x.shape}, axis {axis}")
        self._shape(x.shape)
        return np.stack([g.permuted(x[b]) for b, g in enumerate(self.rows())]).reshape(x.shape)


def row_generators(rng: np.random.Generator | ExampleRNG, n_rows: int) -> list[np.random.Generator]:
    """Generators for a per-row loop: each example's own under :class:`ExampleRNG`, else the
    one shared batch generator for every row (consumed in row order, as before)."""
    if isinstance(rng, ExampleRNG):
        return rng.rows()
    return [rng] * n_rows


def row_streams(rng: np.random.Generator | ExampleRNG, n_rows: int) -> list[np.random.Generator | ExampleRNG]:
    """What to hand a vectorised per-batch function called once per row (ragged rows): each
    row's own :class:`ExampleRNG` at the current call number, else the shared generator.

    The caller advances nothing: a row's draws are those it would make in a batch of equal rows."""
    if isinstance(rng, ExampleRNG):
        return [rng.row(i) for i in range(n_rows)]
    return [rng] * n_rows


def example_rng(objective: Any, seed: int, keys: Sequence[int], fallback: np.random.Generator,
                step_start: int | None = None) -> np.random.Generator | ExampleRNG:
    """What a trainer passes to ``objective.collate``.

    Args:
        objective: an :class:`~transferlab.objectives.base.Objective`.
        seed: the run's seed.
        keys: one global stream position per example.
        fallback: the trainer's batch-level generator.
        step_start: global stream position of the step's first example (keys per-step draws,
            see :meth:`ExampleRNG.per_step`); None: the batch's first example.

    Returns:
        An :class:`ExampleRNG` for objectives that declare ``per_example_rng``, else ``fallback``.
    """
    return ExampleRNG(seed, keys, step_start) if objective.per_example_rng else fallback
