"""Drop or flag bad rows and columns; every action is counted, every error names column and row.

Before splitting: listed/ignored columns, missing targets, exact duplicate rows. After
splitting (`splits` maps split name → rows indexed by row number in the loaded file):
missing inputs, outliers (bounds fitted on train), constant columns, class imbalance.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.config import MissingConfig, OutlierConfig
from dlpipe.data._messages import (
    beyond_float32,
    beyond_float32_text,
    counts_by_label,
    rows_text,
    unknown_column,
)
from dlpipe.errors import DataError

Splits = dict[str, pd.DataFrame]
DEFAULT_THRESHOLD = {"iqr": 1.5, "zscore": 3.0}


def drop_columns(
    frame: pd.DataFrame, listed: Sequence[str], kinds: Mapping[str, str]
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Drop `data.drop_columns` and the columns set to `ignore`; return (frame, listed, ignored).

    Raises:
        DataError: a listed or configured column is not in the table (with a did-you-mean).
    """
    for name in listed:
        if name not in frame.columns:
            raise unknown_column("data.drop_columns", name, frame.columns)
    for name in kinds:
        if name not in frame.columns:
            raise unknown_column("data.columns", name, frame.columns)
    ignored = [c for c, kind in kinds.items() if kind == "ignore" and c not in listed]
    return frame.drop(columns=[*listed, *ignored]), list(listed), ignored


