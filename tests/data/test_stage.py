import json

import numpy as np
import pandas as pd
import pytest

from dlpipe import runs
from dlpipe.config import load_config
from dlpipe.data import data_hash, run
from dlpipe.errors import ConfigError, DataError
from dlpipe.runs import RunDir

SCHEMA_KEYS = {"target", "task", "classes", "columns", "missing", "fill_value", "indicator",
               "clip", "dropped_columns", "time_column", "group_column", "split_column"}
PROFILE_KEYS = {"source", "rows_read", "columns_read", "duplicates_dropped",
                "missing_target_dropped", "missing", "outliers", "constant_columns_dropped",
                "split", "leakage", "imbalance", "rows", "data_hash"}


def labelled_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.normal(40, 10, size=n),
        "color": rng.choice(["red", "green", "blue"], size=n),
        "member": rng.choice([True, False], size=n),
        "label": rng.integers(0, 2, size=n),
    })


def config(**data):
    return load_config({"seed": 3, "data": {"target": "label", **data}})


def test_run_writes_the_three_splits_the_schema_and_the_profile(tmp_path):
    rundir = RunDir.create(tmp_path / "run")
    result = run(config(), rundir, frame=labelled_frame())
    for name in runs.SPLITS:
        written = pd.read_parquet(rundir.split_file(name))
        pd.testing.assert_frame_equal(written, result.split(name))
    schema = json.loads(rundir.file(runs.SCHEMA).read_text())
    profile = json.loads(rundir.file(runs.PROFILE).read_text())
    assert set(schema) == SCHEMA_KEYS
    assert set(profile) == PROFILE_KEYS
    assert schema == result.schema and profile == result.profile
    assert schema["task"] == "binary" and schema["classes"] == [0, 1]
    assert [(c["name"], c["kind"]) for c in schema["columns"]] == [
        ("age", "numeric"), ("color", "categorical"), ("member", "binary")]
    assert profile["data_hash"] == result.data_hash == data_hash(labelled_frame())
    assert profile["split"]["rows"] == {"train": 210, "val": 45, "test": 45}


def test_run_reads_a_builtin_source_from_the_config(tmp_path):
    cfg = load_config({"data": {"source": {"builtin": "wine"}}})
    result = run(cfg, RunDir.create(tmp_path / "run"))
    assert result.schema["task"] == "multiclass"
    assert result.profile["source"] == {"kind": "builtin", "name": "wine", "params": {}}
    assert sum(result.profile["rows"].values()) == 178


def test_run_reads_a_csv_file_named_in_the_config(tmp_path):
    labelled_frame().to_csv(tmp_path / "table.csv", index=False)
    result = run(config(source={"path": str(tmp_path / "table.csv")}),
                 RunDir.create(tmp_path / "run"))
    assert result.profile["source"]["format"] == "csv"
    assert result.profile["rows_read"] == 300


def test_an_unknown_target_suggests_the_closest_column(tmp_path):
    with pytest.raises(DataError, match=r"data\.target: column 'labels' is not in the data\. "
                                        r"Did you mean 'label'\? Known: age, color, label"):
        run(config(target="labels"), RunDir.create(tmp_path / "run"), frame=labelled_frame())


def test_an_unknown_dropped_column_suggests_the_closest_one(tmp_path):
    with pytest.raises(DataError, match=r"data\.drop_columns: column 'colour' is not in the "
                                        r"data\. Did you mean 'color'\?"):
        run(config(drop_columns=["colour"]), RunDir.create(tmp_path / "run"),
            frame=labelled_frame())


def test_an_unknown_column_kind_override_suggests_the_closest_one(tmp_path):
    with pytest.raises(DataError, match=r"data\.columns: column 'ag' is not in the data\. "
                                        r"Did you mean 'age'\?"):
        run(config(columns={"ag": "numeric"}), RunDir.create(tmp_path / "run"),
            frame=labelled_frame())


