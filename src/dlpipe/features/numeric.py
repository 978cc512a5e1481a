"""Numeric columns: impute, clip to the data stage's outlier bounds, then scale.

All columns are handled together as one (N, C) float64 matrix, so each step is a single
numpy expression; the statistics are fitted on the training split only. `partial_fit` fits
the same state in one streaming pass over chunks (exact but for the sampled median,
most_frequent and robust statistics; see `dlpipe.features.stream`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from dlpipe._running import (
    RESERVOIR_SIZE,
    Moments,
    Reservoir,
    column_seed,
    combine,
    weighted_sample,
)
from dlpipe.data._messages import beyond_float32, beyond_float32_text
from dlpipe.errors import DataError
from dlpipe.features.base import check_fitted, json_scalar, per_column, plain, to_float

SCALINGS = ("standardize", "minmax", "robust", "none")
STRATEGIES = ("mean", "median", "most_frequent", "constant")

_EPS = np.finfo(np.float64).eps


class NumericTransformer:
    """Impute, clip and scale numeric columns; output ``(x - center_) / scale_`` as float32.

    Args:
        columns: the column names, in output order.
        scaling: ``standardize`` (zero mean, unit variance; a constant column gets scale 1),
            ``minmax`` (to [0, 1]), ``robust`` (median and interquartile range) or ``none``;
            one for all columns, or a mapping from column to scaling.
        missing: ``mean``, ``median``, ``most_frequent`` or ``constant``; one for all, or a
            mapping (unlisted columns: ``mean``; ``drop`` also means ``mean``, since rows
            cannot be dropped at predict time).
        fill_value: the value for ``constant`` (a non-number means 0).
        clip: ``{column: [low, high]}`` bounds applied after imputing (None: unbounded).

    Example:
        >>> frame = pd.DataFrame({"age": [20.0, None, 40.0]})
        >>> NumericTransformer(["age"]).fit(frame).transform(frame)[:, 0].tolist()
        [-1.2247449159622192, 0.0, 1.2247449159622192]
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        scaling: str | Mapping[str, str] = "standardize",
        missing: str | Mapping[str, str] | None = None,
        fill_value: float | str | None = None,
        clip: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        self.columns = columns
        self.scaling = scaling
        self.missing = missing
        self.fill_value = fill_value
        self.clip = clip

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn fill values (`fill_`), and `center_` / `scale_` of the imputed, clipped data."""
        self.__dict__.pop("_stream", None)  # a later partial_fit starts afresh
        columns, scalings, strategies = self._settings()
        x = self._matrix(frame)  # (N, C)
        missing = np.isnan(x)
        empty = np.flatnonzero(missing.all(axis=0))
        if len(empty):
            raise _empty_column_error(columns[empty[0]])
        fill = self._fill_values(x, missing, strategies)
        x = np.clip(np.where(missing, fill, x), *self._bounds())
        center, scale = _scale_statistics(x, scalings)
        self.fill_ = fill.tolist()
        self.center_ = center.tolist()
        self.scale_ = scale.tolist()
        self.had_missing_ = missing.any(axis=0).tolist()
        self.feature_names_ = columns
        return self

    def partial_fit(self, frame: pd.DataFrame, *, seed: int = 0,
                    reservoir_size: int = RESERVOIR_SIZE) -> Self:
        """Fold one chunk of training rows into the fit, as scikit-learn's `partial_fit`.

        After every call the fitted attributes are those of `fit` on all the rows seen so
        far, and `to_json` writes the same document. Exact (float64, Chan's parallel
        formulas; ~1e-12 relative to `fit`): the ``mean`` fill, ``constant``,
        ``standardize`` and ``minmax``, including the imputed rows (n_missing copies of the
        clipped fill value). Approximate: the ``median`` and ``most_frequent`` fills and
        ``robust`` scaling, computed from a uniform sample of at most `reservoir_size`
        observed values per column (exact while a column has had no more values than that).
        Until a column has had a value, its fill is provisional (0 or the constant);
        `check_complete` refuses such a column at the end of the stream.

        Args:
            frame: the next chunk of training rows; an empty chunk changes nothing.
            seed: seeds the samples; used on the first call only (also `reservoir_size`).
            reservoir_size: values sampled per column for the approximate statistics.

        Returns:
            self, fitted on every row passed so far.

        Raises:
            DataError: a non-numeric or infinite value (row counted within the chunk).

        Example:
            >>> numeric = NumericTransformer(["age"])
            >>> for chunk in (frame[:2], frame[2:]):
            ...     numeric.partial_fit(chunk)
        """
        columns, scalings, strategies = self._settings()
        if len(frame) == 0:
            return self
        x = self._matrix(frame)  # (N, C)
        state = self.__dict__.get("_stream")
        if state is None:
            sampled = [s in ("median", "most_frequent") or c == "robust"
                       for s, c in zip(strategies, scalings, strict=True)]
            state = self._stream = _StreamState(columns, sampled, seed, reservoir_size)
        state.update(x, self._bounds())
        fill = self._stream_fill(state, strategies)
        center, scale = _stream_scale_statistics(state, fill, self._bounds(), scalings)
        self.fill_ = fill.tolist()
        self.center_ = center.tolist()
        self.scale_ = scale.tolist()
        self.had_missing_ = (state.rows - state.raw.count > 0).tolist()
        self.feature_names_ = columns
        return self

    def check_complete(self) -> None:
        """At the end of a stream: refuse a column that had no value in any chunk, as `fit`.

        Raises:
            DataError: naming the first such column.
        """
        check_fitted(self, "scale_")
        state = self.__dict__.get("_stream")
        if state is not None:
            empty = np.flatnonzero(state.raw.count == 0)
            if len(empty):
                raise _empty_column_error(list(self.columns)[empty[0]])

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the (N, C) float32 block, columns in `columns` order."""
        check_fitted(self, "scale_")
        x = self._matrix(frame)  # (N, C)
        x = np.where(np.isnan(x), np.asarray(self.fill_), x)
        x = np.clip(x, *self._bounds())
        with np.errstate(over="ignore"):  # an overflow is refused just below, by name
            scaled = (x - np.asarray(self.center_)) / np.asarray(self.scale_)
        huge = np.argwhere(~np.isfinite(scaled) | beyond_float32(scaled))
        if len(huge):  # a value within float32's range, but not once scaled
            row, j = (int(v) for v in huge[0])
            raise DataError(f"column {self.columns[j]!r}, row {row}: {float(x[row, j])!r} is too "
                            f"large for the model: scaled, it is beyond float32's range "
                            f"(±3.4e38); send a value of a plausible magnitude")
        return scaled.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        check_fitted(self, "scale_")
        return {
            "params": {
                "columns": list(self.columns),
                "scaling": plain(self.scaling),
                "missing": plain(self.missing),
                "fill_value": json_scalar(self.fill_value),
                "clip": plain(self.clip),
            },
            "fitted": {
                "fill": self.fill_,
                "center": self.center_,
                "scale": self.scale_,
                "had_missing": self.had_missing_,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        obj = cls(**data["params"])
        fitted = data["fitted"]
        obj.fill_ = [float(v) for v in fitted["fill"]]
        obj.center_ = [float(v) for v in fitted["center"]]
        obj.scale_ = [float(v) for v in fitted["scale"]]
        obj.had_missing_ = [bool(v) for v in fitted["had_missing"]]
        obj.feature_names_ = list(obj.columns)
        return obj

    # -- steps ---------------------------------------------------------------------------------

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        x = np.empty((len(frame), len(self.columns)), dtype=np.float64)  # (N, C)
        for j, column in enumerate(self.columns):
            x[:, j] = to_float(frame[column], column)
        infinite = np.argwhere(np.isinf(x))
        if len(infinite):
            row, j = (int(v) for v in infinite[0])
            raise DataError(f"column {self.columns[j]!r}, row {row}: infinite value "
                            f"{x[row, j]}; send a finite number or leave the cell empty")
        huge = np.argwhere(beyond_float32(x))  # the model's float32 inputs would hold inf
        if len(huge):
            row, j = (int(v) for v in huge[0])
            raise DataError(f"column {self.columns[j]!r}, row {row}: "
                            f"{beyond_float32_text(x[row, j])}; send a number within it or "
                            f"leave the cell empty")
        return x

    def _settings(self) -> tuple[list[str], list[str], list[str]]:
        """The columns, their scalings and their fill strategies, checked."""
        columns = list(self.columns)
        scalings = per_column(self.scaling, columns, "standardize")
        strategies = [
            "mean" if s == "drop" else s for s in per_column(self.missing, columns, "mean")
        ]
        for column, scaling, strategy in zip(columns, scalings, strategies, strict=True):
            if scaling not in SCALINGS:
                raise ValueError(f"scaling of column {column!r} must be one of "
                                 f"{', '.join(SCALINGS)}; got {scaling!r}")
            if strategy not in STRATEGIES:
                raise ValueError(f"missing-value strategy of column {column!r} must be one of "
                                 f"{', '.join(STRATEGIES)}; got {strategy!r}")
        return columns, scalings, strategies

    def _fill_values(self, x: np.ndarray, missing: np.ndarray, strategies: list[str]) -> np.ndarray:
        fill = np.zeros(x.shape[1])
        for strategy in set(strategies):
            idx = [j for j, s in enumerate(strategies) if s == strategy]
            if strategy == "mean":
                fill[idx] = np.nanmean(x[:, idx], axis=0)
            elif strategy == "median":
                fill[idx] = np.nanmedian(x[:, idx], axis=0)
            elif strategy == "most_frequent":  # ties: the smallest value, as SimpleImputer
                for j in idx:
                    fill[j] = _mode(x[~missing[:, j], j])
            else:
                fill[idx] = self._constant()
        return fill

    def _stream_fill(self, state: _StreamState, strategies: list[str]) -> np.ndarray:
        """`_fill_values` from the running state: exact mean, sampled median / mode."""
        fill = np.zeros(len(strategies))
        for j, strategy in enumerate(strategies):
            sample = state.samples[j].values if state.samples[j] is not None else None
            if strategy == "constant":
                fill[j] = self._constant()
            elif state.raw.count[j] == 0:
                fill[j] = 0.0  # provisional: no value yet (check_complete refuses it)
            elif strategy == "mean":
                fill[j] = state.raw.mean[j]
            elif strategy == "median":
                fill[j] = np.median(sample)
            else:
                fill[j] = _mode(sample)
        return fill

    def _constant(self) -> float:
        number = isinstance(self.fill_value, int | float) and not isinstance(
            self.fill_value, bool)
        return float(self.fill_value) if number else 0.0

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        clip = self.clip or {}
        low = np.full(len(self.columns), -np.inf)
        high = np.full(len(self.columns), np.inf)
        for j, column in enumerate(self.columns):
            bounds = clip.get(column)
            if bounds is not None:
                low[j] = -np.inf if bounds[0] is None else bounds[0]
                high[j] = np.inf if bounds[1] is None else bounds[1]
        return low, high


class _StreamState:
    """What `partial_fit` keeps between chunks (private; never written to JSON)."""

    def __init__(self, columns: list[str], sampled: list[bool], seed: int,
                 reservoir_size: int) -> None:
        self.rows = 0
        self.raw = Moments(len(columns))  # observed values: the mean fill
        self.clipped = Moments(len(columns))  # observed values after clipping: the scaling
        self.samples = [Reservoir(reservoir_size, column_seed(seed, column)) if keep else None
                        for column, keep in zip(columns, sampled, strict=True)]

    def update(self, x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> None:
        self.rows += len(x)
        self.raw.update(x)
        if np.isfinite(bounds[0]).any() or np.isfinite(bounds[1]).any():
            self.clipped.update(np.clip(x, *bounds))  # NaN stays NaN
        else:  # nothing to clip: the same statistics
            self.clipped = self.raw
        for j, sample in enumerate(self.samples):
            if sample is not None:
                column = x[:, j]
                sample.add(column[~np.isnan(column)])


def _stream_scale_statistics(
    state: _StreamState, fill: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
    scalings: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """`_scale_statistics` of the imputed, clipped column, from the running state.

    The imputed column is the clipped observed values plus n_missing copies of
    clip(fill); their statistics combine in closed form.
    """
    observed = state.clipped
    n_missing = state.rows - observed.count
    filled = np.clip(fill, *bounds)
    n, mean, m2 = combine(observed.count, observed.mean, observed.m2,
                          n_missing, filled, np.zeros_like(filled))
    low = np.where(n_missing > 0, np.fmin(observed.min, filled), observed.min)
    high = np.where(n_missing > 0, np.fmax(observed.max, filled), observed.max)
    center, scale = np.zeros(len(scalings)), np.ones(len(scalings))
    for j, scaling in enumerate(scalings):
        if scaling == "standardize":
            center[j], scale[j] = mean[j], _std_scale(m2[j] / n[j], mean[j], n[j])
        elif scaling == "minmax":
            center[j], scale[j] = low[j], _span_scale(high[j] - low[j])
        elif scaling == "robust":
            sample = state.samples[j]
            column = weighted_sample(np.clip(sample.values, bounds[0][j], bounds[1][j]),
                                     observed.count[j], filled[j], n_missing[j])
            q25, median, q75 = np.percentile(column, [25, 50, 75])
            center[j], scale[j] = median, _span_scale(q75 - q25)
    return center, scale


def _scale_statistics(x: np.ndarray, scalings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column center and scale (scale 1 where the column is constant), as scikit-learn."""
    n_rows, n_columns = x.shape
    center, scale = np.zeros(n_columns), np.ones(n_columns)
    for scaling in set(scalings):
        idx = np.array([j for j, s in enumerate(scalings) if s == scaling], dtype=np.intp)
        block = x[:, idx]
        if scaling == "standardize":
            mean, var = block.mean(axis=0), block.var(axis=0)
            center[idx], scale[idx] = mean, _std_scale(var, mean, n_rows)
        elif scaling == "minmax":
            low = block.min(axis=0)
            center[idx], scale[idx] = low, _span_scale(block.max(axis=0) - low)
        elif scaling == "robust":
            q25, median, q75 = np.percentile(block, [25, 50, 75], axis=0)
            center[idx], scale[idx] = median, _span_scale(q75 - q25)
    return center, scale


def _std_scale(var: np.ndarray | float, mean: np.ndarray | float,
               n_rows: np.ndarray | float) -> np.ndarray:
    """The standard deviation, or 1 where the column is constant."""
    # StandardScaler's test for a constant column: variance within rounding of 0.
    constant = var <= n_rows * _EPS * var + (n_rows * mean * _EPS) ** 2
    return np.where(constant, 1.0, np.sqrt(var))


def _span_scale(span: np.ndarray | float) -> np.ndarray:
    """The range (max - min, or the interquartile range), or 1 where it is about 0."""
    return np.where(span < 10 * _EPS, 1.0, span)


def _mode(values: np.ndarray) -> float:
    """The most frequent value; ties go to the smallest (as SimpleImputer)."""
    unique, counts = np.unique(values, return_counts=True)
    return float(unique[np.argmax(counts)])


def _empty_column_error(name: str) -> DataError:
    return DataError(f"column {name!r} has no values in the training split; drop it "
                     f"with data.drop_columns: [{name}]")
