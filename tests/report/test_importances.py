"""Parameter importances of a tuning run: Optuna's fANOVA when installed, else a random forest,
and the report says which."""

import sys

import numpy as np
import pandas as pd
import pytest

from dlpipe.report._evaluation import param_importances


def _trials(n=24, seed=0):
    """lr alone decides the objective; hidden and a noise column do not matter."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -1, n)
    frame = pd.DataFrame({
        "number": range(n), "state": ["PRUNED" if i == 3 else "COMPLETE" for i in range(n)],
        "value": (np.log10(lr) + 2.5) ** 2, "train.optimizer.lr": lr,
        "model.hidden": rng.choice(["[8]", "[16]"], n), "noise": rng.uniform(0, 1, n)})
    return frame


PARAMS = ["train.optimizer.lr", "model.hidden", "noise"]
SPACE = {"train.optimizer.lr": {"float": [1e-4, 0.1], "log": True},
         "model.hidden": {"choice": [[8], [16]]}, "noise": {"float": [0.0, 1.0]}}


def test_fanova_is_used_when_optuna_is_installed_and_finds_the_parameter_that_matters():
    pytest.importorskip("optuna")
    trials = _trials()
    found, method = param_importances(trials, PARAMS, "value", trials["state"], space=SPACE)
    assert method == "fanova"
    assert set(found) == {"train.optimizer.lr", "model.hidden", "noise"}
    assert found["train.optimizer.lr"] > 0.7
    assert max(found["model.hidden"], found["noise"]) < 0.2
    assert sum(found.values()) == pytest.approx(1.0)


def test_fanova_works_from_the_trials_alone_and_the_forest_is_the_fallback(monkeypatch):
    pytest.importorskip("optuna")
    trials = _trials()
    inferred, method = param_importances(trials, PARAMS, "value", trials["state"])
    assert method == "fanova" and inferred["train.optimizer.lr"] > 0.7
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if Optuna were not installed
    monkeypatch.setitem(sys.modules, "optuna.importance", None)
    forest, method = param_importances(trials, PARAMS, "value", trials["state"], space=SPACE)
    assert method == "forest" and forest["train.optimizer.lr"] > 0.7
    with pytest.raises(ImportError):
        param_importances(trials, PARAMS, "value", trials["state"], method="fanova")


def test_a_space_optuna_cannot_describe_falls_back_to_the_forest():
    pytest.importorskip("optuna")
    trials = _trials()
    wrong = {**SPACE, "train.optimizer.lr": {"float": [0.5, 1.0]}}  # values outside the range
    found, method = param_importances(trials, PARAMS, "value", trials["state"], space=wrong)
    assert method == "forest" and found["train.optimizer.lr"] > 0.7


def test_too_few_complete_trials_give_no_importances():
    trials = _trials(n=4)  # one of them pruned: 3 complete
    assert param_importances(trials, PARAMS, "value", trials["state"])[0] == {}


def test_the_tuning_section_names_the_method_used(tmp_path):
    pytest.importorskip("optuna")
    from dlpipe import runs
    from dlpipe.report._evaluation import tuning
    from dlpipe.report._sections import Plots
    from dlpipe.runs import RunDir

    rundir = RunDir(tmp_path)
    (tmp_path / "tune").mkdir()
    _trials().to_csv(rundir.file(runs.TUNE_TRIALS), index=False)
    figs = Plots()
    html = "".join(tuning(rundir, figs))
    assert "fANOVA importances (Optuna&#x27;s FanovaImportanceEvaluator)" in html
    assert "tune_importances" in figs.png