def test_listed_and_ignored_columns_are_dropped_and_recorded(tmp_path):
    result = run(config(drop_columns=["color"], columns={"member": "ignore"}),
                 RunDir.create(tmp_path / "run"), frame=labelled_frame())
    assert list(result.train.columns) == ["age", "label"]
    assert result.schema["dropped_columns"] == {"listed": ["color"], "ignored": ["member"],
                                                "constant": []}


def test_no_source_and_no_frame_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source: no data"):
        run(config(), RunDir.create(tmp_path / "run"))


def test_nothing_is_written_when_a_check_fails(tmp_path):
    rundir = RunDir.create(tmp_path / "run")
    # The leakage guard runs after the split, late in the stage: still nothing on disk.
    with pytest.raises(DataError, match=r"data\.leakage: .*identical input columns"):
        run(config(), rundir, frame=repeated_inputs())
    assert not (rundir.path / "data").exists()
    assert not rundir.has(runs.SCHEMA) and not rundir.has(runs.PROFILE)


def test_the_same_config_and_seed_give_identical_splits_and_profile(tmp_path):
    first = run(config(), RunDir.create(tmp_path / "a"), frame=labelled_frame())
    again = run(config(), RunDir.create(tmp_path / "b"), frame=labelled_frame())
    other = run(config(split={"seed": 99}), RunDir.create(tmp_path / "c"), frame=labelled_frame())
    assert first.profile == again.profile
    pd.testing.assert_frame_equal(first.test, again.test)
    assert not first.test.equals(other.test)


# -- leakage guard --------------------------------------------------------------------------


def repeated_inputs(n=200):
    """20 distinct input rows, each 10 times with varying targets: not exact duplicates."""
    return pd.DataFrame({"x": np.repeat(np.arange(20.0), n // 20), "label": np.arange(n) % 2})


def test_duplicate_input_rows_across_splits_fail_and_name_the_switch(tmp_path):
    with pytest.raises(DataError, match=r"data\.leakage: \d+ rows have identical input columns to "
                                        r"a row in another split .*allow_duplicates: true"):
        run(config(), RunDir.create(tmp_path / "run"), frame=repeated_inputs())


def test_allowed_duplicate_inputs_are_recorded_in_the_profile(tmp_path):
    result = run(config(leakage={"allow_duplicates": True}), RunDir.create(tmp_path / "run"),
                 frame=repeated_inputs())
    found = result.profile["leakage"]["duplicates"]
    rows = pd.concat([result.train.assign(split="train"), result.val.assign(split="val"),
                      result.test.assign(split="test")])
    spread = rows.groupby("x")["split"].transform("nunique")
    assert found["count"] == int((spread > 1).sum()) > 0
    assert found["allowed"] is True
    assert all(len(example) >= 2 for example in found["examples"])


def grouped_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "patient": rng.integers(0, 30, size=n),
                         "day": rng.permutation(n), "label": rng.integers(0, 2, size=n)})


def test_a_group_in_two_splits_fails_unless_split_by_group(tmp_path):
    with pytest.raises(DataError, match=r"values of group column 'patient' are in more than one "
                                        r"split .*allow_group_overlap: true"):
        run(config(split={"method": "random", "group_column": "patient"}),
            RunDir.create(tmp_path / "random"), frame=grouped_frame())
    result = run(config(split={"method": "group", "group_column": "patient"}),
                 RunDir.create(tmp_path / "grouped"), frame=grouped_frame())
    assert result.profile["leakage"]["group_overlap"]["count"] == 0
    assert "patient" in result.train.columns
    assert "patient" not in {c["name"] for c in result.schema["columns"]}


def test_held_out_rows_earlier_than_training_fail_unless_split_by_time(tmp_path):
    with pytest.raises(DataError, match=r"validation/test rows .* are earlier than the latest "
                                        r"training row .*allow_time_overlap: true"):
        run(config(split={"method": "random", "time_column": "day"}),
            RunDir.create(tmp_path / "random"), frame=grouped_frame())
    result = run(config(split={"method": "time", "time_column": "day"}),
                 RunDir.create(tmp_path / "timed"), frame=grouped_frame())
    assert result.profile["leakage"]["time_overlap"]["count"] == 0
    assert result.train["day"].max() < result.val["day"].min()
