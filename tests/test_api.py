"""The Python API: dlpipe.run with data from Python; predict on every input form."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

import dlpipe
from helpers import minimal_config


def _wine_frame():
    data = load_wine(as_frame=True)
    frame = data.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = frame["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return frame


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    cfg = minimal_config(data={"target": "cultivar", "split": {"val": 0.2, "test": 0.2}})
    cfg["train"].update(epochs=30, optimizer={"name": "adam", "lr": 1e-2})
    return dlpipe.run(cfg, data=_wine_frame(), run_dir=tmp_path_factory.mktemp("w") / "run")


def test_a_dataframe_from_python_trains_with_string_labels(wine_run):
    assert wine_run.metrics["test"]["accuracy"] >= 0.9
    schema = json.loads((wine_run.path / "schema.json").read_text())
    assert schema["classes"] == ["barbera", "barolo", "grignolino"]
    assert len(wine_run.history) == 30 and "val_accuracy" in wine_run.history[-1]


def test_predict_takes_a_dataframe_an_array_and_a_list_of_dicts_alike(wine_run):
    predictor = dlpipe.load(wine_run.path)
    rows = _wine_frame().drop(columns="cultivar").iloc[:10]
    from_frame = predictor.predict(rows)
    from_array = predictor.predict(rows.to_numpy())
    from_dicts = predictor.predict(rows.to_dict(orient="records"))
    assert set(from_frame.labels) <= {"barbera", "barolo", "grignolino"}
    for other in (from_array, from_dicts):
        assert (other.labels == from_frame.labels).all()
        np.testing.assert_array_equal(other.probabilities, from_frame.probabilities)
    np.testing.assert_allclose(from_frame.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert predictor.classes == ["barbera", "barolo", "grignolino"]


def test_predict_ignores_the_target_column_when_present(wine_run):
    predictor = dlpipe.load(wine_run.path)
    rows = _wine_frame().iloc[:5]
    assert (predictor.predict(rows).labels ==
            predictor.predict(rows.drop(columns="cultivar")).labels).all()


def test_numpy_arrays_from_python_train_a_regression(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    y = x @ np.array([1.5, -2.0, 0.0, 0.5]) + 0.05 * rng.normal(size=500)
    cfg = minimal_config(data={"task": "regression"})
    cfg["train"].update(epochs=40, optimizer={"name": "adam", "lr": 1e-2})
    result = dlpipe.run(cfg, data=(x, y), run_dir=tmp_path / "run")
    assert result.metrics["test"]["r2"] > 0.95
    prediction = dlpipe.load(result.path).predict(x[:5])
    assert prediction.probabilities is None
    np.testing.assert_allclose(prediction.labels, y[:5], atol=0.5)


def test_prediction_frame_has_one_probability_column_per_class(wine_run):
    frame = dlpipe.load(wine_run.path).predict(_wine_frame().iloc[:3]).to_frame()
    assert list(frame.columns) == ["prediction", "probability_barbera", "probability_barolo",
                                   "probability_grignolino"]
    assert isinstance(frame, pd.DataFrame)
