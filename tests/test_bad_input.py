"""Bad input: a DlpipeError naming the field, column or row, and nothing left behind."""

import numpy as np
import pandas as pd
import pytest

import dlpipe
from dlpipe.errors import ConfigError, DataError, RunDirError
from dlpipe.predict import read_rows
from helpers import minimal_config


def _csv(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _file_config(path, **data):
    return minimal_config(data={"source": {"path": str(path)}, "target": "label", **data})


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.normal(40, 10, n).round(1), "income": rng.normal(5, 1, n),
                         "label": rng.integers(0, 2, n)})


def _assert_nothing_written(run_dir):
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_wrong_types_name_their_paths():
    with pytest.raises(ConfigError, match=r"train\.epochs: Input should be a valid integer"):
        dlpipe.run(minimal_config(train={"epochs": "many"}))


def test_a_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data\.source\.path: .*nope\.csv"):
        dlpipe.run(_file_config(tmp_path / "nope.csv"), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty"):
        dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_an_unknown_target_suggests_the_closest_column(tmp_path):
    path = _csv(tmp_path, _frame())
    with pytest.raises(DataError, match=r"data\.target: column 'labels' .*Did you mean 'label'\?"):
        dlpipe.run(minimal_config(data={"source": {"path": str(path)}, "target": "labels"}),
                   run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_target_names_the_rows(tmp_path, bad):
    frame = _frame().astype({"label": float})
    frame.loc[[7, 21], "label"] = bad
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=r"rows 7, 21.*drop_missing_target"):
        dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_a_string_in_a_numeric_column_names_column_row_and_value(tmp_path):
    frame = _frame().astype({"age": object})
    frame.loc[12, "age"] = "abc"
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=r"column 'age' is numeric .*but row 12 holds 'abc'"):
        dlpipe.run(_file_config(path, columns={"age": "numeric"}), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_a_single_class_in_the_training_split_is_refused(tmp_path):
    frame = _frame()
    frame["label"] = 1
    frame.loc[0, "label"] = 0  # one row of the other class: cannot reach the training split
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=r"class"):
        dlpipe.run(_file_config(path, task="binary"), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_a_dataset_too_small_for_the_split_ratios_says_how_many_rows(tmp_path):
    frame = _frame(n=4)
    frame["label"] = [0, 1, 0, 1]
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=r"4 rows"):
        dlpipe.run(_file_config(path, split={"val": 0.1, "test": 0.1}), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")


def test_a_run_directory_that_is_not_one(tmp_path):
    with pytest.raises(RunDirError, match=r"is not a dlpipe run"):
        dlpipe.load(tmp_path)


def test_an_existing_run_is_never_overwritten(tmp_path):
    dlpipe.run(minimal_config(), run_dir=tmp_path / "run")
    with pytest.raises(RunDirError, match=r"already holds a run"):
        dlpipe.run(minimal_config(), run_dir=tmp_path / "run")


def test_predict_lists_the_expected_schema_for_a_missing_column(tmp_path):
    path = _csv(tmp_path, _frame(200))
    result = dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    predictor = dlpipe.load(result.path)
    with pytest.raises(DataError, match=r"income"):
        predictor.predict(pd.DataFrame({"age": [30.0]}))
    with pytest.raises(DataError, match=r"colour"):
        predictor.predict(pd.DataFrame({"age": [30.0], "income": [4.0], "colour": ["red"]}))
    with pytest.raises(DataError, match=r"age.*row 1.*'old'"):
        predictor.predict([{"age": 30.0, "income": 4.0}, {"age": "old", "income": 4.0}])


def test_a_run_with_inputs_beyond_float32_in_every_split_trains_and_evaluates(tmp_path):
    frame = _frame(200)
    frame.loc[::9, "income"] = np.linspace(1e39, 2e39, 23)  # rows in train, val and test
    frame.loc[4, "age"] = -1e300
    path = _csv(tmp_path, frame)
    with pytest.warns(UserWarning, match=r"column 'income', row 0: 1e\+39 is beyond float32"):
        result = dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    assert np.isfinite(result.metrics["test"]["log_loss"])
    profile = result.rundir.read_json(dlpipe.runs.PROFILE)
    assert profile["missing"]["columns"]["income"]["beyond_float32_as_missing"] == 23


def test_predict_refuses_a_value_beyond_float32_naming_column_and_row(tmp_path):
    path = _csv(tmp_path, _frame(200))
    predictor = dlpipe.load(dlpipe.run(_file_config(path), run_dir=tmp_path / "run").path)
    rows = [{"age": 30.0, "income": 4.0}, {"age": 31.0, "income": 1e39}]
    with pytest.raises(DataError, match=r"column 'income', row 1: 1e\+39 is beyond float32's "
                                        r"range \(±3\.4e38\)"):
        predictor.predict(rows)
    new = tmp_path / "new.csv"
    pd.DataFrame([{"age": 30.0, "income": 4.0}] * 5 + [{"age": -1e39, "income": 4.0}]).to_csv(
        new, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"column 'age', row 5: -1e\+39 is beyond float32"):
        predictor.predict_file(new, out, chunk_rows=2)
    assert not out.exists()


def test_a_training_csv_that_is_not_utf8_names_the_line_and_the_byte(tmp_path):
    frame = _frame(200)
    frame["city"] = np.where(np.arange(200) % 2, "Paris", "Lyon")
    frame.loc[7, "city"] = "Orl\xe9ans"
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False, encoding="latin-1")
    with pytest.raises(DataError, match=r"is not UTF-8 \(line 9, byte 0xe9\).*"
                                        r"data\.source\.encoding: latin-1"):
        dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    _assert_nothing_written(tmp_path / "run")
    cfg = minimal_config(data={"source": {"path": str(path), "encoding": "latin-1"},
                               "target": "label"})
    result = dlpipe.run(cfg, run_dir=tmp_path / "ok")
    kinds = {c["name"]: c["kind"] for c in result.rundir.read_json(dlpipe.runs.SCHEMA)["columns"]}
    assert kinds["city"] == "categorical"


