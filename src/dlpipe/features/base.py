"""The transformer contract of the features stage, and the column helpers its encoders share.

A transformer follows scikit-learn: the constructor only stores its arguments, `fit` learns
from the training split and sets attributes ending in `_`, `transform` maps whole columns at
once, and the fitted state round-trips through plain JSON (`to_json` / `from_json`), never
pickle. The tabular transformers also have `partial_fit(chunk)`, which folds one chunk of
training rows into private running state and leaves the same fitted attributes (and JSON)
valid after every call (`dlpipe.features.stream`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd

from dlpipe._csv import predict_hint, separator_hint
from dlpipe.errors import DataError, DlpipeError


@runtime_checkable
class Transformer(Protocol):
    """Fit on the training split, transform any split, save and load as JSON."""

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn the fitted state (attributes ending in `_`) from the training rows."""
        ...

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the (N, F) block of model inputs for the N rows of `frame`."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The constructor arguments and the fitted state, as plain JSON data."""
        ...

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a fitted transformer from `to_json`'s output."""
        ...


class NotFittedError(DlpipeError, ValueError, AttributeError):
    """`transform` or `to_json` was called before `fit`."""


def check_fitted(obj: object, attribute: str) -> None:
    """Raise NotFittedError unless `obj` has the fitted `attribute`."""
    if not hasattr(obj, attribute):
        raise NotFittedError(
            f"this {type(obj).__name__} is not fitted yet; call fit(train_frame) first"
        )


def to_float(series: pd.Series, column: str) -> np.ndarray:
    """Return column `column` as float64, NaN for missing values.

    Numeric strings (``"1.5"``) are accepted; any other value is a DataError naming the
    column, the first bad row (position in the table) and its value.
    """
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(series.astype(object), errors="coerce")
    bad = np.flatnonzero(numbers.isna().to_numpy() & series.notna().to_numpy())
    if len(bad):
        first = int(bad[0])
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(
            f"column {column!r}, row {first}: expected a number, got {series.iloc[first]!r}"
            f"{more}; column {column!r} is numeric, so send numbers (an empty cell is a "
            f"missing value)"
        )
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def as_objects(series: pd.Series) -> pd.Series:
    """Column values as Python objects (categoricals decoded), missing values as None."""
    values = series.astype(object)
    return values.where(series.notna().to_numpy(), None)


def json_scalar(value: Any) -> Any:
    """A numpy scalar as the equivalent Python value, so json.dumps accepts it."""
    return value.item() if isinstance(value, np.generic) else value


def plain(value: Any) -> Any:
    """A constructor argument as JSON data (mappings → dicts, sequences → lists)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    return json_scalar(value)


def sorted_values(values: Iterable[Any]) -> list[Any]:
    """Sort category values; mixed types (1 and "a") sort by type name, then text."""
    values = [json_scalar(v) for v in values]
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def most_frequent(counts: pd.Series) -> Any:
    """The value with the largest count; ties go to the smallest value (as SimpleImputer)."""
    top = counts[counts == counts.max()]
    return sorted_values(top.index)[0]


def describe_columns(columns: Sequence[Mapping[str, Any]]) -> str:
    """``age: numeric, color: categorical`` for an error message."""
    return ", ".join(f"{c['name']}: {c['kind']}" for c in columns)


def require_columns(
    frame: pd.DataFrame, columns: Sequence[Mapping[str, Any]]
) -> None:
    """Raise a DataError listing the expected schema if `frame` lacks any of `columns`."""
    missing = [c["name"] for c in columns if c["name"] not in frame.columns]
    if missing:
        wrong_sep = separator_hint(frame.columns, predict_hint)
        raise DataError(
            f"input is missing {len(missing)} column(s): {', '.join(missing)}; "
            + (f"{wrong_sep}" if wrong_sep else f"the model expects {describe_columns(columns)}")
        )


def per_column(value: str | Mapping[str, str] | None, columns: Sequence[str],
               default: str) -> list[str]:
    """Expand one setting, or a per-column mapping with `default` for the rest."""
    if value is None:
        return [default] * len(columns)
    if isinstance(value, str):
        return [value] * len(columns)
    return [value.get(c, default) for c in columns]
