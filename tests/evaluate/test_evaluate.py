"""The evaluate stage: metrics.json keys per task, the threshold chosen on val, k-fold CV."""

import numpy as np
import pytest
from sklearn import metrics as skm

import dlpipe
from dlpipe.evaluate import scores_of
from dlpipe.features import load as load_features
from dlpipe.models.spec import load_network
from helpers import minimal_config

BINARY_KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss",
               "confusion_matrix", "threshold"}
MULTICLASS_KEYS = {"accuracy", "precision_macro", "recall_macro", "f1_macro",
                   "precision_weighted", "recall_weighted", "f1_weighted", "top_k_accuracy",
                   "top_k", "log_loss", "confusion_matrix"}
REGRESSION_KEYS = {"mse", "rmse", "mae", "r2", "mape"}


@pytest.mark.parametrize(("source", "keys"), [
    ({"builtin": "breast_cancer"}, BINARY_KEYS),
    ({"builtin": "iris"}, MULTICLASS_KEYS),
    ({"builtin": "make_regression", "params": {"n_samples": 300, "n_features": 5}},
     REGRESSION_KEYS),
])
def test_metrics_json_has_the_documented_keys_for_each_task(source, keys, tmp_path):
    cfg = minimal_config(data={"source": source})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    assert set(result.metrics) == {"val", "test"}
    assert set(result.metrics["test"]) == keys


def test_test_metrics_equal_sklearn_on_the_saved_predictions(tmp_path):
    result = dlpipe.run(minimal_config(data={"source": {"builtin": "breast_cancer"}}),
                        run_dir=tmp_path / "run")
    rundir = result.rundir
    y, p = scores_of(load_network(rundir), load_features(rundir), rundir.read_split("test"))
    test = result.metrics["test"]
    assert test["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert test["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5), abs=1e-12)
    assert test["confusion_matrix"] == skm.confusion_matrix(y, p >= 0.5).tolist()


def test_an_optimized_threshold_is_chosen_on_validation_and_reused_on_test(tmp_path):
    cfg = minimal_config(data={"source": {"builtin": "breast_cancer"}},
                         evaluate={"threshold": "optimize"})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    val, test = result.metrics["val"], result.metrics["test"]
    assert val["threshold"] == test["threshold"]
    rundir = result.rundir
    y, p = scores_of(load_network(rundir), load_features(rundir), rundir.read_split("val"))
    best = val["f1"]
    for threshold in np.linspace(0.05, 0.95, 19):  # no fixed threshold beats it on val
        assert skm.f1_score(y, p >= threshold) <= best + 1e-12


def test_k_fold_reports_mean_and_std_over_folds_without_touching_test(tmp_path):
    cfg = minimal_config(evaluate={"cv_folds": 3},
                         train={"epochs": 20, "progress": "never",
                                "optimizer": {"name": "adam", "lr": 1e-2}})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    cv = result.metrics["cv"]
    assert cv["folds"] == 3
    test_rows = len(result.rundir.read_split("test"))
    assert cv["rows"] == 400 - test_rows
    accuracy = cv["metrics"]["accuracy"]
    assert len(accuracy["values"]) == 3
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["values"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["values"]))
    assert accuracy["mean"] > 0.7
