"""The features stage on a run directory: fit on train only, features.json, load."""

import json

import numpy as np
import pandas as pd
import pytest

from dlpipe import features, runs
from dlpipe.config import load_config
from dlpipe.errors import RunDirError
from dlpipe.runs import RunDir

SCHEMA = {
    "target": "label",
    "task": "binary",
    "classes": ["no", "yes"],
    "columns": [
        {"name": "age", "kind": "numeric", "dtype": "float64"},
        {"name": "color", "kind": "categorical", "dtype": "object"},
        {"name": "smoker", "kind": "binary", "dtype": "bool"},
    ],
    "missing": {"age": "median"},
    "fill_value": None,
    "indicator": True,
    "clip": {"age": [18.0, 70.0]},
    "dropped_columns": {"listed": [], "ignored": [], "constant": []},
    "time_column": None, "group_column": None, "split_column": None,
}


def split(seed, n):
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 15, n)
    age[rng.uniform(size=n) < 0.2] = np.nan
    return pd.DataFrame({
        "age": age,
        "color": rng.choice(["red", "green", "blue"], n),
        "smoker": rng.uniform(size=n) < 0.3,
        "label": rng.choice(["no", "yes"], n),
    })


def make_run(path, schema=SCHEMA, *, val_seed=1, test_seed=2):
    rundir = RunDir.create(path)
    rundir.write_json(runs.SCHEMA, schema)
    rundir.write_split("train", split(0, 80))
    rundir.write_split("val", split(val_seed, 20))
    rundir.write_split("test", split(test_seed, 20))
    return rundir


def config(**section):
    return load_config({"data": {"target": "label"}, "features": section})


def test_run_writes_features_json_that_load_reads_back(tmp_path):
    rundir = make_run(tmp_path / "run")
    fitted = features.run(config(categorical="embedding"), rundir)
    document = json.loads(rundir.file(runs.FEATURES).read_text())
    assert document["version"] == features.FORMAT_VERSION
    assert document["task"] == "binary"
    assert set(document) == {"version", "task", "inputs", "text", "images", "order", "layout",
                             "target"}
    n_numeric = fitted.inputs.n_numeric_
    assert document["layout"] == [{"name": "tabular", "kind": "tabular", "start": 0,
                                   "width": n_numeric + 1, "n_numeric": n_numeric,
                                   "cardinalities": [4]}]
    loaded = features.load(RunDir(rundir.path))  # a fresh RunDir: read from disk
    for name in runs.SPLITS:
        x, y = fitted.arrays(rundir.read_split(name))
        x2, y2 = loaded.arrays(rundir.read_split(name))
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(y2, y)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert loaded.inputs.cardinalities_ == [4]


def test_fit_sees_the_train_split_only(tmp_path):
    one = make_run(tmp_path / "one")
    other = make_run(tmp_path / "other", val_seed=11, test_seed=12)
    features.run(config(), one)
    features.run(config(), other)
    assert one.file(runs.FEATURES).read_bytes() == other.file(runs.FEATURES).read_bytes()
    # And it is the fit of the train split itself.
    train = one.read_split("train")
    direct = features.TabularFeatures(
        SCHEMA["columns"], missing=SCHEMA["missing"], indicator=True, clip=SCHEMA["clip"]
    ).fit(train)
    np.testing.assert_array_equal(features.load(one).inputs.transform(train),
                                  direct.transform(train))


def test_train_statistics_come_from_train_rows(tmp_path):
    rundir = make_run(tmp_path / "run")
    fitted = features.run(config(numeric="none"), rundir)
    ages = rundir.read_split("train")["age"]
    numeric = fitted.inputs.parts_["numeric"]
    assert numeric.fill_ == [pytest.approx(float(np.nanmedian(ages)))]


def test_arrays_has_no_target_when_the_column_is_absent(tmp_path):
    rundir = make_run(tmp_path / "run")
    fitted = features.run(config(), rundir)
    x, y = fitted.arrays(rundir.read_split("test").drop(columns="label"))
    assert y is None
    assert x.shape == (20, len(fitted.inputs.feature_names_))


def test_regression_targets_are_standardized_float32(tmp_path):
    schema = {**SCHEMA, "task": "regression", "classes": [], "target": "price"}
    rundir = RunDir.create(tmp_path / "run")
    rundir.write_json(runs.SCHEMA, schema)
    train = split(0, 50).drop(columns="label").assign(price=np.linspace(10, 20, 50))
    rundir.write_split("train", train)
    fitted = features.run(config(), rundir)
    _, y = features.load(rundir).arrays(train)
    assert y.dtype == np.float32
    assert abs(float(y.mean())) < 1e-6  # standardized on train: mean 0 up to float32 rounding
    np.testing.assert_allclose(fitted.target.inverse_transform(y), train["price"], rtol=1e-6)


def test_load_refuses_another_format_version(tmp_path):
    rundir = make_run(tmp_path / "run")
    document = features.run(config(), rundir).to_json()
    rundir.write_json(runs.FEATURES, {**document, "version": 99})
    with pytest.raises(RunDirError, match=r"features\.json has format version 99"):
        features.load(rundir)


def test_load_without_features_json_says_which_stage_to_run(tmp_path):
    rundir = make_run(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"run `dlpipe features"):
        features.load(rundir)
