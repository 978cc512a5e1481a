import numpy as np
import pandas as pd
import pytest

from dlpipe.config import load_config
from dlpipe.data import run
from dlpipe.errors import DataError
from dlpipe.runs import RunDir

FOLDS = ["train"] * 70 + ["val"] * 15 + ["test"] * 15  # rows 0-69, 70-84, 85-99


def run_data(tmp_path, frame, **data):
    cfg = load_config({"data": {"target": "y", **data}})
    return run(cfg, RunDir.create(tmp_path / "run"), frame=frame)


def numeric_frame(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n),
                         "y": rng.normal(size=n)})


def by_column():
    return {"split": {"method": "column", "column": "fold"}}


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path):
    frame = numeric_frame(200)
    frame = pd.concat([frame, frame.iloc[[3, 50, 50, 120, 199]]], ignore_index=True)
    result = run_data(tmp_path, frame)
    assert result.profile["duplicates_dropped"] == 5
    assert sum(result.profile["rows"].values()) == 200
    assert result.profile["rows_read"] == 205


def test_missing_target_values_are_named_by_their_rows(tmp_path):
    frame = numeric_frame(1000)
    frame.loc[[17, 242], "y"] = np.nan
    frame.loc[901, "y"] = np.inf
    with pytest.raises(DataError, match=r"data\.target: 3 missing or non-finite values in column "
                                        r"'y' \(rows 17, 242, 901\); set data\.clean\."
                                        r"drop_missing_target: true"):
        run_data(tmp_path, frame)


def test_drop_missing_target_drops_and_counts_those_rows(tmp_path):
    frame = numeric_frame(1000)
    frame.loc[[17, 242], "y"] = np.nan
    frame.loc[901, "y"] = -np.inf
    result = run_data(tmp_path, frame, clean={"drop_missing_target": True})
    assert result.profile["missing_target_dropped"] == 3
    assert sum(result.profile["rows"].values()) == 997
    kept = pd.concat([result.train, result.val, result.test])
    assert np.isfinite(kept["y"]).all()


def test_a_target_beyond_float32_names_its_column_row_and_value(tmp_path):
    frame = numeric_frame(1000)
    frame.loc[505, "y"] = 1e300  # finite in float64, inf in the model's float32 targets
    with pytest.raises(DataError, match=r"data\.target: column 'y', row 505: 1e\+300 is beyond "
                                        r"float32's range \(±3\.4e38\).*drop_missing_target"):
        run_data(tmp_path, frame)
    assert not list((tmp_path / "run").rglob("*.parquet"))


def test_drop_missing_target_drops_targets_beyond_float32_too(tmp_path):
    frame = numeric_frame(1000)
    frame.loc[[17, 505], "y"] = [-1e39, 1e300]
    result = run_data(tmp_path, frame, clean={"drop_missing_target": True})
    assert result.profile["missing_target_dropped"] == 2
    assert sum(result.profile["rows"].values()) == 998


def test_a_regression_target_read_as_text_is_checked_for_float32_too(tmp_path):
    frame = numeric_frame(200).astype({"y": str})
    frame.loc[42, "y"] = "1e39"
    with pytest.raises(DataError, match=r"column 'y', row 42: 1e\+39 is beyond float32's range"):
        run_data(tmp_path, frame, task="regression")


def test_inputs_beyond_float32_become_missing_values_like_inf_named_and_counted(tmp_path):
    frame = numeric_frame(1000)
    frame["fold"] = ["train"] * 700 + ["val"] * 150 + ["test"] * 150
    frame.loc[[3, 950], "x"] = [1e39, -1e300]  # a train and a test row
    frame.loc[800, "x"] = np.inf
    with pytest.warns(UserWarning, match=r"column 'x', row 3: 1e\+39 is beyond float32's range "
                                         r"\(±3\.4e38\) \(2 such values in all\); treated as "
                                         r"a missing value"):
        result = run_data(tmp_path, frame, **by_column())
    counts = result.profile["missing"]["columns"]["x"]
    assert counts["beyond_float32_as_missing"] == 2
    assert counts["infinite_as_missing"] == 1
    assert counts["counts"] == {"train": 1, "val": 1, "test": 1}
    assert "beyond_float32_as_missing" not in result.profile["missing"]["columns"]["z"]
    kept = pd.concat([result.train, result.val, result.test])["x"]
    assert kept.isna().sum() == 3 and np.abs(kept).max() < 10


