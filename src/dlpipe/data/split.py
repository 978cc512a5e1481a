"""Divide rows into train / val / test, and into k folds, without leaking across them.

Methods: `random`, `stratified` (class ratios kept), `group` (each group in one split),
`time` (earliest rows train, then val, then test) and `column` (a column names each row's
split). Split sizes are ``round(fraction * n)``; a non-zero fraction that rounds to no rows
is an error rather than a silently empty split. Indices are positions in `frame`; row
numbers in messages are `frame`'s index labels (the rows of the loaded file).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.data._messages import jsonable, rows_text
from dlpipe.errors import DataError

SPLITS = ("train", "val", "test")
METHODS = ("auto", "random", "stratified", "group", "time", "column")
CLASSIFICATION = ("binary", "multiclass")


def split_indices(
    frame: pd.DataFrame,
    *,
    method: str = "auto",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    target: str | None = None,
    task: str | None = None,
    group_column: str | None = None,
    time_column: str | None = None,
    split_column: str | None = None,
) -> dict[str, np.ndarray]:
    """Return positions of the rows of each split: ``{"train": ..., "val": ..., "test": ...}``.

    Args:
        method: one of `METHODS`; `auto` is stratified for classification, else random.
        val: fraction of rows (of groups, for `group`) for validation.
        test: fraction of rows (of groups, for `group`) for testing.
        target: the target column; needed to stratify and to check the training classes.
        task: `binary`, `multiclass` or `regression`.

    Raises:
        DataError: too few rows (or groups, or rows per class) for the fractions, a missing
            value in the group/time column, an unknown split name, or a training split that
            holds a single class.

    Example:
        >>> parts = split_indices(frame, method="random", val=0.2, test=0.2, seed=0)
        >>> sorted(len(p) for p in parts.values())
        [20, 20, 60]
    """
    classification = task in CLASSIFICATION
    if method == "auto":
        method = "stratified" if classification else "random"
    if method == "stratified" and not classification:
        raise DataError(f"data.split.method: 'stratified' needs a classification task; the task "
                        f"is {task!r}; use random")
    positions = np.arange(len(frame))
    if method in ("random", "stratified"):
        y = frame[target].to_numpy() if method == "stratified" else None
        parts = _shuffled(positions, y, val, test, seed)
    elif method == "group":
        parts = _grouped(frame, _required(group_column, "group_column"), val, test, seed)
    elif method == "time":
        parts = _timed(frame, _required(time_column, "time_column"), val, test)
    elif method == "column":
        parts = _by_column(frame, _required(split_column, "column"))
    else:
        raise DataError(f"data.split.method: unknown method {method!r}; known: "
                        f"{', '.join(METHODS)}")
    if classification and target is not None:
        check_train_classes(frame[target].iloc[parts["train"]], "data.split")
    return parts


def check_train_classes(y: pd.Series, path: str) -> None:
    """Fail when the training split is empty or holds fewer than two classes."""
    if len(y) == 0:
        raise DataError(f"{path}: the training split has no rows")
    values = y.unique()
    if len(values) < 2:
        raise DataError(f"{path}: the training split holds a single class "
                        f"({jsonable(values[0])!r}) in its {len(y)} rows; a classifier needs "
                        f"at least two. Use a stratified split or more data")


def kfold_indices(
    frame: pd.DataFrame,
    schema: dict[str, Any],
    k: int,
    seed: int = 0,
    method: str = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return k (train positions, held-out positions) pairs for cross-validation.

    Args:
        schema: the data stage's schema.json (`target`, `task`, `group_column`, `time_column`).
        method: `auto` (grouped when a group column is configured, else stratified for
            classification, else random), `random`, `stratified`, `group` or `time`
            (expanding window over the time order).

    Raises:
        DataError: fewer rows, groups or rows of a class than folds.

    Example:
        >>> folds = kfold_indices(train_and_val, schema, k=5, seed=0)
        >>> len(folds)
        5
    """
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
        TimeSeriesSplit,
    )

    if k < 2:
        raise DataError(f"evaluate.cv_folds: k-fold needs at least 2 folds; got {k}")
    target, group = schema["target"], schema.get("group_column")
    classification = schema.get("task") in CLASSIFICATION
    if method == "auto":
        method = "group" if group else "stratified" if classification else "random"
    n = len(frame)
    if n < k:
        raise DataError(f"evaluate.cv_folds: {n} rows are too few for {k} folds")
    if method == "random":
        splitter, groups = KFold(k, shuffle=True, random_state=seed), None
    elif method == "stratified":
        _check_class_sizes(frame[target], k, f"{k} folds", "evaluate.cv_folds")
        splitter, groups = StratifiedKFold(k, shuffle=True, random_state=seed), None
    elif method == "group":
        groups = _codes(frame, _required(group, "group_column"))
        if groups.max() + 1 < k:
            raise DataError(f"evaluate.cv_folds: {groups.max() + 1} groups in column {group!r} "
                            f"are too few for {k} folds")
        kind = StratifiedGroupKFold if classification else GroupKFold
        splitter = kind(k, shuffle=True, random_state=seed)
    elif method == "time":
        order = _time_order(frame, _required(schema.get("time_column"), "time_column"))
        return [(order[a], order[b]) for a, b in TimeSeriesSplit(k).split(order)]
    else:
        raise DataError(f"k-fold: unknown method {method!r}; known: auto, random, stratified, "
                        f"group, time")
    try:
        return list(splitter.split(np.arange(n), frame[target].to_numpy(), groups))
    except ValueError as exc:
        raise DataError(f"evaluate.cv_folds: cannot make {k} folds of {n} rows: {exc}") from None


