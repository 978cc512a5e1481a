"""Categorical and binary columns: one-hot columns, embedding indices, or one 0/1 column.

Categories are learned from the training split (those seen at least `min_frequency` times,
sorted). A category not among them goes to the unseen bucket (an all-zero one-hot row,
embedding index 0) or, with ``unseen="error"``, fails naming the column, row and value.
Lookups are vectorized with `pandas.Index.get_indexer`, one call per column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from dlpipe.errors import DataError
from dlpipe.features.base import (
    as_objects,
    check_fitted,
    json_scalar,
    most_frequent,
    per_column,
    plain,
    sorted_values,
)

ENCODINGS = ("onehot", "embedding")
UNSEEN = ("bucket", "error")
STRATEGIES = ("most_frequent", "constant", "none")

_SHOWN = 20  # known categories listed in an error message


class CategoricalEncoder:
    """One-hot columns, or embedding indices (0 = unseen / missing, 1..K = known categories).

    Args:
        columns: the column names, in output order.
        encoding: ``onehot`` or ``embedding`` (for all `columns`).
        min_frequency: categories seen fewer times in training go to the unseen bucket.
        unseen: ``bucket``, or ``error`` for a value never seen in training.
        missing: ``most_frequent`` or ``constant`` imputes first; ``none`` (the default for
            unlisted columns) sends a missing value to the bucket. One for all, or a mapping.
        fill_value: the category for ``constant`` (default ``"missing"``).

    Example:
        >>> frame = pd.DataFrame({"color": ["red", "blue", None]})
        >>> CategoricalEncoder(["color"]).fit(frame).transform(frame).tolist()
        [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        encoding: str = "onehot",
        min_frequency: int = 1,
        unseen: str = "bucket",
        missing: str | Mapping[str, str] | None = None,
        fill_value: Any = None,
    ) -> None:
        self.columns = columns
        self.encoding = encoding
        self.min_frequency = min_frequency
        self.unseen = unseen
        self.missing = missing
        self.fill_value = fill_value

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn `categories_` per column (sorted), the rare ones (`rare_`) and `fills_`."""
        self.__dict__.pop("_counts", None)  # a later partial_fit starts afresh
        strategies = self._settings()
        self.categories_, self.rare_, self.fills_, self.had_missing_ = [], [], [], []
        for column, strategy in zip(self.columns, strategies, strict=True):
            values = as_objects(frame[column])
            missing = values.isna().to_numpy()
            self._learn(values.value_counts(dropna=True), int(missing.sum()), strategy)
        self._set_names()
        return self

    def partial_fit(self, frame: pd.DataFrame) -> Self:
        """Fold one chunk of training rows into the fit, as scikit-learn's `partial_fit`.

        Exact: the category counts are kept per column, so after every call the fitted
        attributes (and `to_json`) are those of `fit` on all the rows seen so far, including
        `min_frequency` and the ``most_frequent`` fill. Memory grows with the number of
        distinct values, not of rows.

        Example:
            >>> encoder = CategoricalEncoder(["color"])
            >>> for chunk in (frame[:2], frame[2:]):
            ...     encoder.partial_fit(chunk)
        """
        strategies = self._settings()
        if len(frame) == 0:
            return self
        running = self.__dict__.setdefault("_counts", [_Counts() for _ in self.columns])
        for column, counts in zip(self.columns, running, strict=True):
            counts.update(as_objects(frame[column]))
        self.categories_, self.rare_, self.fills_, self.had_missing_ = [], [], [], []
        for counts, strategy in zip(running, strategies, strict=True):
            self._learn(counts.series(), counts.missing, strategy)
        self._set_names()
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return (N, sum K_i) one-hot columns, or (N, C) embedding indices, as float32."""
        check_fitted(self, "categories_")
        n_rows = len(frame)
        blocks = []
        for j, column in enumerate(self.columns):
            codes = self._codes(frame[column], j)  # (N,) -1 = bucket
            if self.encoding == "embedding":
                blocks.append((codes + 1).astype(np.float32)[:, None])
                continue
            block = np.zeros((n_rows, len(self.categories_[j])), dtype=np.float32)
            known = codes >= 0
            block[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(block)
        if not blocks:
            return np.zeros((n_rows, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1)

    def to_json(self) -> dict[str, Any]:
        check_fitted(self, "categories_")
        return {
            "params": {
                "columns": list(self.columns),
                "encoding": self.encoding,
                "min_frequency": int(self.min_frequency),
                "unseen": self.unseen,
                "missing": plain(self.missing),
                "fill_value": json_scalar(self.fill_value),
            },
            "fitted": {
                "categories": self.categories_,
                "rare": self.rare_,
                "fills": self.fills_,
                "had_missing": self.had_missing_,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        obj = cls(**data["params"])
        fitted = data["fitted"]
        obj.categories_ = [list(c) for c in fitted["categories"]]
        obj.rare_ = [list(c) for c in fitted["rare"]]
        obj.fills_ = list(fitted["fills"])
        obj.had_missing_ = [bool(v) for v in fitted["had_missing"]]
        obj._set_names()
        return obj

    def _settings(self) -> list[str]:
        """The fill strategy of each column, with every setting checked."""
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; "
                             f"got {self.encoding!r}")
        if self.unseen not in UNSEEN:
            raise ValueError(f"unseen must be one of {', '.join(UNSEEN)}; got {self.unseen!r}")
        strategies = per_column(self.missing, list(self.columns), "none")
        for column, strategy in zip(self.columns, strategies, strict=True):
            if strategy not in STRATEGIES:
                raise ValueError(f"missing-value strategy of column {column!r} must be one of "
                                 f"{', '.join(STRATEGIES)}; got {strategy!r}")
        return strategies

    def _learn(self, counts: pd.Series, n_missing: int, strategy: str) -> None:
        """Append one column's fitted state, from its value counts and missing count."""
        if strategy == "most_frequent" and len(counts):
            fill = most_frequent(counts)
        elif strategy == "constant":
            fill = "missing" if self.fill_value is None else json_scalar(self.fill_value)
        else:
            fill = None
        if fill is not None and n_missing:
            counts = _with_fill(counts, fill, n_missing)
        frequent = counts.to_numpy() >= self.min_frequency
        self.categories_.append(sorted_values(counts.index[frequent]))
        self.rare_.append(sorted_values(counts.index[~frequent]))
        self.fills_.append(fill)
        self.had_missing_.append(bool(n_missing))

    def _set_names(self) -> None:
        if self.encoding == "embedding":
            self.feature_names_ = list(self.columns)
            self.cardinalities_ = [len(c) + 1 for c in self.categories_]  # + the bucket
        else:
            self.feature_names_ = [
                f"{column}={category}"
                for column, categories in zip(self.columns, self.categories_, strict=True)
                for category in categories
            ]
            self.cardinalities_ = []

    def _codes(self, series: pd.Series, j: int) -> np.ndarray:
        """Index of each value in `categories_[j]`, -1 for the bucket."""
        values = as_objects(series)
        missing = values.isna().to_numpy()
        if self.fills_[j] is not None and missing.any():
            values = values.where(~missing, self.fills_[j])
            missing = np.zeros_like(missing)
        categories = self.categories_[j]
        codes = pd.Index(categories, dtype=object).get_indexer(values)
        if self.unseen == "error":
            unseen = (codes < 0) & ~missing & ~values.isin(self.rare_[j]).to_numpy()
            if unseen.any():
                raise _unseen_error(self.columns[j], values, np.flatnonzero(unseen), categories)
        return codes


class BinaryEncoder:
    """A two-valued column as one 0/1 column: the second of the two sorted values is 1.

    A missing value is imputed first: with the most frequent value, or for ``constant``
    with `fill_value` when it is one of the two values (else 0). With ``unseen="bucket"``
    a third value is treated as missing; with ``error`` it fails naming the row.

    Example:
        >>> frame = pd.DataFrame({"smoker": ["no", "yes", None, "no"]})
        >>> BinaryEncoder(["smoker"]).fit(frame).transform(frame)[:, 0].tolist()
        [0.0, 1.0, 0.0, 0.0]
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        unseen: str = "bucket",
        missing: str | Mapping[str, str] | None = None,
        fill_value: Any = None,
    ) -> None:
        self.columns = columns
        self.unseen = unseen
        self.missing = missing
        self.fill_value = fill_value

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn the two values of each column (`values_`) and the code of a missing value."""
        self.__dict__.pop("_counts", None)  # a later partial_fit starts afresh
        strategies = per_column(self.missing, list(self.columns), "most_frequent")
        self.values_, self.fill_codes_, self.had_missing_ = [], [], []
        for column, strategy in zip(self.columns, strategies, strict=True):
            values = as_objects(frame[column])
            counts = values.value_counts(dropna=True)
            _check_binary(column, counts, allow_empty=False)
            self._learn(counts, bool(values.isna().any()), strategy)
        self.feature_names_ = list(self.columns)
        return self

    def partial_fit(self, frame: pd.DataFrame) -> Self:
        """Fold one chunk of training rows into the fit, as scikit-learn's `partial_fit`.

        Exact: the value counts are kept, so after every call the fitted attributes (and
        `to_json`) are those of `fit` on all the rows seen so far. A column that has had no
        value yet has no `values_` (every row gets its fill code 0) until one arrives;
        `check_complete` refuses it at the end of the stream.

        Raises:
            DataError: a column with a third distinct value, as soon as it appears.
        """
        strategies = per_column(self.missing, list(self.columns), "most_frequent")
        if len(frame) == 0:
            return self
        running = self.__dict__.setdefault("_counts", [_Counts() for _ in self.columns])
        for column, counts in zip(self.columns, running, strict=True):
            counts.update(as_objects(frame[column]))
            _check_binary(column, counts.series(), allow_empty=True)
        self.values_, self.fill_codes_, self.had_missing_ = [], [], []
        for counts, strategy in zip(running, strategies, strict=True):
            self._learn(counts.series(), bool(counts.missing), strategy)
        self.feature_names_ = list(self.columns)
        return self

    def check_complete(self) -> None:
        """At the end of a stream: refuse a column that had no value in any chunk, as `fit`.

        Raises:
            DataError: naming the first such column.
        """
        check_fitted(self, "values_")
        for column, counts in zip(self.columns, self.__dict__.get("_counts", []), strict=True):
            _check_binary(column, counts.series(), allow_empty=False)

    def _learn(self, counts: pd.Series, had_missing: bool, strategy: str) -> None:
        """Append one column's fitted state, from its value counts."""
        known = sorted_values(counts.index)
        if strategy == "constant":
            fill = json_scalar(self.fill_value)
            code = known.index(fill) if fill in known else 0
        else:
            code = known.index(most_frequent(counts)) if known else 0
        self.values_.append(known)
        self.fill_codes_.append(code)
        self.had_missing_.append(had_missing)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the (N, C) float32 block of 0/1 columns."""
        check_fitted(self, "values_")
        out = np.empty((len(frame), len(self.columns)), dtype=np.float32)
        for j, column in enumerate(self.columns):
            values = as_objects(frame[column])
            codes = pd.Index(self.values_[j], dtype=object).get_indexer(values)
            if self.unseen == "error":
                unseen = (codes < 0) & values.notna().to_numpy()
                if unseen.any():
                    raise _unseen_error(column, values, np.flatnonzero(unseen), self.values_[j])
            out[:, j] = np.where(codes < 0, self.fill_codes_[j], codes)
        return out

    def to_json(self) -> dict[str, Any]:
        check_fitted(self, "values_")
        return {
            "params": {
                "columns": list(self.columns),
                "unseen": self.unseen,
                "missing": plain(self.missing),
                "fill_value": json_scalar(self.fill_value),
            },
            "fitted": {
                "values": self.values_,
                "fill_codes": self.fill_codes_,
                "had_missing": self.had_missing_,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        obj = cls(**data["params"])
        fitted = data["fitted"]
        obj.values_ = [list(v) for v in fitted["values"]]
        obj.fill_codes_ = [int(c) for c in fitted["fill_codes"]]
        obj.had_missing_ = [bool(v) for v in fitted["had_missing"]]
        obj.feature_names_ = list(obj.columns)
        return obj


class _Counts:
    """Running value counts and missing count of one column (private; never in JSON)."""

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}
        self.missing = 0

    def update(self, values: pd.Series) -> None:
        """Fold in one chunk of the column (`as_objects` values, None = missing)."""
        self.missing += int(values.isna().sum())
        for value, count in values.value_counts(dropna=True).items():
            self.counts[value] = self.counts.get(value, 0) + int(count)

    def series(self) -> pd.Series:
        """The counts as `value_counts` gives them (value → count)."""
        return _series(self.counts)


def _series(counts: dict[Any, int]) -> pd.Series:
    return pd.Series(list(counts.values()), index=pd.Index(list(counts), dtype=object),
                     dtype=np.int64)


def _with_fill(counts: pd.Series, fill: Any, n_missing: int) -> pd.Series:
    """The counts after `n_missing` missing values are imputed with `fill`."""
    merged = dict(counts.items())
    merged[fill] = merged.get(fill, 0) + n_missing
    return _series(merged)


def _check_binary(column: str, counts: pd.Series, *, allow_empty: bool) -> None:
    known = sorted_values(counts.index)
    if not (0 if allow_empty else 1) <= len(known) <= 2:
        shown = ", ".join(str(v) for v in known[:_SHOWN])
        raise DataError(
            f"column {column!r} is binary in schema.json but has {len(known)} distinct "
            f"values in the training split ({shown}); set data.columns.{column}: "
            f"categorical (or numeric)"
        )


def _unseen_error(column: str, values: pd.Series, rows: np.ndarray,
                  known: Sequence[Any]) -> DataError:
    first = int(rows[0])
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    shown = ", ".join(str(v) for v in known[:_SHOWN])
    if len(known) > _SHOWN:
        shown += f", ... ({len(known)} in all)"
    return DataError(
        f"column {column!r}, row {first}: unseen category {values.iloc[first]!r}{more}; "
        f"known: {shown}; set features.unseen: bucket to map unseen categories to the "
        f"unseen bucket"
    )
