"""Small helpers the data stage shares for error messages and JSON-able values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlpipe._csv import config_hint, separator_hint
from dlpipe.errors import DataError, suggest

_MAX_KNOWN = 20  # beyond this many columns the "Known:" list is cut, or messages become walls
_MAX_ROWS = 5  # rows named in a message before "... (N in all)"
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Model inputs are float32: a larger finite float64 becomes inf (then NaN) in the model."""


def column_hint(name: str, columns: Iterable[Any]) -> str:
    """Return 'Did you mean X? Known: a, b, c' over `columns`, shortened for wide tables."""
    known = [str(c) for c in columns]
    hint = suggest(str(name), known)
    if len(known) > _MAX_KNOWN:
        head, _, _ = hint.partition("Known: ")
        shown = ", ".join(sorted(known)[:_MAX_KNOWN])
        hint = f"{head}Known: {shown}, ... ({len(known)} columns)"
    return hint


def unknown_column(
    path: str, name: str, columns: Iterable[Any], where: str = "in the data"
) -> DataError:
    """A DataError for a configured column name that the table does not have; when the table
    has one column that looks like a whole header (``a;b;label``), it says which separator."""
    columns = list(columns)
    wrong_sep = separator_hint(columns, config_hint)
    if wrong_sep:
        return DataError(f"{path}: column {name!r} is not {where}: {wrong_sep}")
    return DataError(f"{path}: column {name!r} is not {where}. {column_hint(name, columns)}")


def rows_text(rows: Sequence[Any]) -> str:
    """Name the first few row numbers: 'row 12' or 'rows 17, 242, 901, ... (12 in all)'."""
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_ROWS])
    word = "row" if len(rows) == 1 else "rows"
    more = f", ... ({len(rows)} in all)" if len(rows) > _MAX_ROWS else ""
    return f"{word} {shown}{more}"


def beyond_float32(values: np.ndarray) -> np.ndarray:
    """True where a finite float64 value is too large in magnitude for float32 (±3.4e38)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)


def beyond_float32_text(value: float) -> str:
    """'1e+39 is beyond float32's range (±3.4e38)'."""
    return f"{float(value)!r} is beyond float32's range (±3.4e38)"


def jsonable(value: Any) -> Any:
    """Turn a numpy/pandas scalar into a plain JSON value (NaN becomes None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp | pd.Timedelta):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def counts_by_label(values: pd.Series) -> dict[str, int]:
    """Counts of each distinct value, keyed by its string form, in sorted value order."""
    counts = values.value_counts(sort=False, dropna=False)
    try:
        counts = counts.sort_index()
    except TypeError:  # mixed types cannot be ordered; fall back to their text
        counts = counts.iloc[np.argsort([str(k) for k in counts.index], kind="stable")]
    return {str(jsonable(k)): int(v) for k, v in counts.items()}
