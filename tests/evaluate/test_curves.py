"""curves.json: the numbers behind the evaluation plots, with sklearn as the oracle."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from dlpipe.evaluate.curves import MAX_POINTS, MAX_SCATTER, WORST_N, curves, decimate


def _binary(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)  # informative, with overlap
    return y, p


def test_binary_roc_and_pr_areas_equal_sklearns_and_every_point_lies_on_its_curve():
    y, p = _binary()
    data = curves("binary", y, p, classes=["no", "yes"])
    (roc,) = data["roc"]
    assert roc["label"] == "yes"
    assert roc["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p)
    full = set(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert set(zip(roc["fpr"], roc["tpr"], strict=True)) <= full
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and roc["fpr"][-1] == roc["tpr"][-1] == 1
    (pr,) = data["pr"]
    assert pr["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert pr["prevalence"] == pytest.approx(y.mean())
    precision, recall, _ = skm.precision_recall_curve(y, p)
    assert set(zip(pr["recall"], pr["precision"], strict=True)) <= set(
        zip(recall.tolist(), precision.tolist(), strict=True))


def test_long_curves_are_decimated_keeping_both_ends():
    y, p = _binary(n=5000, seed=1)
    (roc,) = curves("binary", y, p)["roc"]
    assert len(roc["fpr"]) <= MAX_POINTS
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert len(fpr) > MAX_POINTS  # the oracle curve really was longer
    assert [roc["fpr"][0], roc["fpr"][-1]] == [fpr[0], fpr[-1]]
    assert decimate(5).tolist() == [0, 1, 2, 3, 4]
    kept = decimate(1000, 10)
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 10


def test_multiclass_has_one_vs_rest_curves_per_class_equal_to_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    data = curves("multiclass", y, proba, classes=["a", "b", "c"])
    assert [c["label"] for c in data["roc"]] == ["a", "b", "c"]
    for k, curve in enumerate(data["roc"]):
        assert curve["auc"] == pytest.approx(skm.roc_auc_score(y == k, proba[:, k]), abs=1e-12)
    for k, curve in enumerate(data["pr"]):
        assert curve["average_precision"] == pytest.approx(
            skm.average_precision_score(y == k, proba[:, k]), abs=1e-12)
    y_pred = proba.argmax(1)
    assert data["confusion"]["counts"] == skm.confusion_matrix(y, y_pred).tolist()
    normalized = skm.confusion_matrix(y, y_pred, normalize="true")
    np.testing.assert_allclose(data["confusion"]["normalized"], normalized, atol=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(y, y_pred)
    assert [c["support"] for c in data["per_class"]] == s.tolist()
    np.testing.assert_allclose([c["f1"] for c in data["per_class"]], f, atol=1e-12)
    np.testing.assert_allclose([c["precision"] for c in data["per_class"]], p, atol=1e-12)
    np.testing.assert_allclose([c["recall"] for c in data["per_class"]], r, atol=1e-12)
    # Top-label reliability: confidence against whether the top label was right.
    true, pred = calibration_curve(y_pred == y, proba.max(1), n_bins=10)
    np.testing.assert_allclose(data["calibration"]["prob_true"], true, atol=1e-12)
    np.testing.assert_allclose(data["calibration"]["prob_pred"], pred, atol=1e-12)
    assert data["calibration"]["kind"] == "top label"


def test_binary_calibration_and_confusion_use_the_given_threshold():
    y, p = _binary(seed=3)
    data = curves("binary", y, p, threshold=0.7)
    true, pred = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(data["calibration"]["prob_true"], true, atol=1e-12)
    np.testing.assert_allclose(data["calibration"]["prob_pred"], pred, atol=1e-12)
    assert sum(data["calibration"]["counts"]) == len(y)
    assert len(data["calibration"]["counts"]) == len(true)
    assert data["confusion"]["counts"] == skm.confusion_matrix(y, p >= 0.7).tolist()


def test_worst_examples_are_the_rows_with_the_largest_loss_with_their_raw_values():
    y, p = _binary(n=50, seed=4)
    frame = pd.DataFrame({"age": np.arange(50) * 1.5, "city": [f"c{i}" for i in range(50)]})
    frame.loc[3, "age"] = np.nan
    worst = curves("binary", y, p, classes=[0, 1], frame=frame)["worst"]
    p_true = np.where(y == 1, p, 1 - p)
    losses = -np.log(np.clip(p_true, 1e-12, 1))
    expected = np.argsort(-losses, kind="stable")[:WORST_N]
    assert [r["row"] for r in worst["rows"]] == expected.tolist()
    first = worst["rows"][0]
    i = first["row"]
    assert first["values"] == {"age": None if i == 3 else i * 1.5, "city": f"c{i}"}
    assert first["true"] == str(y[i]) and first["probability_true"] == pytest.approx(p_true[i])
    assert worst["columns"] == ["age", "city"]


def test_regression_points_are_a_capped_sample_and_worst_rows_have_the_largest_error():
    rng = np.random.default_rng(5)
    y = rng.normal(size=MAX_SCATTER + 500)
    pred = y + rng.normal(scale=0.1, size=len(y))
    data = curves("regression", y, pred)
    reg = data["regression"]
    assert reg["n_total"] == len(y) and reg["n_shown"] == len(reg["true"]) == MAX_SCATTER
    pairs = dict(zip(y.tolist(), pred.tolist(), strict=True))
    assert all(pairs[t] == p for t, p in zip(reg["true"], reg["predicted"], strict=True))
    assert reg["residual_quantiles"]["q50"] == pytest.approx(np.median(y - pred))
    errors = [r["loss"] for r in data["worst"]["rows"]]
    assert errors == sorted(errors, reverse=True) and errors[0] == pytest.approx(
        np.abs(y - pred).max())
    assert "roc" not in data and "confusion" not in data


def test_a_class_absent_from_the_split_has_no_curve_instead_of_failing():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    data = curves("multiclass", y, proba, classes=["a", "b", "c"])
    assert [c["label"] for c in data["roc"]] == ["a", "b"]
    assert data["per_class"][2]["support"] == 0
