"""Infer the kind of every input column and the task from the target, before splitting.

Kinds: bool or exactly two distinct values → `binary`; numeric dtype → `numeric`; bytes, or
strings that all name image files → `image`; strings of several words, mostly distinct →
`text`; other strings → `categorical`, unless every non-missing value parses as a number
(→ `numeric`, converted).
A text column where nearly every value is a number but a few are not (``'?'``, ``'n/a'``) is
almost always a numeric column with stray markers, so it fails with the row and value rather
than silently turning into a categorical column; `data.columns` overrides any inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.data._messages import beyond_float32, beyond_float32_text, jsonable, rows_text
from dlpipe.errors import DataError

_MOSTLY_NUMERIC = 0.9  # share of parseable values above which stray text is an error
_MAX_CLASS_VALUES = 20  # an integer target with at most this many values is a class label
_TEXT_WORDS = 4.0  # mean words per value from which a mostly distinct string column is text
_TEXT_DISTINCT = 0.5  # ... and the share of distinct values it needs
MEDIA_KINDS = ("text", "image")
"""Kinds that are not tabular: no missing-value filling, scaling or outlier handling."""


@dataclass
class MadeMissing:
    """Values of one numeric input that became missing values: infinite ones, and finite
    ones beyond float32's range (the model's inputs are float32, where they would be inf)."""

    infinite: int = 0
    beyond_float32: int = 0
    first_row: Any = None
    """Row number and value of the first value beyond float32's range (for the warning)."""
    first_value: float = 0.0

    def add(self, other: MadeMissing) -> None:
        """Fold in the counts of a later chunk of the same column."""
        self.infinite += other.infinite
        if other.beyond_float32 and not self.beyond_float32:
            self.first_row, self.first_value = other.first_row, other.first_value
        self.beyond_float32 += other.beyond_float32

    def profile(self) -> dict[str, int]:
        """The data_profile.json entries of the column's missing-value section."""
        counts = {"infinite_as_missing": self.infinite,
                  "beyond_float32_as_missing": self.beyond_float32}
        return {k: v for k, v in counts.items() if v}

    def warning(self, column: str) -> str | None:
        """A sentence naming the first value beyond float32's range, or None."""
        if not self.beyond_float32:
            return None
        more = (f" ({self.beyond_float32} such values in all)"
                if self.beyond_float32 > 1 else "")
        return (f"data: column {column!r}, row {self.first_row}: "
                f"{beyond_float32_text(self.first_value)}{more}; treated as a missing value, "
                f"like inf (counted in data_profile.json)")


def infer_kinds(
    frame: pd.DataFrame, inputs: Sequence[str], overrides: Mapping[str, str]
) -> tuple[pd.DataFrame, dict[str, str], dict[str, MadeMissing]]:
    """Return (frame with numeric columns made numeric, kind per input, values made missing
    per column).

    Infinite values in numeric inputs, and finite ones beyond float32's range (±3.4e38,
    which the float32 model inputs would turn into inf), become missing values (counted),
    so the missing-value strategy handles them.
    """
    frame = frame.copy(deep=False)  # columns are replaced, never written in place
    kinds: dict[str, str] = {}
    made_missing: dict[str, MadeMissing] = {}
    for name in inputs:
        column = frame[name]
        kind = overrides.get(name) or _infer_kind(name, column)
        if kind == "numeric":
            column = _as_numeric(name, column, forced=name in overrides)
            values = column.to_numpy(dtype=float, na_value=np.nan)
            infinite = np.isinf(values)
            huge = beyond_float32(values)
            if infinite.any() or huge.any():
                counts = MadeMissing(int(infinite.sum()), int(huge.sum()))
                if huge.any():
                    first = int(np.flatnonzero(huge)[0])
                    counts.first_row, counts.first_value = column.index[first], values[first]
                made_missing[name] = counts
                column = column.astype(float).where(~(infinite | huge))
            frame[name] = column
        elif kind == "binary":
            distinct = column.nunique(dropna=True)
            if distinct > 2:
                raise DataError(f"data.columns.{name}: 'binary' needs at most 2 distinct values; "
                                f"column {name!r} has {distinct}")
        kinds[name] = kind
    return frame, kinds, made_missing


