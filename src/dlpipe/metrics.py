"""Metrics per task: thin wrappers over `sklearn.metrics`, shared by train, evaluate and tune.

Every metric is registered in `METRICS` and called as
``metric(y_true, scores, *, task, y_pred, labels, threshold, top_k)`` where

- ``y_true``: (N,) int class indices 0..K-1 (classification) or float targets on the
  original scale (regression);
- ``scores``: (N,) probability of the positive class (binary), (N, K) class probabilities
  (multiclass), (N,) predictions (regression);
- ``y_pred``: (N,) hard predictions (binary: ``scores >= threshold``; multiclass: argmax;
  regression: ``scores``);
- ``labels``: ``[0, ..., K-1]`` (``[]`` for regression).

A metric returns a plain float (or a nested list of ints), or None where it is undefined
(ROC AUC with one class present, top-k accuracy with K <= k). A user adds one with
``@METRICS.register("name")`` (accepting ``**context`` for the keywords it does not use) or
names ``my_pkg.module:function`` in ``evaluate.metrics``.

Example:
    >>> compute_metrics("binary", [0, 1, 1, 0], [0.2, 0.9, 0.4, 0.1], extra=["mcc"])["f1"]
    0.6666666666666666
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from dlpipe.errors import ConfigError
from dlpipe.registry import Registry

__all__ = [
    "METRICS",
    "STANDARD",
    "best_threshold",
    "compute_epoch_metrics",
    "compute_metrics",
    "epoch_metrics",
    "higher_is_better",
    "metric_tasks",
]

Metric = Callable[..., Any]
METRICS: Registry[Metric] = Registry("metric")

TASKS = ("binary", "multiclass", "regression")
CLASSIFICATION = ("binary", "multiclass")

STANDARD: dict[str, tuple[str, ...]] = {
    "binary": (
        "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss",
        "confusion_matrix",
    ),
    "multiclass": (
        "accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
        "recall_weighted", "f1_weighted", "top_k_accuracy", "log_loss", "confusion_matrix",
    ),
    "regression": ("mse", "rmse", "mae", "r2", "mape"),
}
"""The metrics `compute_metrics` always reports, per task (plus `threshold` / `top_k`)."""

_TASKS_OF: dict[str, tuple[str, ...]] = {}

# Lower is better for these names and for anything ending in `loss` or `error`.
_LOWER_IS_BETTER = {"loss", "log_loss", "mse", "rmse", "mae", "mape", "median_ae", "brier_score"}


def _metric(name: str, *tasks: str) -> Callable[[Metric], Metric]:
    """Register `name` in METRICS for the given tasks."""

    def add(fn: Metric) -> Metric:
        _TASKS_OF[name] = tasks
        return METRICS.register(name)(fn)

    return add


def metric_tasks(name: str) -> tuple[str, ...]:
    """Tasks a registered metric applies to (all tasks for a user's import path)."""
    return _TASKS_OF.get(name, TASKS)


# -- classification --------------------------------------------------------------------------


@_metric("accuracy", *CLASSIFICATION)
def accuracy(y_true, scores, *, y_pred, **_):
    return skm.accuracy_score(y_true, y_pred)


@_metric("balanced_accuracy", *CLASSIFICATION)
def balanced_accuracy(y_true, scores, *, y_pred, **_):
    return skm.balanced_accuracy_score(y_true, y_pred)


@_metric("precision", "binary")
def precision(y_true, scores, *, y_pred, **_):
    return skm.precision_score(y_true, y_pred, pos_label=1, zero_division=0)


@_metric("recall", "binary")
def recall(y_true, scores, *, y_pred, **_):
    return skm.recall_score(y_true, y_pred, pos_label=1, zero_division=0)


@_metric("f1", "binary")
def f1(y_true, scores, *, y_pred, **_):
    return skm.f1_score(y_true, y_pred, pos_label=1, zero_division=0)


def _averaged(score: Callable[..., float], average: str) -> Metric:
    def metric(y_true, scores, *, y_pred, labels, **_):
        return score(y_true, y_pred, labels=labels, average=average, zero_division=0)

    return metric


for _average in ("macro", "weighted"):
    _metric(f"precision_{_average}", "multiclass")(_averaged(skm.precision_score, _average))
    _metric(f"recall_{_average}", "multiclass")(_averaged(skm.recall_score, _average))
    _metric(f"f1_{_average}", "multiclass")(_averaged(skm.f1_score, _average))


@_metric("roc_auc", "binary")
def roc_auc(y_true, scores, **_):
    if len(np.unique(y_true)) < 2:
        return None
    return skm.roc_auc_score(y_true, scores)


@_metric("roc_auc_ovr", "multiclass")
def roc_auc_ovr(y_true, scores, *, labels, **_):
    """Macro one-vs-rest ROC AUC; None unless every class is present."""
    if len(np.unique(y_true)) < len(labels):
        return None
    return skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=labels)


