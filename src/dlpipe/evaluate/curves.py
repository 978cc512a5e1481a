"""The numbers behind the evaluation plots, as plain data: curves.json (the plots live in report/).

For classification: ROC and precision-recall curves with their areas (the positive class for
binary, one-vs-rest per class for multiclass), a calibration curve, the confusion matrix
(counts and normalized by true class) and a per-class precision / recall / F1 / support table.
For regression: predicted against true values (a capped sample) and residual quantiles. For
every task: the worst-predicted rows of the split with their raw values. Curves are decimated
to at most `MAX_POINTS` points, always keeping both ends, so the file stays small.

Example:
    >>> data = curves("binary", y_true, p, classes=[0, 1], threshold=0.5, frame=test_frame)
    >>> data["roc"][0]["auc"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from dlpipe import runs
from dlpipe.runs import RunDir

__all__ = ["MAX_POINTS", "MAX_SCATTER", "WORST_N", "curves", "decimate", "write_curves"]

MAX_POINTS = 200
"""Most points kept of each ROC / PR curve."""

MAX_SCATTER = 2000
"""Most (true, predicted) pairs kept for the regression plots (a seeded random sample)."""

WORST_N = 10
"""Worst-predicted rows kept."""

CALIBRATION_BINS = 10


def write_curves(rundir: RunDir, fitted: Any, metrics: dict[str, Any],
                 scored: dict[str, tuple[Any, Any]],
                 frames: dict[str, pd.DataFrame] | None = None) -> dict[str, Any] | None:
    """Write curves.json and the predictions of the test split (val when test is empty).

    Args:
        scored: (true targets, scores) per split, as `dlpipe.evaluate.scores_of` returns.
        frames: the splits' raw rows, for the worst examples; a streaming run has none.

    Returns the curves.json content, or None when both splits are empty.
    """
    split = next((s for s in ("test", "val") if s in scored and len(scored[s][0])), None)
    if split is None:
        return None
    y_true, scores = scored[split]
    task = fitted.task
    classes = fitted.classes
    threshold = float(metrics.get(split, {}).get("threshold", 0.5))
    frame = (frames or {}).get(split)
    inputs = None if frame is None else frame.drop(columns=[fitted.target.name],
                                                   errors="ignore")
    data = curves(task, y_true, scores, classes=classes, threshold=threshold, frame=inputs)
    data["split"] = split
    rundir.write_json(runs.CURVES, data)
    rundir.write_bytes(runs.PREDICTIONS, _predictions_parquet(task, y_true, scores, classes,
                                                              threshold, fitted))
    return data


def curves(task: str, y_true: Any, scores: Any, *, classes: Sequence[Any] = (),
           threshold: float = 0.5, frame: pd.DataFrame | None = None) -> dict[str, Any]:
    """Everything the evaluation plots need, as JSON-ready data.

    Args:
        task: ``binary``, ``multiclass`` or ``regression``.
        y_true: (N,) class indices 0..K-1, or targets on the original scale.
        scores: (N,) positive-class probabilities (binary), (N, K) probabilities
            (multiclass), (N,) predictions (regression).
        classes: the class labels, in index order (shown as strings).
        threshold: the binary decision threshold the metrics used.
        frame: the split's raw input rows, in the order of `y_true`, for the worst examples.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"task": task, "n": len(y_true)}
    if task == "regression":
        out["regression"] = regression_points(y_true.astype(np.float64), scores)
        losses = np.abs(y_true - scores)
        out["worst"] = worst_examples(frame, losses, y_true, scores, None, [])
        return out
    labels = [str(c) for c in classes] or [str(i) for i in range(_n_classes(task, scores))]
    y_true = y_true.astype(np.int64)
    proba = np.stack([1 - scores, scores], axis=1) if task == "binary" else scores
    y_pred = (scores >= threshold).astype(np.int64) if task == "binary" else proba.argmax(1)
    out.update(labels=labels, threshold=threshold if task == "binary" else None)
    positives = [1] if task == "binary" else range(len(labels))
    out["roc"] = [c for k in positives if (c := roc(y_true == k, proba[:, k], labels[k]))]
    out["pr"] = [c for k in positives if (c := pr(y_true == k, proba[:, k], labels[k]))]
    if task == "binary":
        out["calibration"] = calibration(y_true, scores, kind="positive class")
    else:  # reliability of the top label: confidence against how often it is right
        out["calibration"] = calibration(y_pred == y_true, proba.max(1), kind="top label")
    out["confusion"] = confusion(y_true, y_pred, len(labels))
    out["per_class"] = per_class(y_true, y_pred, labels)
    p_true = proba[np.arange(len(y_true)), y_true] if len(y_true) else np.zeros(0)
    losses = -np.log(np.clip(p_true, 1e-12, 1.0))
    out["worst"] = worst_examples(frame, losses, np.asarray(labels, dtype=object)[y_true],
                                  np.asarray(labels, dtype=object)[y_pred], p_true, labels)
    return out


def roc(positive: np.ndarray, score: np.ndarray, label: str) -> dict[str, Any] | None:
    """ROC curve of one class against the rest, with its area; None with one class present."""
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = skm.roc_curve(positive, score)
    keep = decimate(len(fpr))
    return {"label": label, "auc": float(skm.auc(fpr, tpr)), "fpr": _floats(fpr[keep]),
            "tpr": _floats(tpr[keep])}