def check_target(frame: pd.DataFrame, target: str, *, drop: bool) -> tuple[pd.DataFrame, int]:
    """Fail on missing or non-finite targets, or numbers beyond float32's range (the model's
    targets are float32), or drop those rows when `drop`; return the count."""
    y = frame[target]
    bad = y.isna().to_numpy()
    huge = np.zeros(len(y), dtype=bool)
    if pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype):
        values = y.to_numpy(dtype=float, na_value=np.nan)
        huge = beyond_float32(values)
        bad = bad | ~np.isfinite(values) | huge
    count = int(bad.sum())
    if count and not drop:
        fix = "set data.clean.drop_missing_target: true to drop them"
        if huge.any():
            first = int(np.flatnonzero(huge)[0])
            more = (f" ({count} missing, non-finite or too large values in all: "
                    f"{rows_text(frame.index[bad])})" if count > 1 else "")
            raise DataError(
                f"data.target: column {target!r}, row {frame.index[first]}: "
                f"{beyond_float32_text(y.iloc[first])}{more}; fix the data, or {fix}"
            )
        raise DataError(
            f"data.target: {count} missing or non-finite values in column {target!r} "
            f"({rows_text(frame.index[bad])}); {fix}"
        )
    return (frame[~bad] if count else frame), count


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate rows (every column, the target included); keep the first."""
    duplicated = frame.duplicated(keep="first").to_numpy()
    return frame[~duplicated], int(duplicated.sum())


def handle_missing(
    splits: Splits, kinds: Mapping[str, str], config: MissingConfig
) -> tuple[Splits, dict[str, Any], dict[str, str]]:
    """Count missing inputs per split; drop rows for `drop` columns; return the fill strategies.

    Returns:
        (splits, profile section, strategy per column for features to fit). Every input column
        whose strategy is not `drop` gets a strategy, also those without missing training
        values, so a missing value at predict time can still be filled.
    """
    strategies = missing_strategies(kinds, config)
    inputs = list(kinds)
    counts = {split: frame[inputs].isna().sum() for split, frame in splits.items()}
    dropping = [c for c, s in strategies.items() if s == "drop"]
    section: dict[str, Any] = {"columns": {}, "rows_dropped": {}}
    for column in inputs:
        per_split = {split: int(counts[split][column]) for split in splits}
        section["columns"][column] = {
            "strategy": strategies[column],
            "counts": per_split,
            "rows_dropped": per_split if column in dropping else dict.fromkeys(splits, 0),
        }
    kept = {}
    for split, frame in splits.items():
        gone = frame[dropping].isna().any(axis=1).to_numpy() if dropping else np.zeros(
            len(frame), dtype=bool)
        section["rows_dropped"][split] = int(gone.sum())
        kept[split] = frame[~gone]
    return kept, section, {c: s for c, s in strategies.items() if s != "drop"}


def missing_strategies(kinds: Mapping[str, str], config: MissingConfig) -> dict[str, str]:
    """The missing-value strategy of every input column (`data.clean.missing`).

    Raises:
        DataError: a listed column is not an input, or `mean`/`median` on a non-numeric one.
    """
    for name, strategy in config.columns.items():
        if name not in kinds:
            raise unknown_column("data.clean.missing.columns", name, kinds, "an input column")
        if strategy in ("mean", "median") and kinds[name] != "numeric":
            raise DataError(f"data.clean.missing.columns.{name}: {strategy!r} needs a numeric "
                            f"column; {name!r} is {kinds[name]}")
    return {c: config.columns.get(c, config.numeric if k == "numeric" else config.categorical)
            for c, k in kinds.items()}


def handle_outliers(
    splits: Splits, kinds: Mapping[str, str], config: OutlierConfig | None
) -> tuple[Splits, dict[str, Any] | None, dict[str, list[float]]]:
    """Fit outlier bounds on train; count values outside per split; drop train rows if asked.

    Returns:
        (splits, profile section or None when off, clip bounds ``{column: [low, high]}`` for
        the features stage when the action is `clip`).
    """
    if config is None:
        return splits, None, {}
    numeric = [c for c, k in kinds.items() if k == "numeric"]
    columns = numeric if config.columns is None else list(config.columns)
    for name in columns:
        if name not in kinds:
            raise unknown_column("data.clean.outliers.columns", name, kinds, "an input column")
        if kinds[name] != "numeric":
            raise DataError(f"data.clean.outliers.columns: column {name!r} is {kinds[name]}; "
                            f"outliers apply to numeric columns only")
    threshold = config.threshold or DEFAULT_THRESHOLD[config.method]
    train = splits["train"][columns].astype(float)
    if config.method == "iqr":
        q1, q3 = train.quantile(0.25), train.quantile(0.75)
        low, high = q1 - threshold * (q3 - q1), q3 + threshold * (q3 - q1)
    else:  # population std (ddof=0): the bounds describe this training split, not a sample
        mean, std = train.mean(), train.std(ddof=0)
        low, high = mean - threshold * std, mean + threshold * std
    fitted = [c for c in columns if np.isfinite(low[c]) and np.isfinite(high[c])]
    outside = {split: (frame[fitted] < low[fitted]) | (frame[fitted] > high[fitted])
               for split, frame in splits.items()}
    section: dict[str, Any] = {
        "method": config.method, "action": config.action, "threshold": float(threshold),
        "columns": {c: {"low": float(low[c]), "high": float(high[c]),
                        "outside": {s: int(outside[s][c].sum()) for s in splits}}
                    for c in fitted},
        "train_rows_dropped": 0,
    }
    if config.action == "drop":
        gone = outside["train"].any(axis=1).to_numpy()
        section["train_rows_dropped"] = int(gone.sum())
        splits = {**splits, "train": splits["train"][~gone]}
        return splits, section, {}
    return splits, section, {c: [float(low[c]), float(high[c])] for c in fitted}


def drop_constant(splits: Splits, inputs: Sequence[str]) -> tuple[Splits, list[str]]:
    """Drop input columns with at most one value (missing counts as one) on the train split."""
    train = splits["train"]
    # Two different values among the first rows already rule a column out, cheaply.
    varied = train[list(inputs)].iloc[:1000].nunique(dropna=False) > 1
    constant = [c for c in inputs if not varied[c] and train[c].nunique(dropna=False) <= 1]
    if constant:
        warnings.warn(
            f"data.clean.drop_constant: dropped {len(constant)} column(s) constant on the "
            f"training split: {', '.join(constant)}",
            UserWarning,
            stacklevel=3,
        )
        splits = {s: frame.drop(columns=constant) for s, frame in splits.items()}
    return splits, constant


def resample(
    train: pd.DataFrame, target: str, method: str, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Balance the classes of the training split: `oversample`, `undersample` or leave it.

    Oversampling draws extra rows of each class with replacement up to the majority count;
    undersampling keeps a random subset of each class the size of the minority count. Both
    are seeded and keep the original rows first in their original order.
    """
    y = train[target]
    section: dict[str, Any] = {"method": method, "class_counts_before": counts_by_label(y)}
    rng = np.random.default_rng(seed)
    members = y.groupby(y, sort=True).indices  # class -> positions in `train`
    if method == "oversample":
        most = max(len(p) for p in members.values())
        extra = [rng.choice(p, size=most - len(p), replace=True) for p in members.values()]
        train = pd.concat([train, train.iloc[np.concatenate(extra)]])
    elif method == "undersample":
        fewest = min(len(p) for p in members.values())
        keep = [rng.choice(p, size=fewest, replace=False) for p in members.values()]
        train = train.iloc[np.sort(np.concatenate(keep))]
    elif method == "class_weight":  # "balanced" weights n / (k * n_c); the train stage applies
        counts = section["class_counts_before"]
        section["class_weights"] = {c: len(y) / (len(counts) * n) for c, n in counts.items()}
    section["class_counts_after"] = counts_by_label(train[target])
    return train, section