@_metric("pr_auc", "binary")
def pr_auc(y_true, scores, **_):
    """Area under the precision-recall curve, as average precision."""
    if len(np.unique(y_true)) < 2:
        return None
    return skm.average_precision_score(y_true, scores)


@_metric("log_loss", *CLASSIFICATION)
def log_loss(y_true, scores, *, labels, **_):
    return skm.log_loss(y_true, scores, labels=labels)


@_metric("brier_score", "binary")
def brier_score(y_true, scores, **_):
    return skm.brier_score_loss(y_true, scores, pos_label=1)


@_metric("top_k_accuracy", "multiclass")
def top_k_accuracy(y_true, scores, *, labels, top_k, **_):
    if len(labels) <= top_k:  # every class is in the top k: the score says nothing
        return None
    return skm.top_k_accuracy_score(y_true, scores, k=top_k, labels=labels)


@_metric("mcc", *CLASSIFICATION)
def mcc(y_true, scores, *, y_pred, **_):
    return skm.matthews_corrcoef(y_true, y_pred)


@_metric("cohen_kappa", *CLASSIFICATION)
def cohen_kappa(y_true, scores, *, y_pred, labels, **_):
    return skm.cohen_kappa_score(y_true, y_pred, labels=labels)


@_metric("confusion_matrix", *CLASSIFICATION)
def confusion_matrix(y_true, scores, *, y_pred, labels, **_):
    """(K, K) counts, rows true classes, columns predicted classes, as lists of ints."""
    return skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()


# -- regression ----------------------------------------------------------------------------------


def _regression(name: str, score: Callable[..., float]) -> None:
    _metric(name, "regression")(lambda y_true, scores, **_: score(y_true, scores))


_regression("mse", skm.mean_squared_error)
_regression("rmse", skm.root_mean_squared_error)
_regression("mae", skm.mean_absolute_error)
_regression("r2", skm.r2_score)
_regression("mape", skm.mean_absolute_percentage_error)
_regression("median_ae", skm.median_absolute_error)
_regression("explained_variance", skm.explained_variance_score)
_regression("max_error", skm.max_error)


# -- the public functions ----------------------------------------------------------------------


def compute_metrics(
    task: str,
    y_true: Any,
    scores: Any,
    *,
    threshold: float = 0.5,
    top_k: int = 3,
    extra: Iterable[str] = (),
) -> dict[str, Any]:
    """Compute the task's standard metrics plus the `extra` ones named in the config.

    Args:
        task: ``binary``, ``multiclass`` or ``regression``.
        y_true: (N,) class indices, or (N,) targets on the original scale.
        scores: (N,) positive-class probabilities, (N, K) probabilities, or (N,) predictions.
        threshold: binary decision threshold on the positive-class probability.
        top_k: k of the multiclass top-k accuracy.
        extra: further names in METRICS (or ``module:function`` paths).

    Returns:
        Plain JSON-ready values: floats, ints, None where undefined, and the confusion
        matrix as a (K, K) list of lists. Binary adds ``threshold``, multiclass ``top_k``.

    Raises:
        ConfigError: an `extra` name is unknown or does not apply to `task`
            (reported under ``evaluate.metrics``).
    """
    if task not in TASKS:
        raise ConfigError([("data.task", f"unknown task {task!r}; expected one of "
                                         f"{', '.join(TASKS)}")])
    names = list(STANDARD[task])
    names += [name for name in _check_extra(task, extra) if name not in names]
    y_true, scores = _as_arrays(task, y_true, scores)
    n_classes = {"binary": 2, "multiclass": scores.shape[-1], "regression": 0}[task]
    context = {
        "task": task,
        "y_pred": _hard_predictions(task, scores, threshold),
        "labels": list(range(n_classes)),
        "threshold": threshold,
        "top_k": top_k,
    }
    out: dict[str, Any] = {}
    for name in names:
        fn = METRICS.get(name, path="evaluate.metrics")
        out[name] = _call(fn, name, y_true, scores, context)
    if task == "binary":
        out["threshold"] = float(threshold)
    elif task == "multiclass":
        out["top_k"] = int(top_k)
    return out


