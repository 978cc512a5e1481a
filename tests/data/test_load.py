import numpy as np
import pandas as pd
import pytest

from dlpipe.config import SourceConfig
from dlpipe.data import frame_from_arrays, load_table
from dlpipe.data.builtin import load_builtin
from dlpipe.errors import ConfigError, DataError


def sample_frame():
    return pd.DataFrame({
        "age": [31.5, 42.0, None, 27.25],
        "color": ["red", None, "blue", "red"],
        "count": [1, 2, 3, 4],
        "label": [0, 1, 1, 0],
    })


def assert_same_table(read, expected):
    assert list(read.columns) == list(expected.columns)
    for column in expected.columns:
        assert read[column].isna().tolist() == expected[column].isna().tolist(), column
        present = expected[column].notna()
        assert read[column][present].tolist() == expected[column][present].tolist(), column


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_table_written_to_a_file_reads_back_unchanged(tmp_path, suffix):
    expected = sample_frame()
    path = tmp_path / f"table{suffix}"
    if suffix == ".csv":
        expected.to_csv(path, index=False)
    elif suffix == ".parquet":
        expected.to_parquet(path, index=False)
    else:
        expected.to_json(path, orient="records", lines=True)
    read = load_table(path)
    assert_same_table(read, expected)
    assert read.index.tolist() == [0, 1, 2, 3]


def test_the_format_setting_overrides_the_extension(tmp_path):
    path = tmp_path / "table.data"
    sample_frame().to_csv(path, index=False)
    assert_same_table(load_table(SourceConfig(path=str(path), format="csv")), sample_frame())
    with pytest.raises(DataError, match=r"cannot tell the format of .*table\.data"):
        load_table(path)


def test_npz_arrays_read_back_with_their_feature_names(tmp_path):
    X = np.arange(12, dtype=float).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "named.npz", X=X, y=y, feature_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "plain.npz", x=X, y=y)
    named = load_table(tmp_path / "named.npz")
    plain = load_table(tmp_path / "plain.npz")
    assert list(named.columns) == ["a", "b", "c", "target"]
    assert list(plain.columns) == ["x0", "x1", "x2", "target"]
    np.testing.assert_array_equal(named[["a", "b", "c"]].to_numpy(), X)
    np.testing.assert_array_equal(plain["target"].to_numpy(), y)


