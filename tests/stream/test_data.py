"""The streaming data stage (`data.stream: true`): one pass over a Parquet or CSV file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlpipe import runs
from dlpipe.config import load_config
from dlpipe.data import run as data_run
from dlpipe.errors import ConfigError, DataError


def table(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame({
        "a": x[:, 0], "b": x[:, 1], "c": np.round(x[:, 2] * 3),
        "color": rng.choice(["red", "green", "blue"], size=n),
        "group": rng.integers(0, 300, size=n),
        "label": (x[:, 0] + x[:, 1] > 0).astype(np.int64),
    })
    frame.loc[rng.random(n) < 0.05, "b"] = np.nan
    return frame


def write(frame: pd.DataFrame, path, row_group: int = 1000):
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path,
                   row_group_size=row_group)
    return path


def cfg_for(path, **data):
    return load_config({"data": {"source": {"path": str(path)}, "target": "label",
                                 "stream": True, "chunk_rows": 1000, **data}})


def test_splits_are_written_with_the_configured_fractions_and_hash_keeps_duplicates_together(
        tmp_path):
    frame = table()
    doubled = pd.concat([frame, frame.iloc[:500]], ignore_index=True)  # 500 exact duplicates
    src = write(doubled, tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    result = data_run(cfg_for(src), rundir)
    rows = result.rows
    assert sum(rows.values()) == len(doubled)
    assert abs(rows["val"] / len(doubled) - 0.15) < 0.02
    assert abs(rows["test"] / len(doubled) - 0.15) < 0.02
    splits = {s: pd.read_parquet(rundir.split_file(s)) for s in runs.SPLITS}
    keys = {s: set(map(tuple, f[["a", "c", "color"]].round(12).to_numpy().tolist()))
            for s, f in splits.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"]
    assert result.schema["task"] == "binary" and result.schema["classes"] == [0, 1]
    assert result.schema["stream"] is True
    kinds = {c["name"]: c["kind"] for c in result.schema["columns"]}
    assert kinds["color"] == "categorical" and kinds["a"] == "numeric"
    assert result.profile["missing"]["columns"]["b"]["counts"]["train"] == int(
        splits["train"]["b"].isna().sum())


def test_the_split_does_not_depend_on_the_chunk_size(tmp_path):
    src = write(table(), tmp_path / "t.parquet", row_group=700)
    assignments = []
    for chunk in (1000, 4096):
        rundir = runs.RunDir.create(tmp_path / f"run{chunk}")
        data_run(cfg_for(src, chunk_rows=chunk), rundir)
        assignments.append(pd.read_parquet(rundir.split_file("val"))["a"].to_numpy())
    np.testing.assert_array_equal(*assignments)


def test_a_group_split_keeps_each_group_in_one_split(tmp_path):
    src = write(table(), tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    data_run(cfg_for(src, split={"method": "group", "group_column": "group"}), rundir)
    groups = {s: set(pd.read_parquet(rundir.split_file(s))["group"]) for s in runs.SPLITS}
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]


def test_a_csv_is_converted_once_and_streamed(tmp_path):
    frame = table(3000)
    src = tmp_path / "t.csv"
    frame.to_csv(src, index=False)
    rundir = runs.RunDir.create(tmp_path / "run")
    result = data_run(cfg_for(src), rundir)
    assert rundir.has(runs.SOURCE)
    assert sum(result.rows.values()) == 3000


def test_a_csv_that_is_not_utf8_is_refused_by_line_and_read_with_its_encoding(tmp_path):
    frame = table(3000)
    frame.loc[2000, "color"] = "caf\xe9"
    src = tmp_path / "t.csv"
    frame.to_csv(src, index=False, encoding="latin-1")
    with pytest.raises(DataError, match=r"is not UTF-8 \(line 2002, byte 0xe9\); re-save it "
                                        r"as UTF-8 or set data\.source\.encoding: latin-1"):
        data_run(cfg_for(src), runs.RunDir.create(tmp_path / "run"))
    assert not list((tmp_path / "run").rglob("*.parquet"))
    rundir = runs.RunDir.create(tmp_path / "ok")
    cfg = load_config({"data": {"source": {"path": str(src), "encoding": "latin-1"},
                                "target": "label", "stream": True, "chunk_rows": 1000}})
    data_run(cfg, rundir)
    colors = pd.concat([pd.read_parquet(rundir.split_file(s)) for s in runs.SPLITS])["color"]
    assert (colors == "caf\xe9").sum() == 1


def test_a_csv_separated_by_semicolons_says_so_and_streams_with_sep(tmp_path):
    src = tmp_path / "t.csv"
    table(3000).to_csv(src, index=False, sep=";")
    with pytest.raises(DataError, match=r"data\.target: column 'label' is not in the data: the "
                                        r"header has one column 'a;b;c;color;group;label': is "
                                        r"the file separated by ';'\? set data\.source\.sep: "
                                        r"';'"):
        data_run(cfg_for(src), runs.RunDir.create(tmp_path / "run"))
    cfg = load_config({"data": {"source": {"path": str(src), "sep": ";"}, "target": "label",
                                "stream": True, "chunk_rows": 1000}})
    assert sum(data_run(cfg, runs.RunDir.create(tmp_path / "ok")).rows.values()) == 3000


def test_zscore_clip_bounds_are_exact_on_the_training_split(tmp_path):
    src = write(table(), tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    result = data_run(cfg_for(src, clean={"outliers": {"method": "zscore"}}), rundir)
    train = pd.read_parquet(rundir.split_file("train"))
    mean, std = train["a"].mean(), train["a"].std(ddof=0)
    low, high = result.schema["clip"]["a"]
    assert low == pytest.approx(mean - 3 * std, rel=1e-9)
    assert high == pytest.approx(mean + 3 * std, rel=1e-9)


def test_iqr_bounds_come_from_a_sample_and_are_close(tmp_path):
    src = write(table(), tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    result = data_run(cfg_for(src, clean={"outliers": {"method": "iqr"}}), rundir)
    train = pd.read_parquet(rundir.split_file("train"))
    q1, q3 = train["a"].quantile([0.25, 0.75])
    assert result.schema["clip"]["a"][1] == pytest.approx(q3 + 1.5 * (q3 - q1), rel=1e-6)
    assert result.profile["outliers"]["approximate"] is True


def test_a_text_value_in_a_numeric_column_names_its_row_in_the_file(tmp_path):
    frame = table(3000).astype({"a": object})
    frame.loc[2345, "a"] = "oops"
    src = write(frame.astype({"a": str}), tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    with pytest.raises(DataError, match="row 2345"):
        data_run(cfg_for(src, columns={"a": "numeric"}), rundir)
    assert not list((tmp_path / "run").rglob("*.parquet"))  # nothing half-written
    assert not rundir.has(runs.SCHEMA)


def test_inputs_beyond_float32_become_missing_values_in_any_chunk(tmp_path):
    frame = table(3000)
    frame.loc[[120, 2345], "a"] = [1e39, -1e300]  # the first chunk and a later one
    frame.loc[1500, "a"] = np.inf
    src = write(frame, tmp_path / "t.parquet")
    rundir = runs.RunDir.create(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"column 'a', row 120: 1e\+39 is beyond float32's "
                                         r"range.*\(2 such values in all\)"):
        result = data_run(cfg_for(src), rundir)
    counts = result.profile["missing"]["columns"]["a"]
    assert counts["beyond_float32_as_missing"] == 2 and counts["infinite_as_missing"] == 1
    splits = pd.concat([pd.read_parquet(rundir.split_file(s)) for s in runs.SPLITS])
    assert splits["a"].isna().sum() == 3 and np.abs(splits["a"]).max() < 10


def test_a_target_beyond_float32_names_its_row(tmp_path):
    frame = table(3000).astype({"label": "float64"})
    frame.loc[2500, "label"] = 1e39
    src = write(frame, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"column 'label', row 2500: 1e\+39 is beyond float32"):
        data_run(cfg_for(src), runs.RunDir.create(tmp_path / "run"))
    assert not list((tmp_path / "run").rglob("*.parquet"))


def test_a_missing_target_names_its_row(tmp_path):
    frame = table(3000).astype({"label": "float64"})
    frame.loc[2500, "label"] = np.nan
    src = write(frame, tmp_path / "t.parquet")
    with pytest.raises(DataError, match="row 2500"):
        data_run(cfg_for(src), runs.RunDir.create(tmp_path / "run"))


def test_a_label_first_seen_after_the_first_chunk_makes_the_task_multiclass(tmp_path):
    frame = table(3000)
    frame.loc[2900:, "label"] = 2
    src = write(frame, tmp_path / "t.parquet")
    result = data_run(cfg_for(src), runs.RunDir.create(tmp_path / "run"))
    assert result.schema["task"] == "multiclass" and result.schema["classes"] == [0, 1, 2]


@pytest.mark.parametrize(("data", "field"), [
    ({"split": {"method": "time", "time_column": "a"}}, "data.split.method"),
    ({"imbalance": "oversample"}, "data.imbalance"),
    ({"clean": {"outliers": {"action": "drop"}}}, "data.clean.outliers.action"),
])
def test_settings_that_need_the_whole_table_are_refused_by_name(tmp_path, data, field):
    src = write(table(2000), tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        data_run(cfg_for(src, **data), runs.RunDir.create(tmp_path / "run"))


def test_the_split_columns_are_not_inputs_as_in_memory(tmp_path):
    src = write(table(2000), tmp_path / "t.parquet")
    cfg = cfg_for(src, split={"method": "group", "group_column": "group", "time_column": "c"})
    result = data_run(cfg, runs.RunDir.create(tmp_path / "run"))
    inputs = {c["name"] for c in result.schema["columns"]}
    assert inputs == {"a", "b", "color"}  # not the label, the group or the time column


def test_a_final_fit_on_train_and_val_is_refused_by_name(tmp_path):
    src = write(table(2000), tmp_path / "t.parquet")
    cfg = load_config({"data": {"source": {"path": str(src)}, "target": "label",
                                "stream": True}, "train": {"fit_on": "train+val"}})
    with pytest.raises(ConfigError, match=r"train\.fit_on"):
        data_run(cfg, runs.RunDir.create(tmp_path / "run"))


def test_a_stage_that_loads_whole_splits_is_refused(tmp_path):
    src = write(table(2000), tmp_path / "t.parquet")
    cfg = load_config({"data": {"source": {"path": str(src)}, "target": "label",
                                "stream": True}, "compress": {}})
    with pytest.raises(ConfigError, match="compress"):
        data_run(cfg, runs.RunDir.create(tmp_path / "run"))