def test_a_string_in_a_numeric_column_names_the_row_and_the_value(tmp_path):
    frame = numeric_frame()
    frame["age"] = [str(20 + i) for i in range(100)]
    frame.loc[12, "age"] = "abc"
    with pytest.raises(DataError, match=r"column 'age' is numeric \(set in data\."
                                        r"columns\) but row 12 holds 'abc'"):
        run_data(tmp_path, frame, columns={"age": "numeric"})


def test_a_mostly_numeric_text_column_with_a_stray_marker_is_refused(tmp_path):
    frame = numeric_frame()
    frame["age"] = [str(20 + i) for i in range(100)]
    frame.loc[40, "age"] = "?"
    with pytest.raises(DataError, match=r"column 'age' is numeric \(most values are numbers\) "
                                        r"but row 40 holds '\?'.*set data\.columns\.age: "
                                        r"categorical"):
        run_data(tmp_path, frame)


def test_column_kinds_are_inferred_and_text_numbers_become_numeric(tmp_path):
    frame = numeric_frame()
    frame["flag"] = [True, False] * 50
    frame["two"] = [3, 7] * 50
    frame["color"] = ["red", "green", "blue", "cyan"] * 25
    frame["amount"] = [f"{i}.5" for i in range(100)]
    frame["code"] = list(range(100))
    result = run_data(tmp_path, frame, columns={"code": "categorical"})
    columns = {c["name"]: (c["kind"], c["dtype"]) for c in result.schema["columns"]}
    assert columns["flag"][0] == "binary"
    assert columns["two"][0] == "binary"
    assert columns["color"][0] == "categorical"
    assert columns["amount"] == ("numeric", "float64")
    assert columns["code"][0] == "categorical"
    assert columns["x"] == ("numeric", "float64")
    amounts = pd.concat([result.train, result.val, result.test])["amount"]
    assert sorted(amounts) == [i + 0.5 for i in range(100)]


@pytest.mark.parametrize(
    "target, task, classes",
    [
        (np.linspace(0.5, 10.5, 300), "regression", []),
        (np.arange(300) % 3, "multiclass", [0, 1, 2]),
        (np.where(np.arange(300) % 2, "yes", "no"), "binary", ["no", "yes"]),
        (np.arange(300) % 100, "regression", []),  # 100 distinct integers: a quantity
        ((np.arange(300) % 2).astype(float), "binary", [0, 1]),
    ],
)
def test_the_task_is_inferred_from_the_target(tmp_path, target, task, classes):
    frame = numeric_frame(300)
    frame["y"] = target
    result = run_data(tmp_path, frame)
    assert (result.schema["task"], result.schema["classes"]) == (task, classes)


def test_a_binary_task_with_three_classes_is_refused(tmp_path):
    frame = numeric_frame(300)
    frame["y"] = np.arange(300) % 3
    with pytest.raises(DataError, match=r"data\.task: 'binary' needs exactly 2 classes, but "
                                        r"column 'y' has 3 \(0, 1, 2\)"):
        run_data(tmp_path, frame, task="binary")


def test_outlier_bounds_are_fitted_on_the_training_split_only(tmp_path):
    frame = numeric_frame()
    frame["fold"] = FOLDS
    calm = run_data(tmp_path / "calm", frame, clean={"outliers": {}}, **by_column())
    frame.loc[90, "x"] = 1e6  # a test row
    wild = run_data(tmp_path / "wild", frame, clean={"outliers": {}}, **by_column())
    q1, q3 = np.quantile(frame["x"].iloc[:70], [0.25, 0.75])
    expected = [q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)]
    assert wild.schema["clip"]["x"] == pytest.approx(expected, rel=1e-12)
    assert wild.schema["clip"] == calm.schema["clip"]
    outside = wild.profile["outliers"]["columns"]["x"]["outside"]
    assert outside["test"] == calm.profile["outliers"]["columns"]["x"]["outside"]["test"] + 1


