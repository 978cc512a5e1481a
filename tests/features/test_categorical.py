"""CategoricalEncoder and BinaryEncoder; sklearn's OneHotEncoder is the one-hot oracle."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import OneHotEncoder

from dlpipe.errors import DataError
from dlpipe.features import BinaryEncoder, CategoricalEncoder

TRAIN = pd.DataFrame({
    "color": ["red", "blue", "red", "green", "blue", "red", "violet"],
    "size": ["S", "M", "L", "M", "M", "S", "XL"],
})
TEST = pd.DataFrame({
    "color": ["blue", "mauve", "red", "violet", "green"],
    "size": ["XXL", "M", "S", "L", "L"],
})


def test_one_hot_equals_sklearn_with_unknowns_ignored():
    ours = CategoricalEncoder(["color", "size"]).fit(TRAIN)
    theirs = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(TRAIN)
    np.testing.assert_array_equal(ours.transform(TEST), theirs.transform(TEST))
    assert ours.feature_names_ == [n.replace("_", "=", 1) for n in
                                   theirs.get_feature_names_out()]
    assert ours.transform(TEST).dtype == np.float32


def test_rare_categories_go_to_the_all_zero_bucket():
    ours = CategoricalEncoder(["color"], min_frequency=2).fit(TRAIN)
    assert ours.categories_ == [["blue", "red"]]
    assert ours.rare_ == [["green", "violet"]]
    oracle = OneHotEncoder(categories=[["blue", "red"]], handle_unknown="ignore",
                           sparse_output=False).fit(TRAIN[["color"]])
    np.testing.assert_array_equal(ours.transform(TEST), oracle.transform(TEST[["color"]]))


def test_embedding_indices_are_sorted_from_one_with_zero_for_unseen_and_missing():
    ours = CategoricalEncoder(["color"], encoding="embedding").fit(TRAIN)
    frame = pd.DataFrame({"color": ["blue", "green", "red", "violet", "mauve", None]})
    assert ours.transform(frame)[:, 0].tolist() == [1, 2, 3, 4, 0, 0]
    assert ours.cardinalities_ == [5]  # four categories and the bucket


def test_unseen_error_names_column_row_value_and_known_categories():
    ours = CategoricalEncoder(["color", "size"], unseen="error").fit(TRAIN)
    with pytest.raises(DataError, match=r"column 'color', row 1: unseen category 'mauve'; "
                                        r"known: blue, green, red, violet; set features\.unseen"):
        ours.transform(TEST)


def test_rare_and_missing_values_are_not_unseen_errors():
    ours = CategoricalEncoder(["color"], min_frequency=2, unseen="error").fit(TRAIN)
    out = ours.transform(pd.DataFrame({"color": ["green", None, "red"]}))
    np.testing.assert_array_equal(out, [[0, 0], [0, 0], [0, 1]])


def test_missing_categories_are_imputed_from_train_when_asked():
    train = pd.DataFrame({"c": ["x", None, "y", "y", None]})
    test = pd.DataFrame({"c": [None, "x"]})
    most = CategoricalEncoder(["c"], missing="most_frequent").fit(train)
    assert most.fills_ == ["y"]
    np.testing.assert_array_equal(most.transform(test), [[0, 1], [1, 0]])
    constant = CategoricalEncoder(["c"], missing="constant").fit(train)
    assert constant.categories_ == [["missing", "x", "y"]]
    np.testing.assert_array_equal(constant.transform(test), [[1, 0, 0], [0, 1, 0]])


def test_integer_and_pandas_categorical_columns_are_encoded_by_value():
    train = pd.DataFrame({"zip": [10, 20, 10, 30], "c": pd.Categorical(["a", "b", "a", "b"])})
    ours = CategoricalEncoder(["zip", "c"], encoding="embedding").fit(train)
    assert ours.categories_ == [[10, 20, 30], ["a", "b"]]
    test = pd.DataFrame({"zip": [30.0, np.nan, 20.0], "c": ["b", "a", "z"]})
    np.testing.assert_array_equal(ours.transform(test), [[3, 2], [0, 1], [2, 0]])


def test_categorical_json_round_trip_reproduces_transform_exactly():
    train = TRAIN.assign(zip=[1, 2, 2, 3, 3, 3, 4])
    test = TEST.assign(zip=[2, 5, 3, 1, None])
    for encoding in ("onehot", "embedding"):
        ours = CategoricalEncoder(["color", "size", "zip"], encoding=encoding,
                                  min_frequency=2).fit(train)
        loaded = CategoricalEncoder.from_json(json.loads(json.dumps(ours.to_json())))
        np.testing.assert_array_equal(loaded.transform(test), ours.transform(test))
        assert loaded.feature_names_ == ours.feature_names_


def test_binary_maps_the_second_sorted_value_to_one():
    train = pd.DataFrame({"smoker": ["yes", "no", "no"], "flag": [True, False, True]})
    ours = BinaryEncoder(["smoker", "flag"]).fit(train)
    assert ours.values_ == [["no", "yes"], [False, True]]
    out = ours.transform(pd.DataFrame({"smoker": ["no", "yes"], "flag": [True, False]}))
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])


def test_binary_missing_values_are_imputed_with_the_most_frequent_value():
    train = pd.DataFrame({"smoker": ["yes", "no", None, "yes"]})
    ours = BinaryEncoder(["smoker"]).fit(train)
    assert ours.had_missing_ == [True]
    np.testing.assert_array_equal(ours.transform(train)[:, 0], [1, 0, 1, 1])


def test_binary_column_with_three_values_is_refused_with_a_fix():
    train = pd.DataFrame({"smoker": ["yes", "no", "sometimes"]})
    with pytest.raises(DataError, match=r"column 'smoker' is binary in schema\.json but has 3 "
                                        r"distinct values.*data\.columns\.smoker: categorical"):
        BinaryEncoder(["smoker"]).fit(train)


def test_binary_unseen_value_fails_under_the_error_policy():
    ours = BinaryEncoder(["smoker"], unseen="error").fit(pd.DataFrame({"smoker": ["no", "yes"]}))
    with pytest.raises(DataError, match=r"column 'smoker', row 0: unseen category 'maybe'"):
        ours.transform(pd.DataFrame({"smoker": ["maybe"]}))


def test_binary_json_round_trip_reproduces_transform_exactly():
    train = pd.DataFrame({"s": ["yes", None, "no"], "f": [1, 0, 1]})
    ours = BinaryEncoder(["s", "f"]).fit(train)
    loaded = BinaryEncoder.from_json(json.loads(json.dumps(ours.to_json())))
    test = pd.DataFrame({"s": ["no", None, "yes"], "f": [0.0, np.nan, 1.0]})
    np.testing.assert_array_equal(loaded.transform(test), ours.transform(test))
