"""Numeric columns: impute, clip to the data stage's outlier bounds, then scale.

All columns are handled together as one (N, C) float64 matrix, so each step is a single
numpy expression; the statistics are fitted on the training split only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

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
        x = self._matrix(frame)  # (N, C)
        missing = np.isnan(x)
        empty = np.flatnonzero(missing.all(axis=0))
        if len(empty):
            name = columns[empty[0]]
            raise DataError(f"column {name!r} has no values in the training split; drop it "
                            f"with data.drop_columns: [{name}]")
        fill = self._fill_values(x, missing, strategies)
        x = np.clip(np.where(missing, fill, x), *self._bounds())
        center, scale = _scale_statistics(x, scalings)
        self.fill_ = fill.tolist()
        self.center_ = center.tolist()
        self.scale_ = scale.tolist()
        self.had_missing_ = missing.any(axis=0).tolist()
        self.feature_names_ = columns
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the (N, C) float32 block, columns in `columns` order."""
        check_fitted(self, "scale_")
        x = self._matrix(frame)  # (N, C)
        x = np.where(np.isnan(x), np.asarray(self.fill_), x)
        x = np.clip(x, *self._bounds())
        return ((x - np.asarray(self.center_)) / np.asarray(self.scale_)).astype(np.float32)

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
        return x

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
                    values, counts = np.unique(x[~missing[:, j], j], return_counts=True)
                    fill[j] = values[np.argmax(counts)]
            else:
                number = isinstance(self.fill_value, int | float) and not isinstance(
                    self.fill_value, bool)
                fill[idx] = float(self.fill_value) if number else 0.0
        return fill

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


def _scale_statistics(x: np.ndarray, scalings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column center and scale (scale 1 where the column is constant), as scikit-learn."""
    n_rows, n_columns = x.shape
    center, scale = np.zeros(n_columns), np.ones(n_columns)
    for scaling in set(scalings):
        idx = np.array([j for j, s in enumerate(scalings) if s == scaling], dtype=np.intp)
        block = x[:, idx]
        if scaling == "standardize":
            mean, var = block.mean(axis=0), block.var(axis=0)
            # StandardScaler's test for a constant column: variance within rounding of 0.
            constant = var <= n_rows * _EPS * var + (n_rows * mean * _EPS) ** 2
            center[idx], scale[idx] = mean, np.where(constant, 1.0, np.sqrt(var))
        elif scaling == "minmax":
            low = block.min(axis=0)
            span = block.max(axis=0) - low
            center[idx], scale[idx] = low, np.where(span < 10 * _EPS, 1.0, span)
        elif scaling == "robust":
            q25, median, q75 = np.percentile(block, [25, 50, 75], axis=0)
            span = q75 - q25
            center[idx], scale[idx] = median, np.where(span < 10 * _EPS, 1.0, span)
    return center, scale