def best_threshold(y_true: Any, p: Any) -> float:
    """Return the threshold on `p` that maximises F1 on (validation) data `y_true`.

    Predicting positive where ``p >= threshold`` then reaches the best F1 found by
    `precision_recall_curve`. Falls back to 0.5 when `y_true` holds a single class.
    """
    y_true = np.asarray(y_true)
    p = np.asarray(p)
    if len(np.unique(y_true)) < 2:
        return 0.5
    precision_, recall_, thresholds = skm.precision_recall_curve(y_true, p)
    # The last (precision=1, recall=0) point has no threshold.
    precision_, recall_ = precision_[:-1], recall_[:-1]
    denom = precision_ + recall_
    f1_ = np.divide(2 * precision_ * recall_, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1_))])


def epoch_metrics(task: str) -> list[str]:
    """The cheap metrics logged every epoch: accuracy, or rmse and r2."""
    return ["rmse", "r2"] if task == "regression" else ["accuracy"]


def compute_epoch_metrics(
    task: str, y_true: Any, scores: Any, names: Sequence[str]
) -> dict[str, float]:
    """Compute `names` with plain numpy (equal to sklearn's values); NaN where undefined.

    Accuracy thresholds binary probabilities at 0.5. Names other than accuracy, mse, rmse,
    mae and r2 go through `compute_metrics`' registry functions.
    """
    y_true, scores = _as_arrays(task, y_true, scores)
    out: dict[str, float] = {}
    for name in names:
        value = _fast(task, name, y_true, scores)
        if value is _SLOW:
            value = compute_metrics(task, y_true, scores, extra=[name])[name]
        out[name] = math.nan if value is None else float(value)
    return out


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better (`val_loss` → False).

    A ``val_``, ``train_``, ``test_``, ``ema_val_`` (or any ``ema_``) prefix is ignored.
    """
    base = name.removeprefix("ema_")
    for prefix in ("val_", "train_", "test_"):
        base = base.removeprefix(prefix)
    return not (base in _LOWER_IS_BETTER or base.endswith(("loss", "error")))


# -- helpers ---------------------------------------------------------------------------------------

_SLOW = object()


def _fast(task: str, name: str, y_true: np.ndarray, scores: np.ndarray) -> Any:
    if len(y_true) == 0:
        return None
    if name == "accuracy" and task in CLASSIFICATION:
        return float(np.mean(_hard_predictions(task, scores, 0.5) == y_true))
    if task != "regression" or name not in ("mse", "rmse", "mae", "r2"):
        return _SLOW
    error = y_true - scores
    if name == "mae":
        return float(np.mean(np.abs(error)))
    mse = float(np.mean(error**2))
    if name == "mse":
        return mse
    if name == "rmse":
        return math.sqrt(mse)
    if len(y_true) < 2:
        return None
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    residual = mse * len(y_true)
    if total == 0:  # sklearn's force_finite convention
        return 1.0 if residual == 0 else 0.0
    return 1.0 - residual / total


def _check_extra(task: str, extra: Iterable[str]) -> list[str]:
    names = []
    for name in extra:
        METRICS.get(name, path="evaluate.metrics")  # unknown name: did-you-mean
        if task not in metric_tasks(name):
            fits = [n for n in METRICS.names() if task in metric_tasks(n)]
            raise ConfigError([(
                "evaluate.metrics",
                f"metric {name!r} does not apply to a {task} task "
                f"(it is for {', '.join(metric_tasks(name))}); {task} metrics: {', '.join(fits)}",
            )])
        names.append(name)
    return names


def _as_arrays(task: str, y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true)
    y_true = y_true.astype(np.float64 if task == "regression" else np.int64, copy=False)
    expected_ndim = 2 if task == "multiclass" else 1
    if scores.ndim != expected_ndim or len(scores) != len(y_true):
        want = "(N, K)" if task == "multiclass" else "(N,)"
        raise ValueError(f"{task} scores must have shape {want} with N={len(y_true)}; "
                         f"got {scores.shape}")
    if task == "multiclass" and len(scores):
        # float32 softmax rows sum to 1 only within ~1e-7; sklearn wants exact probabilities.
        scores = scores / scores.sum(axis=1, keepdims=True)
    return y_true, scores


def _hard_predictions(task: str, scores: np.ndarray, threshold: float) -> np.ndarray:
    if task == "binary":
        return (scores >= threshold).astype(np.int64)
    if task == "multiclass":
        return scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    return scores


def _call(fn: Metric, name: str, y_true: np.ndarray, scores: np.ndarray,
          context: dict[str, Any]) -> Any:
    labels = context["labels"]
    if len(y_true) == 0:
        return [[0] * len(labels) for _ in labels] if name == "confusion_matrix" else None
    with warnings.catch_warnings():
        # Undefined values come back as None below, not as warnings.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = fn(y_true, scores, **context)
    return _plain(value)


def _plain(value: Any) -> Any:
    """A JSON-ready value: numpy scalars unwrapped, NaN/inf as None."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None