def test_npz_without_targets_names_what_it_found(tmp_path):
    np.savez(tmp_path / "nolabels.npz", X=np.ones((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"nolabels\.npz' has no array 'y'; found: X, labels"):
        load_table(tmp_path / "nolabels.npz")


def test_a_missing_file_is_named_in_the_error(tmp_path):
    with pytest.raises(DataError, match=r"data\.source\.path: file .*nowhere\.csv' does not "
                                        r"exist"):
        load_table(tmp_path / "nowhere.csv")


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"data\.source\.path: file .*empty\.csv' is empty"):
        load_table(tmp_path / "empty.csv")


def test_a_file_with_a_header_and_no_rows_is_refused(tmp_path):
    (tmp_path / "header.csv").write_text("a,b,label\n")
    with pytest.raises(DataError, match=r"header\.csv' has no rows \(columns: a, b, label\)"):
        load_table(tmp_path / "header.csv")


def test_an_unreadable_file_names_the_format_it_was_read_as(tmp_path):
    (tmp_path / "broken.parquet").write_text("this is not parquet")
    with pytest.raises(DataError, match=r"cannot read .*broken\.parquet' as parquet"):
        load_table(tmp_path / "broken.parquet")


SHAPES = {
    "breast_cancer": (569, 31),
    "wine": (178, 14),
    "iris": (150, 5),
    "diabetes": (442, 11),
    "digits": (1797, 65),
    "make_classification": (100, 21),
    "make_regression": (100, 101),
}


LATIN1 = "age,color,label\n31,red,0\n42,caf\xe9,1\n27,blue,0\n".encode("latin-1")


def test_a_csv_that_is_not_utf8_names_the_line_and_the_byte(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(LATIN1)  # one Latin-1 'é' on line 3: would read as an image column
    with pytest.raises(DataError, match=r"data\.source\.path: '.*latin1\.csv' is not UTF-8 "
                                        r"\(line 3, byte 0xe9\); re-save it as UTF-8 or set "
                                        r"data\.source\.encoding: latin-1"):
        load_table(SourceConfig(path=str(path)))


def test_a_header_that_is_not_utf8_names_line_1(tmp_path):
    path = tmp_path / "header.csv"
    path.write_bytes("\xe2ge,label\n1,0\n2,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 \(line 1, byte 0xe2\)"):
        load_table(SourceConfig(path=str(path)))


def test_a_compressed_csv_that_is_not_utf8_names_the_line_too(tmp_path):
    import gzip

    path = tmp_path / "latin1.csv.gz"
    path.write_bytes(gzip.compress(LATIN1))
    with pytest.raises(DataError, match=r"is not UTF-8 \(line 3, byte 0xe9\)"):
        load_table(SourceConfig(path=str(path)))


def test_the_encoding_setting_reads_a_latin1_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(LATIN1)
    frame = load_table(SourceConfig(path=str(path), encoding="latin-1"))
    assert frame["color"].tolist() == ["red", "café", "blue"]


def test_a_wrong_encoding_setting_names_the_line_and_the_byte(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(LATIN1)
    with pytest.raises(DataError, match=r"is not ascii \(line 3, byte 0xe9\); is 'ascii' its "
                                        r"encoding\?"):
        load_table(SourceConfig(path=str(path), encoding="ascii"))


@pytest.mark.parametrize("sep, setting", [(";", ";"), ("\t", "\\t"), ("\t", "\t"),
                                          ("|", "|")])
def test_the_sep_setting_reads_a_csv_separated_by_another_character(tmp_path, sep, setting):
    expected = sample_frame()
    path = tmp_path / "table.csv"
    expected.to_csv(path, index=False, sep=sep)
    assert_same_table(load_table(SourceConfig(path=str(path), sep=setting)), expected)


def test_a_sep_of_more_than_one_character_is_a_config_error():
    with pytest.raises(ValueError, match=r"the separator must be one character"):
        SourceConfig(path="data.csv", sep=";;")


def test_a_sep_is_refused_for_a_file_that_is_not_csv(tmp_path):
    path = tmp_path / "t.parquet"
    sample_frame().to_parquet(path)
    with pytest.raises(DataError, match=r"data\.source\.sep: ';' applies to CSV"):
        load_table(SourceConfig(path=str(path), sep=";"))


def test_an_unknown_encoding_is_a_config_error():
    with pytest.raises(ValueError, match=r"unknown encoding 'utf-9'"):
        SourceConfig(path="data.csv", encoding="utf-9")


def test_an_encoding_is_refused_for_a_file_that_is_not_csv(tmp_path):
    path = tmp_path / "t.parquet"
    sample_frame().to_parquet(path)
    with pytest.raises(DataError, match=r"data\.source\.encoding: 'latin-1' applies to CSV"):
        load_table(SourceConfig(path=str(path), encoding="latin-1"))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_builtin_loads_with_a_target_column_and_its_shape(name):
    frame = load_table(SourceConfig(builtin=name))
    assert frame.shape == SHAPES[name]
    assert frame.columns[-1] == "target"
    assert frame["target"].notna().all()
    assert all(c.replace("_", "").isalnum() for c in frame.columns)  # YAML-friendly names


def test_digits_columns_are_named_pixel_0_to_pixel_63():
    frame = load_builtin("digits")
    assert list(frame.columns[:64]) == [f"pixel_{i}" for i in range(64)]


def test_generators_are_deterministic_by_default_and_take_params():
    first = load_builtin("make_classification", {"n_samples": 40, "n_features": 5})
    again = load_builtin("make_classification", {"n_samples": 40, "n_features": 5})
    other = load_builtin("make_classification",
                         {"n_samples": 40, "n_features": 5, "random_state": 1})
    assert first.shape == (40, 6)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_an_unknown_generator_param_names_its_path_and_the_closest_name():
    with pytest.raises(ConfigError, match=r"data\.source\.params\.n_sample: make_regression has "
                                          r"no parameter 'n_sample'\. Did you mean 'n_samples'"):
        load_builtin("make_regression", {"n_sample": 10})


def test_a_bad_generator_value_names_its_path():
    with pytest.raises(ConfigError, match=r"data\.source\.params\.n_samples: .*must be an int"):
        load_builtin("make_classification", {"n_samples": "many"})


def test_frame_from_arrays_names_columns_x0_onwards():
    frame = frame_from_arrays(np.zeros((5, 3)), np.arange(5))
    assert list(frame.columns) == ["x0", "x1", "x2", "target"]
    assert frame["target"].tolist() == [0, 1, 2, 3, 4]


def test_frame_from_arrays_refuses_targets_of_another_length():
    with pytest.raises(DataError, match=r"y: expected shape \(5,\) to match X's 5 rows; got "
                                        r"shape \(4,\)"):
        frame_from_arrays(np.zeros((5, 3)), np.arange(4))
