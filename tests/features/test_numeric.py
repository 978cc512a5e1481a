"""NumericTransformer against scikit-learn's imputer and scalers (the oracle)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from dlpipe.errors import DataError
from dlpipe.features import NotFittedError, NumericTransformer

COLUMNS = ["a", "b", "c"]


def frames(seed=0, n_train=60, n_test=25):
    rng = np.random.default_rng(seed)

    def frame(n):
        return pd.DataFrame({
            "a": rng.normal(5, 2, n),
            "b": rng.exponential(3, n),
            "c": rng.integers(0, 4, n).astype(float),
        })

    return frame(n_train), frame(n_test)


def with_missing(frame, seed=1, fraction=0.2):
    rng = np.random.default_rng(seed)
    return frame.mask(rng.uniform(size=frame.shape) < fraction)


# Our statistics are float64 like sklearn's; the output is float32, so the two agree to
# float32 rounding (one ulp ~ 6e-8 relative), which rtol=1e-6 / atol=1e-6 covers.
TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.mark.parametrize(
    ("scaling", "oracle"),
    [("standardize", StandardScaler), ("minmax", MinMaxScaler), ("robust", RobustScaler)],
)
def test_scaling_equals_the_sklearn_scaler_fitted_on_train(scaling, oracle):
    train, test = frames()
    ours = NumericTransformer(COLUMNS, scaling=scaling).fit(train)
    theirs = oracle().fit(train.to_numpy())
    np.testing.assert_allclose(ours.transform(test), theirs.transform(test.to_numpy()), **TOL)
    np.testing.assert_allclose(ours.transform(train), theirs.transform(train.to_numpy()), **TOL)


def test_no_scaling_leaves_values_unchanged():
    train, test = frames()
    out = NumericTransformer(COLUMNS, scaling="none").fit(train).transform(test)
    np.testing.assert_array_equal(out, test.to_numpy(dtype=np.float32))


def test_a_constant_column_gets_scale_one_like_sklearn():
    train = pd.DataFrame({"a": [3.0] * 5, "b": [1.0, 2.0, 3.0, 4.0, 5.0]})
    for scaling, oracle in [("standardize", StandardScaler()), ("minmax", MinMaxScaler()),
                            ("robust", RobustScaler())]:
        ours = NumericTransformer(["a", "b"], scaling=scaling).fit(train)
        assert ours.scale_[0] == 1.0
        np.testing.assert_allclose(ours.transform(train), oracle.fit_transform(train), **TOL)


def test_scalings_can_differ_per_column():
    train, test = frames()
    ours = NumericTransformer(COLUMNS, scaling={"a": "minmax", "b": "none"}).fit(train)
    out = ours.transform(test)
    np.testing.assert_allclose(out[:, 0], MinMaxScaler().fit(train[["a"]])
                               .transform(test[["a"]])[:, 0], **TOL)
    np.testing.assert_array_equal(out[:, 1], test["b"].to_numpy(np.float32))
    np.testing.assert_allclose(out[:, 2], StandardScaler().fit(train[["c"]])
                               .transform(test[["c"]])[:, 0], **TOL)  # the default


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_fill_values_are_computed_from_train_like_simple_imputer(strategy):
    train, test = frames()
    train, test = with_missing(train), with_missing(test, seed=2)
    ours = NumericTransformer(COLUMNS, scaling="none", missing=strategy, fill_value=-1.0)
    ours.fit(train)
    theirs = SimpleImputer(strategy=strategy, fill_value=-1.0).fit(train.to_numpy())
    np.testing.assert_allclose(ours.fill_, theirs.statistics_.astype(float))
    np.testing.assert_allclose(ours.transform(test), theirs.transform(test.to_numpy()), **TOL)


def test_imputed_then_standardized_equals_the_sklearn_pipeline():
    train, test = frames()
    train, test = with_missing(train), with_missing(test, seed=3)
    ours = NumericTransformer(COLUMNS, missing={"b": "median"}).fit(train)  # a, c: mean
    theirs = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler())
    theirs.fit(train[["a", "c"]])
    b = make_pipeline(SimpleImputer(strategy="median"), StandardScaler()).fit(train[["b"]])
    out = ours.transform(test)
    np.testing.assert_allclose(out[:, [0, 2]], theirs.transform(test[["a", "c"]]), **TOL)
    np.testing.assert_allclose(out[:, 1], b.transform(test[["b"]])[:, 0], **TOL)
    assert ours.had_missing_ == [True, True, True]


def test_changing_test_rows_does_not_change_the_fit():
    train, test = frames()
    first = NumericTransformer(COLUMNS).fit(train).to_json()
    assert NumericTransformer(COLUMNS).fit(train.copy()).to_json() == first
    shifted = train.copy()
    shifted.loc[0, "a"] += 100
    assert NumericTransformer(COLUMNS).fit(shifted).to_json() != first


def test_clip_bounds_apply_before_scaling():
    train, test = frames()
    ours = NumericTransformer(["a", "b"], clip={"a": [4.0, 6.0], "b": [None, 2.0]}).fit(train)
    clipped = np.column_stack([train["a"].clip(4, 6), train["b"].clip(upper=2)])
    oracle = StandardScaler().fit(clipped)
    expected = oracle.transform(np.column_stack([test["a"].clip(4, 6), test["b"].clip(upper=2)]))
    np.testing.assert_allclose(ours.transform(test), expected, **TOL)


def test_json_round_trip_reproduces_transform_exactly():
    train, test = frames()
    train, test = with_missing(train), with_missing(test, seed=4)
    ours = NumericTransformer(COLUMNS, scaling={"b": "robust"}, missing="median",
                              clip={"c": [0.0, 2.0]}).fit(train)
    loaded = NumericTransformer.from_json(json.loads(json.dumps(ours.to_json())))
    np.testing.assert_array_equal(loaded.transform(test), ours.transform(test))


def test_a_string_in_a_numeric_column_names_column_row_and_value():
    train, _ = frames()
    ours = NumericTransformer(COLUMNS).fit(train)
    bad = train.head(4).astype({"b": object})
    bad.loc[2, "b"] = "twelve"
    with pytest.raises(DataError, match=r"column 'b', row 2: expected a number, got 'twelve'"):
        ours.transform(bad)


def test_numeric_strings_and_empty_cells_are_accepted():
    train = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    ours = NumericTransformer(["a"], scaling="none").fit(train)
    out = ours.transform(pd.DataFrame({"a": ["1.5", None, "3"]}))
    np.testing.assert_array_equal(out[:, 0], [1.5, 2.0, 3.0])


def test_infinite_values_are_refused_with_their_row():
    ours = NumericTransformer(["a"]).fit(pd.DataFrame({"a": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"column 'a', row 1: infinite value"):
        ours.transform(pd.DataFrame({"a": [1.0, np.inf]}))


@pytest.mark.parametrize("value, text", [(1e39, r"1e\+39"), (-1e300, r"-1e\+300")])
def test_values_beyond_float32_are_refused_with_their_row(value, text):
    ours = NumericTransformer(["a"]).fit(pd.DataFrame({"a": [1.0, 2.0]}))
    with pytest.raises(DataError, match=rf"column 'a', row 2: {text} is beyond float32's range "
                                        rf"\(±3\.4e38\)"):
        ours.transform(pd.DataFrame({"a": [1.0, 2.0, value]}))


def test_a_value_beyond_float32_once_scaled_is_refused_with_its_row():
    ours = NumericTransformer(["a"]).fit(pd.DataFrame({"a": [0.0, 0.001]}))  # scale 0.0005
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast"
        with pytest.raises(DataError, match=r"column 'a', row 1: 3e\+38 is too large for the "
                                            r"model: scaled, it is beyond float32's range"):
            ours.transform(pd.DataFrame({"a": [0.0, 3e38]}))


def test_a_column_without_training_values_is_refused():
    train = pd.DataFrame({"a": [1.0, 2.0], "b": [np.nan, np.nan]})
    with pytest.raises(DataError, match=r"column 'b' has no values in the training split"):
        NumericTransformer(["a", "b"]).fit(train)


def test_transform_before_fit_says_to_fit_first():
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit"):
        NumericTransformer(["a"]).transform(pd.DataFrame({"a": [1.0]}))