def test_predicting_a_csv_that_is_not_utf8_fails_by_line_or_reads_with_its_encoding(tmp_path):
    frame = _frame(200)
    frame["city"] = np.where(np.arange(200) % 2, "Paris", "Orl\xe9ans")
    path = _csv(tmp_path, frame)
    predictor = dlpipe.load(dlpipe.run(_file_config(path), run_dir=tmp_path / "run").path)
    rows = frame.drop(columns="label").head(6)
    new = tmp_path / "new.csv"
    rows.to_csv(new, index=False, encoding="latin-1")
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"input: '.*new\.csv' is not UTF-8 \(line 2, byte "
                                        r"0xe9\); re-save it as UTF-8 or pass --encoding latin-1"):
        predictor.predict_file(new, out)
    assert not out.exists()
    with pytest.raises(DataError, match=r"is not UTF-8 \(line 2, byte 0xe9\)"):
        read_rows(new)
    expected = predictor.predict(rows).labels.tolist()
    assert predictor.predict_file(new, out, encoding="latin-1") == 6
    assert pd.read_csv(out)["prediction"].tolist() == expected
    read = read_rows(new, encoding="latin-1")
    assert predictor.predict(read).labels.tolist() == expected


@pytest.mark.parametrize("sep, shown", [(";", "';'"), ("\t", '"\\t"')])
def test_a_csv_separated_by_another_character_says_which_and_how_to_set_it(tmp_path, sep,
                                                                           shown):
    path = tmp_path / "data.csv"
    _frame(200).to_csv(path, index=False, sep=sep)
    header = repr(sep.join(["age", "income", "label"]))
    with pytest.raises(DataError) as info:
        dlpipe.run(_file_config(path), run_dir=tmp_path / "run")
    assert str(info.value) == (
        f"data.target: column 'label' is not in the data: the header has one column {header}: "
        f"is the file separated by {shown}? set data.source.sep: {shown}")
    _assert_nothing_written(tmp_path / "run")
    cfg = minimal_config(data={"source": {"path": str(path), "sep": sep}, "target": "label"})
    assert dlpipe.run(cfg, run_dir=tmp_path / "ok").metrics["test"]["accuracy"] >= 0


def test_predicting_a_csv_separated_by_semicolons_says_so_or_reads_it_with_sep(tmp_path):
    frame = _frame(200)
    predictor = dlpipe.load(dlpipe.run(_file_config(_csv(tmp_path, frame)),
                                       run_dir=tmp_path / "run").path)
    rows = frame.drop(columns="label").head(5)
    new = tmp_path / "new.csv"
    rows.to_csv(new, index=False, sep=";")
    out = tmp_path / "out.csv"
    hint = (r"input is missing 2 column\(s\): age, income; the header has one column "
            r"'age;income': is the file separated by ';'\? pass --sep ';'")
    with pytest.raises(DataError, match=hint):
        predictor.predict_file(new, out)
    with pytest.raises(DataError, match=hint):
        predictor.predict(read_rows(new))
    assert not out.exists()
    expected = predictor.predict(rows).labels.tolist()
    assert predictor.predict_file(new, out, sep=";") == 5
    assert pd.read_csv(out)["prediction"].tolist() == expected
    assert predictor.predict(read_rows(new, sep=";")).labels.tolist() == expected


def test_an_unknown_component_is_caught_before_any_work(tmp_path):
    with pytest.raises(ConfigError,
                       match=r"model\.name: unknown model 'mpl'\. Did you mean 'mlp'\?"):
        dlpipe.run(minimal_config(model={"name": "mpl"}), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