def test_outlier_drop_removes_only_training_rows(tmp_path):
    frame = numeric_frame()
    frame["fold"] = FOLDS
    frame.loc[[3, 5], "x"] = [1e3, -1e3]  # train rows
    frame.loc[90, "x"] = 1e6  # a test row: kept, evaluation stays honest
    result = run_data(tmp_path, frame, clean={"outliers": {"method": "zscore",
                                                           "action": "drop"}}, **by_column())
    train = frame.iloc[:70]
    mean, std = train[["x", "z"]].mean(), train[["x", "z"]].std(ddof=0)
    outside = ((train[["x", "z"]] - mean).abs() > 3 * std).any(axis=1)
    assert result.profile["outliers"]["train_rows_dropped"] == int(outside.sum()) >= 2
    assert len(result.train) == 70 - int(outside.sum())
    assert (len(result.val), len(result.test)) == (15, 15)
    assert 1e6 in result.test["x"].tolist()
    assert result.schema["clip"] == {}


def test_a_constant_column_is_dropped_with_a_warning(tmp_path):
    frame = numeric_frame()
    frame["fold"] = FOLDS
    frame["c"] = 1.0
    frame.loc[95, "c"] = 2.0  # not constant overall, but constant on train
    with pytest.warns(UserWarning, match=r"constant on the training split: c"):
        result = run_data(tmp_path, frame, **by_column())
    assert result.profile["constant_columns_dropped"] == ["c"]
    assert result.schema["dropped_columns"]["constant"] == ["c"]
    assert "c" not in result.test.columns
    assert "c" not in {col["name"] for col in result.schema["columns"]}


def test_the_drop_strategy_removes_rows_with_a_missing_value_from_every_split(tmp_path):
    frame = numeric_frame()
    frame["fold"] = FOLDS
    frame.loc[[1, 2, 80, 95, 96, 97], "x"] = np.nan
    frame.loc[[4, 90], "z"] = np.nan
    result = run_data(tmp_path, frame, clean={"missing": {"columns": {"x": "drop"}}},
                      **by_column())
    x = result.profile["missing"]["columns"]["x"]
    assert x["counts"] == {"train": 2, "val": 1, "test": 3}
    assert x["rows_dropped"] == {"train": 2, "val": 1, "test": 3}
    assert result.profile["missing"]["columns"]["z"]["counts"] == {"train": 1, "val": 0, "test": 1}
    assert (len(result.train), len(result.val), len(result.test)) == (68, 14, 12)
    assert result.schema["missing"] == {"z": "mean"}  # features fills z; x rows are gone


def test_oversampling_raises_every_training_class_to_the_majority_count(tmp_path):
    frame = numeric_frame(400)
    frame["y"] = [0] * 300 + [1] * 100
    result = run_data(tmp_path, frame, imbalance="oversample")
    before = result.profile["split"]["class_counts"]["train"]
    assert result.profile["imbalance"]["class_counts_before"] == before
    assert result.train["y"].value_counts().tolist() == [before["0"], before["0"]]
    assert result.profile["split"]["rows"]["test"] == len(result.test)  # test untouched


def test_undersampling_cuts_every_training_class_to_the_minority_count(tmp_path):
    frame = numeric_frame(400)
    frame["y"] = [0] * 300 + [1] * 100
    result = run_data(tmp_path, frame, imbalance="undersample")
    before = result.profile["split"]["class_counts"]["train"]
    assert result.train["y"].value_counts().tolist() == [before["1"], before["1"]]
    assert result.profile["imbalance"]["class_counts_after"] == {"0": before["1"],
                                                                 "1": before["1"]}


def test_resampling_a_regression_target_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"data\.imbalance: 'oversample' applies to "
                                        r"classification"):
        run_data(tmp_path, numeric_frame(), imbalance="oversample")


def test_an_unknown_column_in_the_missing_strategies_suggests_the_closest_input(tmp_path):
    with pytest.raises(DataError, match=r"data\.clean\.missing\.columns: column 'xx' is not an "
                                        r"input column\. Did you mean 'x'\? Known: x, z"):
        run_data(tmp_path, numeric_frame(), clean={"missing": {"columns": {"xx": "drop"}}})