def pr(positive: np.ndarray, score: np.ndarray, label: str) -> dict[str, Any] | None:
    """Precision-recall curve of one class, with average precision (metrics.json's pr_auc)."""
    if positive.all() or not positive.any():
        return None
    precision, recall, _ = skm.precision_recall_curve(positive, score)
    keep = decimate(len(recall))
    return {"label": label, "average_precision": float(skm.average_precision_score(positive,
                                                                                      score)),
            "prevalence": float(positive.mean()), "recall": _floats(recall[keep]),
            "precision": _floats(precision[keep])}


def calibration(hit: np.ndarray, prob: np.ndarray, *, kind: str) -> dict[str, Any]:
    """Calibration curve (`sklearn.calibration.calibration_curve`, uniform bins) with the
    number of examples in each non-empty bin."""
    from sklearn.calibration import calibration_curve

    hit = np.asarray(hit).astype(np.int64)
    if len(hit) == 0 or len(np.unique(hit)) < 2:
        return {"kind": kind, "bins": CALIBRATION_BINS, "prob_true": [], "prob_pred": [],
                "counts": []}
    prob_true, prob_pred = calibration_curve(hit, prob, n_bins=CALIBRATION_BINS)
    # The binning of calibration_curve(strategy="uniform"), to count each non-empty bin.
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], prob), minlength=CALIBRATION_BINS)
    return {"kind": kind, "bins": CALIBRATION_BINS, "prob_true": _floats(prob_true),
            "prob_pred": _floats(prob_pred), "counts": [int(c) for c in counts if c > 0]}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Counts (rows: true class, columns: predicted) and the same normalized by row."""
    counts = skm.confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return {"counts": counts.tolist(), "normalized": _floats(normalized)}


def per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class."""
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), zero_division=0)
    return [{"label": label, "precision": float(p[i]), "recall": float(r[i]),
             "f1": float(f[i]), "support": int(s[i])} for i, label in enumerate(labels)]


def regression_points(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """A seeded sample of at most `MAX_SCATTER` (true, predicted) pairs, and residual stats."""
    n = len(y_true)
    keep = np.arange(n)
    if n > MAX_SCATTER:
        keep = np.sort(np.random.default_rng(0).choice(n, MAX_SCATTER, replace=False))
    residual = y_true - y_pred
    quantiles = np.quantile(residual, [0.05, 0.25, 0.5, 0.75, 0.95]) if n else []
    return {"true": _floats(y_true[keep]), "predicted": _floats(y_pred[keep]), "n_total": n,
            "n_shown": len(keep), "residual_mean": float(residual.mean()) if n else None,
            "residual_std": float(residual.std()) if n else None,
            "residual_quantiles": dict(zip(["q05", "q25", "q50", "q75", "q95"],
                                           _floats(quantiles), strict=False))}


def worst_examples(frame: pd.DataFrame | None, losses: np.ndarray, y_true: np.ndarray,
                   y_pred: np.ndarray, p_true: np.ndarray | None,
                   labels: list[str]) -> dict[str, Any]:
    """The `WORST_N` rows with the largest loss (negative log-probability of the true class,
    or absolute error), with their raw input values."""
    order = np.argsort(-losses, kind="stable")[:WORST_N]
    columns = [str(c) for c in frame.columns] if frame is not None else []
    rows = []
    for i in order:
        row: dict[str, Any] = {"row": int(i), "true": _plain(y_true[i]),
                               "predicted": _plain(y_pred[i]), "loss": _plain(losses[i])}
        if p_true is not None:
            row["probability_true"] = _plain(p_true[i])
        if frame is not None:
            row["values"] = {c: _plain(v) for c, v in zip(columns, frame.iloc[int(i)],
                                                          strict=True)}
        rows.append(row)
    return {"loss": "abs_error" if p_true is None else "log_loss", "columns": columns,
            "rows": rows}


def decimate(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most `max_points` evenly spread points of `n`, both ends included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def _n_classes(task: str, scores: np.ndarray) -> int:
    return 2 if task == "binary" else scores.shape[1]


def _floats(values: Any) -> Any:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim > 1:
        return [_floats(row) for row in array]
    return [float(v) if math.isfinite(v) else None for v in array]


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy unwrapped, NaN as None, timestamps as ISO text."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray):  # an image held in the table: too big to show
        return f"<image, {len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _predictions_parquet(task: str, y_true: np.ndarray, scores: np.ndarray,
                         classes: list[Any], threshold: float, fitted: Any) -> bytes:
    import io

    if task == "regression":
        frame = pd.DataFrame({"true": y_true, "predicted": scores})
    else:
        proba = np.stack([1 - scores, scores], axis=1) if task == "binary" else scores
        indices = (scores >= threshold).astype(np.int64) if task == "binary" else proba.argmax(1)
        frame = pd.DataFrame({"true": fitted.target.inverse_transform(np.asarray(y_true)),
                              "predicted": fitted.target.inverse_transform(indices)})
        for k, label in enumerate(classes):
            frame[f"probability_{label}"] = proba[:, k]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
