"""Running statistics for fitting in one streaming pass (`partial_fit`), in bounded memory.

`Moments` keeps count, mean and sum of squared deviations per column and folds chunks in
with Chan's parallel formulas (float64), so mean and variance match a one-shot numpy
computation on the same rows to about 1e-12 relative. `Reservoir` keeps a uniform sample of
at most `size` values (Algorithm R, vectorized per chunk) for the statistics that have no
exact bounded-memory form: medians, percentiles and the most frequent number.
"""

from __future__ import annotations

import zlib

import numpy as np

RESERVOIR_SIZE = 100_000
"""Values kept per column for the approximate statistics (median, robust, most_frequent)."""


class Moments:
    """Count, mean, M2 (sum of squared deviations), min and max of each of C columns.

    Missing values (NaN) are skipped. `update` folds in one (N, C) chunk.

    Example:
        >>> moments = Moments(1)
        >>> moments.update(np.array([[1.0], [np.nan]])).update(np.array([[3.0]]))
        >>> moments.count.tolist(), moments.mean.tolist(), moments.var.tolist()
        ([2.0], [2.0], [1.0])
    """

    def __init__(self, n_columns: int) -> None:
        self.count = np.zeros(n_columns)
        self.mean = np.zeros(n_columns)
        self.m2 = np.zeros(n_columns)
        self.min = np.full(n_columns, np.inf)
        self.max = np.full(n_columns, -np.inf)

    def update(self, x: np.ndarray) -> Moments:
        """Fold in the (N, C) float64 chunk `x` (NaN = missing)."""
        observed = ~np.isnan(x)
        count = observed.sum(axis=0).astype(np.float64)  # (C,)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, np.nansum(x, axis=0) / count, 0.0)
        m2 = np.nansum((x - mean) ** 2, axis=0)
        self.merge(count, mean, m2)
        self.min = np.fmin(self.min, np.fmin.reduce(x, axis=0, initial=np.inf))
        self.max = np.fmax(self.max, np.fmax.reduce(x, axis=0, initial=-np.inf))
        return self

    def merge(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan et al.'s pairwise update with another group's (count, mean, m2)."""
        self.count, self.mean, self.m2 = combine(self.count, self.mean, self.m2, count, mean, m2)

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof 0), 0 where a column has no values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, 0.0)


def combine(
    n_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray,
    n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and M2 of the union of two groups (Chan, Golub and LeVeque 1979).

    A group with count 0 leaves the other unchanged (its mean must be finite, e.g. 0).
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n > 0, n_b / n, 0.0)
    mean = np.where(n_a > 0, mean_a + delta * share, mean_b)
    m2 = m2_a + m2_b + delta * delta * n_a * share
    return n, mean, m2


class Reservoir:
    """A uniform random sample of at most `size` values from a stream of numbers.

    Algorithm R, vectorized: the first `size` values fill the sample; the value at 0-based
    position i >= size replaces slot ``floor(u * (i + 1))`` when that is below `size`, with u
    uniform in [0, 1). One uniform is drawn per value after the first `size`, so for a given
    `seed` the sample does not depend on how the stream is cut into chunks. Memory is
    `size` float64 values at most.

    Example:
        >>> sample = Reservoir(3, seed=0).add(np.arange(10.0)).values
        >>> len(sample)
        3
    """

    def __init__(self, size: int, seed: int | np.random.SeedSequence) -> None:
        if size < 1:
            raise ValueError(f"reservoir size must be at least 1; got {size!r}")
        self.size = size
        self.seen = 0
        self._buffer = np.empty(0)
        self._rng = np.random.default_rng(seed)

    @property
    def values(self) -> np.ndarray:
        """The sample: every value seen while fewer than `size` were, else `size` of them."""
        return self._buffer

    def add(self, values: np.ndarray) -> Reservoir:
        """Offer the 1-D float64 `values` (no NaN), in stream order."""
        values = np.asarray(values, dtype=np.float64).ravel()
        room = self.size - len(self._buffer)
        if room > 0:
            head, values = values[:room], values[room:]
            self._buffer = np.concatenate([self._buffer, head])
            self.seen += len(head)
        if len(values):
            position = self.seen + np.arange(len(values), dtype=np.float64)  # 0-based
            slot = (self._rng.random(len(values)) * (position + 1)).astype(np.int64)
            keep = slot < self.size
            self._buffer[slot[keep]] = values[keep]  # repeated slots: the later value wins
            self.seen += len(values)
        return self


def column_seed(seed: int, column: str) -> np.random.SeedSequence:
    """A seed for one column's reservoir: stable across runs and column orders."""
    return np.random.SeedSequence([int(seed), zlib.crc32(str(column).encode("utf-8"))])


def weighted_sample(sample: np.ndarray, n_values: float, value: float,
                    n_copies: float) -> np.ndarray:
    """`sample` (drawn from `n_values` values) plus `value` repeated in proportion.

    The imputed rows of a column are `n_copies` copies of one number; to estimate a
    percentile of the whole column from a sample of the observed values, the copies are
    added in the same ratio. When the sample holds every observed value the result is the
    whole column exactly.
    """
    if n_values <= 0 or len(sample) == 0:
        return np.full(max(int(n_copies), 1), value)
    copies = int(round(n_copies * len(sample) / n_values))
    return np.concatenate([sample, np.full(copies, value)])