# -- methods ----------------------------------------------------------------------------


def _sizes(n: int, val: float, test: float, unit: str = "rows") -> tuple[int, int, int]:
    """Rows (or groups) of (train, val, test); each non-zero fraction must give at least one."""
    sizes = {}
    for name, fraction in (("val", val), ("test", test)):
        size = int(math.floor(fraction * n + 0.5))
        if fraction > 0 and size == 0:
            need = math.ceil(0.5 / fraction)
            raise DataError(
                f"data.split.{name}: {n} {unit} are too few for {name}={fraction}, which would "
                f"get 0 {unit}; it needs at least {need} {unit} (or set data.split.{name}: 0)"
            )
        sizes[name] = size
    n_train = n - sizes["val"] - sizes["test"]
    if n_train < 1:
        raise DataError(f"data.split: {n} {unit} are too few for val={val} and test={test}: "
                        f"no {unit} would be left for training")
    return n_train, sizes["val"], sizes["test"]


def _shuffled(
    positions: np.ndarray, y: np.ndarray | None, val: float, test: float, seed: int
) -> dict[str, np.ndarray]:
    n = len(positions)
    _, n_val, n_test = _sizes(n, val, test)
    if y is not None:
        parts = 1 + (n_val > 0) + (n_test > 0)
        _check_class_sizes(pd.Series(y), parts, "one row in each split", "data.split")
        classes = len(np.unique(y))
        for name, fraction, size in (("val", val, n_val), ("test", test, n_test)):
            if 0 < size < classes:
                raise DataError(
                    f"data.split.{name}: {n} rows are too few to stratify {classes} classes: "
                    f"{name}={fraction} gives {size} row{'s' * (size != 1)}, fewer than the "
                    f"classes; raise the fraction or use data.split.method: random"
                )
    try:
        rest, test_part = _take(positions, n_test, y, seed)
        train, val_part = _take(rest, n_val, None if y is None else y[rest], seed)
    except ValueError as exc:  # sklearn's own stratification checks, worded by it
        raise DataError(f"data.split: cannot stratify {n} rows with val={val}, test={test}: "
                        f"{exc}") from None
    return {"train": np.sort(train), "val": np.sort(val_part), "test": np.sort(test_part)}


def _take(
    positions: np.ndarray, size: int, y: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if size == 0:
        return positions, positions[:0]
    kept, taken = train_test_split(positions, test_size=size, random_state=seed, stratify=y)
    return kept, taken


def _grouped(
    frame: pd.DataFrame, column: str, val: float, test: float, seed: int
) -> dict[str, np.ndarray]:
    from sklearn.model_selection import GroupShuffleSplit

    codes = _codes(frame, column)
    _, n_val, n_test = _sizes(int(codes.max()) + 1, val, test, unit=f"groups (of {column!r})")
    positions = np.arange(len(frame))

    def take(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size == 0:
            return rows, rows[:0]
        splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
        kept, taken = next(splitter.split(rows, groups=codes[rows]))
        return rows[kept], rows[taken]

    rest, test_part = take(positions, n_test)
    train, val_part = take(rest, n_val)
    return {"train": np.sort(train), "val": np.sort(val_part), "test": np.sort(test_part)}


def _timed(frame: pd.DataFrame, column: str, val: float, test: float) -> dict[str, np.ndarray]:
    order = _time_order(frame, column)
    n_train, n_val, _ = _sizes(len(frame), val, test)
    return {
        "train": order[:n_train],
        "val": order[n_train:n_train + n_val],
        "test": order[n_train + n_val:],
    }


def _by_column(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    values = frame[column]
    bad = ~values.isin(SPLITS).to_numpy()
    if bad.any():
        rows = frame.index[bad]
        raise DataError(
            f"data.split.column: column {column!r} holds {values[rows[0]]!r} at row {rows[0]} "
            f"({int(bad.sum())} such values, {rows_text(rows)}); allowed values: "
            f"{', '.join(SPLITS)}"
        )
    codes = values.to_numpy()
    parts = {name: np.flatnonzero(codes == name) for name in SPLITS}
    if len(parts["train"]) == 0:
        raise DataError(f"data.split.column: column {column!r} marks no row as 'train'")
    return parts


# -- helpers ----------------------------------------------------------------------------


def _required(column: str | None, field: str) -> str:
    if column is None:
        raise DataError(f"data.split.{field}: this split method needs data.split.{field}")
    return column


def _codes(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Group ids as integer codes 0..G-1; a missing group id is an error naming its rows."""
    values = frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(f"data.split.group_column: column {column!r} has {int(missing.sum())} "
                        f"missing group ids ({rows_text(frame.index[missing])}); fill or drop them")
    return pd.factorize(values, sort=True)[0]


def _time_order(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(f"data.split.time_column: column {column!r} has {int(missing.sum())} "
                        f"missing times ({rows_text(frame.index[missing])}); fill or drop them")
    return np.argsort(values.to_numpy(), kind="stable")


def _check_class_sizes(y: pd.Series, needed: int, why: str, path: str) -> None:
    counts = y.value_counts()
    small = counts[counts < needed]
    if len(small):
        label, count = small.index[0], int(small.iloc[0])
        raise DataError(
            f"{path}: {len(y)} rows cannot be stratified: class {jsonable(label)!r} has only "
            f"{count} row{'s' * (count != 1)}, and each class needs at least {needed} ({why}); "
            f"collect more data or use data.split.method: random"
        )
