"""The drift reference: per-column distributions of the training split, shipped in the bundle.

`dlpipe serve` compares live inputs with this reference (population stability index per
feature). It is plain JSON data, stored under ``"reference"`` in the bundle's
data_profile.json::

    {"rows": 180, "bins": 10,
     "columns": {
        "age":   {"kind": "numeric", "edges": [..9 cut points..], "fractions": [..10..],
                  "missing": 0.0},
        "color": {"kind": "categorical", "categories": ["blue", "red"], "fractions": [.4, .6],
                  "missing": 0.0},
        "review": {"kind": "text", "measure": "length", "edges": [...], "fractions": [...],
                   "missing": 0.0},
        "photo": {"kind": "image"}},
     "target": {"kind": "categorical", "categories": [0, 1], "fractions": [.45, .55]}}

Numeric bins are the training quantiles (``bins`` equal-mass bins, duplicate cut points
merged), so every bin holds about the same share of the training rows; a value falls in bin
``searchsorted(edges, value, side="right")``. Fractions of numeric and text columns are over
the non-missing rows; ``missing`` is the share of missing values. Image columns have no
reference (their drift is not measured). No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["REFERENCE_FORMAT", "reference_profile"]

REFERENCE_FORMAT = 1


def reference_profile(columns: Sequence[Mapping[str, Any]], train: pd.DataFrame, *,
                      target: str | None = None, task: str | None = None,
                      bins: int = 10) -> dict[str, Any]:
    """The drift reference of the training rows `train` for schema.json's `columns`.

    Args:
        columns: ``[{"name", "kind", ...}]`` as in schema.json.
        target: the target column; its distribution is the reference of the predictions.
        task: ``binary``, ``multiclass`` or ``regression`` (how to describe the target).
        bins: equal-mass bins for numeric columns and text lengths.

    Example:
        >>> ref = reference_profile([{"name": "x", "kind": "numeric"}], pd.DataFrame({"x": [1, 2]}))
        >>> ref["columns"]["x"]["fractions"]
        [0.5, 0.5]
    """
    described = {c["name"]: describe_column(train[c["name"]], c["kind"], bins)
                 for c in columns if c["name"] in train.columns}
    out: dict[str, Any] = {"format": REFERENCE_FORMAT, "rows": len(train), "bins": bins,
                           "columns": described}
    if target is not None and target in train.columns:
        kind = "numeric" if task == "regression" else "categorical"
        out["target"] = describe_column(train[target], kind, bins)
    return out


def describe_column(values: pd.Series, kind: str, bins: int = 10) -> dict[str, Any]:
    """The reference of one column: bins and fractions (see the module docstring)."""
    if kind == "image":
        return {"kind": "image"}
    missing = values.isna().to_numpy()
    share_missing = float(missing.mean()) if len(values) else 0.0
    present = values[~missing]
    if kind in ("categorical", "binary"):
        counts = present.astype(object).value_counts(sort=False)
        categories = _sorted(counts.index)
        total = max(int(counts.sum()), 1)
        return {"kind": kind, "categories": categories,
                "fractions": [float(counts[c]) / total for c in categories],
                "missing": share_missing}
    if kind == "text":
        numbers = present.astype(str).str.len().to_numpy(dtype=np.float64)
        return {"kind": "text", "measure": "length", **_numeric_bins(numbers, bins),
                "missing": share_missing}
    numbers = pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    return {"kind": "numeric", **_numeric_bins(numbers, bins), "missing": share_missing}


def _numeric_bins(numbers: np.ndarray, bins: int) -> dict[str, list[float]]:
    if len(numbers) == 0:
        return {"edges": [], "fractions": [1.0]}
    quantiles = np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)  # a heavy value (0 in a sparse column) merges cut points
    counts = np.bincount(np.searchsorted(edges, numbers, side="right"), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges],
            "fractions": [float(c) / len(numbers) for c in counts]}


def _sorted(values: Any) -> list[Any]:
    items = [v.item() if isinstance(v, np.generic) else v for v in values]
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=lambda v: (type(v).__name__, str(v)))
