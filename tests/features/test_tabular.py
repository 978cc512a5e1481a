"""TabularFeatures (layout, JSON, input checks) and TargetEncoder."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from dlpipe.errors import ConfigError, DataError
from dlpipe.features import (
    BinaryEncoder,
    CategoricalEncoder,
    NumericTransformer,
    TabularFeatures,
    TargetEncoder,
    Transformer,
)

COLUMNS = [
    {"name": "age", "kind": "numeric", "dtype": "float64"},
    {"name": "color", "kind": "categorical", "dtype": "object"},
    {"name": "smoker", "kind": "binary", "dtype": "bool"},
    {"name": "income", "kind": "numeric", "dtype": "float64"},
    {"name": "city", "kind": "categorical", "dtype": "object"},
]


def train_frame():
    return pd.DataFrame({
        "age": [20.0, np.nan, 40.0, 33.0, 51.0, 28.0],
        "color": ["red", "blue", None, "red", "green", "blue"],
        "smoker": [True, False, True, False, False, True],
        "income": [1.0, 2.5, 3.0, 2.0, 8.0, 4.5],
        "city": ["oslo", "rome", "oslo", "lima", "rome", "oslo"],
        "label": ["no", "yes", "no", "no", "yes", "yes"],
    })


def test_matrix_layout_follows_the_contract():
    train = train_frame()
    features = TabularFeatures(COLUMNS, overrides={"city": "embedding"}, indicator=True,
                               missing={"age": "mean", "color": "most_frequent"}).fit(train)
    assert features.feature_names_ == [
        "age", "income",                      # scaled numerics
        "smoker",                             # binaries 0/1
        "color=blue", "color=green", "color=red",   # one-hot
        "age_missing", "color_missing",       # indicators of columns with missing train values
        "city",                               # embedding indices
    ]
    assert features.n_numeric_ == 8
    assert features.cardinalities_ == [4]
    x = features.transform(train)
    assert x.dtype == np.float32
    assert x.shape == (6, 9)
    filled = train[["age", "income"]].fillna({"age": train["age"].mean()})
    np.testing.assert_allclose(x[:, :2], StandardScaler().fit_transform(filled), rtol=1e-6,
                               atol=1e-6)  # float32 output of float64 statistics
    np.testing.assert_array_equal(x[:, 2], [1, 0, 1, 0, 0, 1])
    colors = SimpleImputer(strategy="most_frequent").fit_transform(train[["color"]])
    np.testing.assert_array_equal(x[:, 3:6], OneHotEncoder(sparse_output=False)
                                  .fit_transform(colors))
    np.testing.assert_array_equal(x[:, 6:8], train[["age", "color"]].isna())
    np.testing.assert_array_equal(x[:, 8], [2, 3, 2, 1, 3, 2])


def test_json_round_trip_reproduces_transform_exactly():
    train = train_frame()
    test = pd.DataFrame({
        "age": [np.nan, 99.0], "color": ["mauve", None], "smoker": [None, False],
        "income": [0.5, np.nan], "city": ["paris", "lima"],
    })
    features = TabularFeatures(COLUMNS, numeric="robust", categorical="embedding",
                               overrides={"color": "onehot", "income": "minmax"},
                               indicator=True, missing={"age": "median"},
                               clip={"age": [25.0, 45.0]}).fit(train)
    text = json.dumps(features.to_json(), allow_nan=False)
    loaded = TabularFeatures.from_json(json.loads(text))
    np.testing.assert_array_equal(loaded.transform(test), features.transform(test))
    assert loaded.feature_names_ == features.feature_names_
    assert loaded.n_numeric_ == features.n_numeric_
    assert loaded.cardinalities_ == features.cardinalities_


def test_indicators_cover_exactly_the_columns_missing_in_train():
    train = train_frame()
    features = TabularFeatures(COLUMNS, indicator=True).fit(train)
    assert features.indicators_ == ["age", "color"]
    test = train.assign(income=np.nan, age=[1.0, np.nan, 2.0, 3.0, 4.0, 5.0])
    x = features.transform(test)
    names = features.feature_names_
    assert "income_missing" not in names
    np.testing.assert_array_equal(x[:, names.index("age_missing")], [0, 1, 0, 0, 0, 0])


def test_transform_ignores_other_columns_but_validate_input_refuses_them():
    train = train_frame()
    features = TabularFeatures(COLUMNS).fit(train)
    assert features.transform(train).shape == features.transform(train.drop(columns="label")).shape
    with pytest.raises(DataError, match=r"input has 1 unexpected column\(s\): label; the model "
                                        r"expects age: numeric, color: categorical"):
        features.validate_input(train)


def test_validate_input_drops_the_target_and_returns_training_order():
    train = train_frame()
    features = TabularFeatures(COLUMNS)
    shuffled = train[["label", "city", "income", "smoker", "color", "age"]]
    out = features.validate_input(shuffled, target="label")
    assert list(out.columns) == ["age", "color", "smoker", "income", "city"]


def test_validate_input_lists_the_expected_schema_for_missing_columns():
    features = TabularFeatures(COLUMNS)
    with pytest.raises(DataError, match=r"input is missing 2 column\(s\): age, city; the model "
                                        r"expects age: numeric, color: categorical, smoker: "
                                        r"binary, income: numeric, city: categorical"):
        features.validate_input(train_frame().drop(columns=["age", "city"]), target="label")


def test_validate_input_names_column_and_first_bad_row_of_a_wrong_type():
    frame = train_frame().drop(columns="label").astype({"income": object})
    frame.loc[3, "income"] = "a lot"
    frame.loc[5, "income"] = "more"
    features = TabularFeatures(COLUMNS)
    with pytest.raises(DataError, match=r"column 'income', row 3: expected a number, got "
                                        r"'a lot' \(and 1 more rows\)"):
        features.validate_input(frame)
    with pytest.raises(DataError, match=r"column 'income', row 3"):
        features.fit(train_frame()).transform(frame)


def test_unseen_error_policy_reaches_the_encoders():
    train = train_frame()
    features = TabularFeatures(COLUMNS, unseen="error").fit(train)
    with pytest.raises(DataError, match=r"column 'city', row 1: unseen category 'paris'"):
        features.transform(train.assign(city=["oslo", "paris", "oslo", "lima", "rome", "oslo"]))


def test_bad_overrides_name_the_config_field():
    with pytest.raises(ConfigError, match=r"features\.columns\.colour: unknown column 'colour'\. "
                                          r"Did you mean 'color'\?"):
        TabularFeatures(COLUMNS, overrides={"colour": "embedding"}).fit(train_frame())
    with pytest.raises(ConfigError, match=r"features\.columns\.age: 'onehot' does not apply to "
                                          r"numeric column 'age'"):
        TabularFeatures(COLUMNS, overrides={"age": "onehot"}).fit(train_frame())
    with pytest.raises(ConfigError, match=r"data\.clean\.missing\.columns\.color: strategy "
                                          r"'mean' does not apply"):
        TabularFeatures(COLUMNS, missing={"color": "mean"}).fit(train_frame())


def test_an_encoding_override_makes_a_binary_column_categorical():
    features = TabularFeatures(COLUMNS, overrides={"smoker": "onehot"}).fit(train_frame())
    assert "smoker=False" in features.feature_names_
    assert "smoker=True" in features.feature_names_


def test_fit_rejects_an_empty_training_split():
    with pytest.raises(DataError, match=r"training split has no rows"):
        TabularFeatures(COLUMNS).fit(train_frame().iloc[:0])


def test_classification_target_round_trip():
    labels = pd.Series(["yes", "no", "maybe", "no"])
    encoder = TargetEncoder("multiclass").fit(labels)
    assert encoder.classes_ == ["maybe", "no", "yes"]
    codes = encoder.transform(labels)
    assert codes.dtype == np.int64
    assert codes.tolist() == [2, 1, 0, 1]
    assert encoder.inverse_transform(codes).tolist() == labels.tolist()
    loaded = TargetEncoder.from_json(json.loads(json.dumps(encoder.to_json())))
    np.testing.assert_array_equal(loaded.transform(labels), codes)
    assert loaded.inverse_transform([0]).tolist() == ["maybe"]


def test_schema_classes_fix_the_index_order_and_unknown_labels_name_the_row():
    encoder = TargetEncoder("binary", classes=[0, 1], name="label").fit([1, 0, 1])
    assert encoder.transform(pd.Series([1, 0])).tolist() == [1, 0]
    with pytest.raises(DataError, match=r"target column 'label', row 1: unknown label 2; "
                                        r"known: 0, 1"):
        encoder.transform(pd.Series([0, 2, 1]))
    with pytest.raises(DataError, match=r"target column 'label', row 0: missing value"):
        encoder.transform(pd.Series([None, 1.0]))


def test_regression_target_is_standardized_and_mapped_back():
    y = pd.Series([3.0, 5.0, 10.0, -2.0])
    encoder = TargetEncoder("regression").fit(y)
    assert encoder.mean_ == pytest.approx(np.mean(y))
    assert encoder.scale_ == pytest.approx(np.std(y))
    z = encoder.transform(y)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (y - y.mean()) / y.std(ddof=0), rtol=1e-6)
    loaded = TargetEncoder.from_json(json.loads(json.dumps(encoder.to_json())))
    # float32 round trip: relative error of one float32 ulp times the scale.
    np.testing.assert_allclose(loaded.inverse_transform(z), y, rtol=1e-6)
    unscaled = TargetEncoder("regression", scale=False).fit(y)
    np.testing.assert_array_equal(unscaled.transform(y), y.to_numpy(np.float32))


def test_regression_target_refuses_non_finite_values():
    with pytest.raises(DataError, match=r"target column 'target', row 2: missing value"):
        TargetEncoder("regression").fit(pd.Series([1.0, 2.0, np.nan]))
    with pytest.raises(DataError, match=r"target column 'y', row 1: inf is not a finite number"):
        TargetEncoder("regression", name="y").fit(pd.Series([1.0, np.inf]))
    with pytest.raises(DataError, match=r"target column 'y', row 1: 1e\+300 is beyond float32"):
        TargetEncoder("regression", name="y").fit(pd.Series([1.0, 1e300]))


def test_every_transformer_follows_the_protocol():
    for obj in (TabularFeatures(COLUMNS), TargetEncoder("binary"), NumericTransformer(["a"]),
                CategoricalEncoder(["b"]), BinaryEncoder(["c"])):
        assert isinstance(obj, Transformer)