def _infer_kind(name: str, column: pd.Series) -> str:
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "binary"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise DataError(
            f"data.columns: column {name!r} holds dates/times ({dtype}), which are not a model "
            f"input; set data.columns.{name}: ignore, or use it as data.split.time_column"
        )
    if pd.api.types.is_numeric_dtype(dtype):
        # A glance at the first rows settles most columns without hashing all of them.
        many = column.iloc[:1000].nunique(dropna=True) > 2 or column.nunique(dropna=True) != 2
        return "numeric" if many else "binary"
    media = _media_kind(column)
    if media is not None:
        return media
    uniques = column.dropna().unique()
    if len(uniques) == 2:
        return "binary"
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    # Parse each distinct text once, not every row.
    parsed = pd.to_numeric(pd.Series(np.asarray(uniques, dtype=object)), errors="coerce")
    stray = np.asarray(uniques, dtype=object)[parsed.isna().to_numpy()]
    if len(stray) == 0:
        return "numeric"
    present = int(column.notna().sum())
    if 1 - column.isin(stray).sum() / present >= _MOSTLY_NUMERIC:
        _as_numeric(name, column, forced=False)  # raises, naming the first bad row
    return "categorical"


def _media_kind(column: pd.Series) -> str | None:
    """`image` or `text` when the values leave no doubt, else None (a sample decides)."""
    if column.dtype != object and not pd.api.types.is_string_dtype(column.dtype):
        return None
    values = column.dropna()
    sample = values.iloc[:1000] if len(values) > 1000 else values
    if len(sample) == 0:
        return None
    if any(isinstance(v, bytes | bytearray) for v in sample):
        return "image"
    if not all(isinstance(v, str) for v in sample):
        return None
    from dlpipe.data.images import IMAGE_EXTENSIONS

    texts = sample.astype(str)
    if texts.str.lower().str.endswith(tuple(IMAGE_EXTENSIONS)).all():
        return "image"
    words = texts.str.split().str.len().mean()
    if words >= _TEXT_WORDS and texts.nunique() >= _TEXT_DISTINCT * len(texts):
        return "text"
    return None


def _as_numeric(name: str, column: pd.Series, *, forced: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype(float)
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    parsed = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & parsed.isna()
    if bad.any():
        rows = column.index[bad.to_numpy()]
        why = "set in data.columns" if forced else "most values are numbers"
        fix = ("fix the data or drop those rows" if forced else
               f"fix the data, or set data.columns.{name}: categorical")
        raise DataError(
            f"data.columns: column {name!r} is numeric ({why}) but row {rows[0]} holds "
            f"{column[rows[0]]!r} (non-numeric values in {rows_text(rows)}); {fix}"
        )
    return parsed


def infer_task(y: pd.Series, task: str, target: str) -> tuple[str, list[Any], pd.Series]:
    """Return (task, sorted classes as JSON scalars, target) from the target column.

    An integer-valued float target of a classification task becomes int64.

    Raises:
        DataError: the target does not fit the configured task, or holds a single value.
    """
    numeric = pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype)
    if task == "regression":
        if not numeric:
            parsed = pd.to_numeric(y, errors="coerce")
            bad = parsed.isna()
            if bad.any():
                row = y.index[bad.to_numpy()][0]
                raise DataError(f"data.task: regression needs a numeric target, but column "
                                f"{target!r} holds {y[row]!r} at row {row}")
            values = parsed.to_numpy(dtype=float)
            wrong = np.flatnonzero(~np.isfinite(values) | beyond_float32(values))
            if len(wrong):  # numbers written as text escape the data stage's target check
                row = y.index[wrong[0]]
                what = (beyond_float32_text(values[wrong[0]]) if np.isfinite(values[wrong[0]])
                        else f"{values[wrong[0]]!r} is not a finite number")
                raise DataError(f"data.target: column {target!r}, row {row}: {what}; fix "
                                f"the data")
            y = parsed
        return task, [], y
    integral = numeric and bool(np.all(np.mod(y.to_numpy(dtype=float), 1) == 0))
    distinct = int(y.nunique())
    if task == "auto":
        if numeric and not integral:
            return "regression", [], y
        if numeric and not (distinct <= _MAX_CLASS_VALUES and distinct < len(y) / 2):
            return "regression", [], y
    if integral and pd.api.types.is_float_dtype(y.dtype):
        y = y.astype("int64")
    classes = _sorted_classes(y, target)
    if len(classes) < 2:
        raise DataError(f"data.target: column {target!r} holds a single value "
                        f"({classes[0]!r}); there is nothing to learn")
    if task == "binary" and len(classes) != 2:
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        raise DataError(f"data.task: 'binary' needs exactly 2 classes, but column {target!r} "
                        f"has {len(classes)} ({shown}); set data.task: multiclass")
    if task == "auto":
        task = "binary" if len(classes) == 2 else "multiclass"
    return task, classes, y


def _sorted_classes(y: pd.Series, target: str) -> list[Any]:
    unique = [jsonable(v) for v in pd.unique(y)]
    try:
        return sorted(unique)
    except TypeError:
        raise DataError(f"data.target: column {target!r} mixes value types "
                        f"({sorted({type(v).__name__ for v in unique})}); make it one type"
                        ) from None
