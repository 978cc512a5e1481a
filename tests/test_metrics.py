"""dlpipe.metrics against sklearn.metrics called directly (the oracle)."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from dlpipe.errors import ConfigError
from dlpipe.metrics import (
    METRICS,
    best_threshold,
    compute_epoch_metrics,
    compute_metrics,
    epoch_metrics,
    higher_is_better,
    metric_tasks,
)


def binary_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0.001, 0.999)
    return y, p


def multiclass_data(n=300, k=5, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def regression_data(n=150, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, n)
    return y, y + rng.normal(0, 1, n)


def test_binary_metrics_equal_sklearn():
    y, p = binary_data()
    out = compute_metrics("binary", y, p, threshold=0.4)
    pred = (p >= 0.4).astype(int)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "f1": skm.f1_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "log_loss": skm.log_loss(y, p),
        "confusion_matrix": skm.confusion_matrix(y, pred).tolist(),
        "threshold": 0.4,
    }
    assert set(out) == set(expected)
    assert out.pop("confusion_matrix") == expected.pop("confusion_matrix")
    assert out == pytest.approx(expected, rel=1e-12)


def test_multiclass_metrics_equal_sklearn():
    y, proba = multiclass_data()
    out = compute_metrics("multiclass", y, proba, top_k=2)
    pred = proba.argmax(axis=1)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "top_k_accuracy": skm.top_k_accuracy_score(y, proba, k=2),
        "log_loss": skm.log_loss(y, proba),
        "confusion_matrix": skm.confusion_matrix(y, pred).tolist(),
        "top_k": 2,
    }
    for average in ("macro", "weighted"):
        expected[f"precision_{average}"] = skm.precision_score(y, pred, average=average)
        expected[f"recall_{average}"] = skm.recall_score(y, pred, average=average)
        expected[f"f1_{average}"] = skm.f1_score(y, pred, average=average)
    assert set(out) == set(expected)
    assert out.pop("confusion_matrix") == expected.pop("confusion_matrix")
    assert out == pytest.approx(expected, rel=1e-12)


def test_regression_metrics_equal_sklearn():
    y, pred = regression_data()
    out = compute_metrics("regression", y, pred)
    expected = {
        "mse": skm.mean_squared_error(y, pred),
        "rmse": skm.root_mean_squared_error(y, pred),
        "mae": skm.mean_absolute_error(y, pred),
        "r2": skm.r2_score(y, pred),
        "mape": skm.mean_absolute_percentage_error(y, pred),
    }
    assert out == pytest.approx(expected, rel=1e-12)
    assert set(out) == set(expected)


@pytest.mark.parametrize(
    ("task", "name", "oracle"),
    [
        ("binary", "balanced_accuracy", lambda y, s: skm.balanced_accuracy_score(y, s >= 0.5)),
        ("binary", "mcc", lambda y, s: skm.matthews_corrcoef(y, s >= 0.5)),
        ("binary", "cohen_kappa", lambda y, s: skm.cohen_kappa_score(y, (s >= 0.5).astype(int))),
        ("binary", "brier_score", skm.brier_score_loss),
        ("multiclass", "mcc", lambda y, s: skm.matthews_corrcoef(y, s.argmax(1))),
        ("multiclass", "roc_auc_ovr", lambda y, s: skm.roc_auc_score(y, s, multi_class="ovr")),
        ("regression", "median_ae", skm.median_absolute_error),
        ("regression", "explained_variance", skm.explained_variance_score),
        ("regression", "max_error", skm.max_error),
    ],
)
def test_extra_metrics_equal_sklearn(task, name, oracle):
    y, scores = {"binary": binary_data, "multiclass": multiclass_data,
                 "regression": regression_data}[task]()
    out = compute_metrics(task, y, scores, extra=[name])
    assert out[name] == pytest.approx(oracle(y, scores), rel=1e-12)


def test_confusion_matrix_is_k_by_k_when_a_class_is_absent():
    y = np.array([0, 0, 2, 2, 0])
    proba = np.eye(4)[[0, 2, 2, 0, 0]] * 0.9 + 0.025  # class 1 and 3 never true
    out = compute_metrics("multiclass", y, proba)
    assert out["confusion_matrix"] == [[2, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_undefined_values_are_none_not_errors():
    binary = compute_metrics("binary", [1, 1, 1], [0.2, 0.7, 0.9])
    assert binary["roc_auc"] is None
    assert binary["pr_auc"] is None
    assert binary["confusion_matrix"] == [[0, 0], [1, 2]]
    _, proba = multiclass_data(n=20, k=3)
    assert compute_metrics("multiclass", np.zeros(20, int), proba, top_k=3)["top_k_accuracy"] \
        is None


def test_best_threshold_beats_the_default_on_a_skewed_problem():
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=400) < 0.1).astype(int)  # 10% positives with low probabilities
    p = np.clip(0.25 * y + rng.uniform(0, 0.45, 400), 0, 1)
    threshold = best_threshold(y, p)
    f1_best = skm.f1_score(y, p >= threshold)
    assert f1_best >= skm.f1_score(y, p >= 0.5)
    assert f1_best > 0.5  # at 0.5 almost nothing is predicted positive
    # Oracle: no threshold among the scores does better.
    assert f1_best == pytest.approx(max(skm.f1_score(y, p >= t) for t in np.unique(p)))


def test_unknown_extra_metric_suggests_the_closest_name():
    y, p = binary_data(n=20)
    with pytest.raises(ConfigError, match=r"evaluate\.metrics: unknown metric 'acuracy'\. "
                                          r"Did you mean 'accuracy'\?"):
        compute_metrics("binary", y, p, extra=["acuracy"])


def test_a_regression_metric_is_refused_for_a_classification_task():
    y, p = binary_data(n=20)
    with pytest.raises(ConfigError, match=r"evaluate\.metrics: metric 'max_error' does not "
                                          r"apply to a binary task"):
        compute_metrics("binary", y, p, extra=["max_error"])


def test_every_registered_metric_declares_its_tasks():
    for name in METRICS.names():
        assert set(metric_tasks(name)) <= {"binary", "multiclass", "regression"}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_values_are_json_serializable(task):
    data = {"binary": binary_data, "multiclass": multiclass_data,
            "regression": regression_data}[task]()
    extra = [n for n in METRICS.names() if task in metric_tasks(n)]
    out = compute_metrics(task, *data, extra=extra)
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_epoch_metrics_equal_sklearn():
    y, p = binary_data()
    assert epoch_metrics("binary") == ["accuracy"]
    fast = compute_epoch_metrics("binary", y, p.astype(np.float32), ["accuracy"])
    assert fast["accuracy"] == skm.accuracy_score(y, p >= 0.5)
    y, proba = multiclass_data()
    fast = compute_epoch_metrics("multiclass", y, proba, epoch_metrics("multiclass"))
    assert fast == {"accuracy": skm.accuracy_score(y, proba.argmax(1))}
    y, pred = regression_data()
    fast = compute_epoch_metrics("regression", y, pred, epoch_metrics("regression") + ["mae"])
    assert fast == pytest.approx({
        "rmse": skm.root_mean_squared_error(y, pred),
        "r2": skm.r2_score(y, pred),
        "mae": skm.mean_absolute_error(y, pred),
    }, rel=1e-12)


def test_epoch_r2_follows_sklearn_on_a_constant_target():
    y = np.full(5, 2.0)
    assert compute_epoch_metrics("regression", y, y, ["r2"])["r2"] == skm.r2_score(y, y)
    assert compute_epoch_metrics("regression", y, y + 1, ["r2"])["r2"] == skm.r2_score(y, y + 1)
    assert math.isnan(compute_epoch_metrics("regression", [1.0], [1.0], ["r2"])["r2"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("val_loss", False), ("loss", False), ("ema_val_rmse", False), ("val_max_error", False),
     ("log_loss", False), ("val_accuracy", True), ("ema_val_f1_macro", True), ("r2", True)],
)
def test_higher_is_better_knows_losses_and_errors(name, expected):
    assert higher_is_better(name) is expected
