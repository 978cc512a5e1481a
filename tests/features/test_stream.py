"""Fitting the features in one streaming pass (`partial_fit`, `fit_features_stream`).

The oracle is `fit` / `fit_features` on the concatenated chunks: exact statistics must agree
to 1e-10 relative, categories exactly; the sampled ones (median, robust) within a stated
tolerance.
"""

import json

import numpy as np
import pandas as pd
import pytest

from dlpipe._running import Reservoir
from dlpipe.config import FeaturesConfig
from dlpipe.errors import DataError, RunDirError
from dlpipe.features import (
    BinaryEncoder,
    CategoricalEncoder,
    NumericTransformer,
    TabularFeatures,
    TargetEncoder,
    encoders,
    fit_features,
    fit_features_stream,
)
from dlpipe.features.stream import fit_tabular_stream

SIZES = [1, 7, 0, 523, 1, 1200, 268]  # uneven, with a 1-row and an empty chunk
N_ROWS = sum(SIZES)


def table(n=N_ROWS, seed=0):
    rng = np.random.default_rng(seed)

    def holes(values, rate):
        values = values.astype(float)
        values[rng.uniform(size=n) < rate] = np.nan
        return values

    color = rng.choice(["red", "green", "blue", "teal", "pink"], n, p=[.5, .3, .197, .002, .001])
    color = np.where(rng.uniform(size=n) < 0.1, None, color).astype(object)
    smoker = np.where(rng.uniform(size=n) < 0.3, "yes", "no").astype(object)
    smoker[rng.uniform(size=n) < 0.05] = None
    return pd.DataFrame({
        "age": holes(rng.normal(40, 15, n), 0.2),         # mean fill, clipped, standardize
        "income": holes(rng.lognormal(3, 1, n), 0.1),     # constant fill, clipped, minmax
        "score": holes(rng.normal(1e6, 1, n), 0.05),      # large mean, tiny variance
        "visits": holes(rng.poisson(3, n), 0.1),          # median fill, robust
        "rooms": holes(rng.integers(1, 6, n), 0.1),       # most_frequent fill, none
        "color": color,                                    # rare categories, most_frequent
        "city": rng.choice(["oslo", "rome", "lima", "kyiv"], n),  # embedding
        "smoker": smoker,                                  # binary with missing values
        "label": rng.choice(["a", "b", "c"], n),
        "price": rng.normal(250.0, 40.0, n),
    })


SCHEMA = {
    "target": "label",
    "task": "multiclass",
    "classes": None,
    "columns": [
        {"name": "age", "kind": "numeric", "dtype": "float64"},
        {"name": "income", "kind": "numeric", "dtype": "float64"},
        {"name": "score", "kind": "numeric", "dtype": "float64"},
        {"name": "visits", "kind": "numeric", "dtype": "float64"},
        {"name": "rooms", "kind": "numeric", "dtype": "float64"},
        {"name": "color", "kind": "categorical", "dtype": "object"},
        {"name": "city", "kind": "categorical", "dtype": "object"},
        {"name": "smoker", "kind": "binary", "dtype": "object"},
    ],
    "missing": {"income": "constant", "visits": "median", "rooms": "most_frequent",
                "color": "most_frequent"},
    "fill_value": 5.0,
    "indicator": True,
    "clip": {"age": [18.0, 70.0], "income": [None, 60.0]},
}
SECTION = FeaturesConfig(min_frequency=5, columns={
    "income": "minmax", "visits": "robust", "rooms": "none", "city": "embedding"})


def chunks_of(frame, sizes=SIZES):
    edges = np.cumsum([0, *sizes])
    return [frame.iloc[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def assert_json_close(streamed, fitted, path="$"):
    """Equal JSON documents, floats to 1e-10 relative (ints, strings, lists: exactly)."""
    if isinstance(fitted, dict):
        assert streamed.keys() == fitted.keys(), path
        for key in fitted:
            assert_json_close(streamed[key], fitted[key], f"{path}.{key}")
    elif isinstance(fitted, list):
        assert len(streamed) == len(fitted), path
        for i, (s, f) in enumerate(zip(streamed, fitted, strict=True)):
            assert_json_close(s, f, f"{path}[{i}]")
    elif isinstance(fitted, float):
        assert type(streamed) is float, path
        assert np.allclose(streamed, fitted, rtol=1e-10, atol=0), (path, streamed, fitted)
    else:
        assert type(streamed) is type(fitted) and streamed == fitted, (path, streamed, fitted)


# -- the whole stage ------------------------------------------------------------------------------


@pytest.mark.parametrize("task, target", [("multiclass", "label"), ("regression", "price")])
def test_stream_matches_fit_on_the_concatenation(task, target):
    frame = table()
    schema = {**SCHEMA, "task": task, "target": target}
    train = frame.drop(columns=["price" if target == "label" else "label"])
    streamed = fit_features_stream(schema, SECTION, iter(chunks_of(train)), seed=3)
    fitted = fit_features(schema, SECTION, train)

    document = streamed.to_json()
    json.dumps(document, allow_nan=False)  # plain, strict JSON
    assert_json_close(document, fitted.to_json())
    x_stream, y_stream = streamed.arrays(train)
    x_fit, y_fit = fitted.arrays(train)
    np.testing.assert_allclose(x_stream, x_fit, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_stream, y_fit, rtol=1e-6, atol=1e-6)
    # the settings did reach the encoders: rare colours dropped, indicators, clip applied
    parts = document["inputs"]["fitted"]["parts"]
    assert parts["onehot"]["fitted"]["categories"] == [["blue", "green", "red"]]
    assert parts["onehot"]["fitted"]["rare"] == [["pink", "teal"]]
    assert document["inputs"]["fitted"]["indicators"] == [
        "age", "income", "score", "visits", "rooms", "color", "smoker"]
    assert parts["numeric"]["fitted"]["scale"][1] == pytest.approx(60.0 - train["income"].min())


def test_every_partial_fit_leaves_the_fit_of_the_rows_so_far():
    frame = table(400)
    columns = [c for c in SCHEMA["columns"] if c["name"] != "visits"]  # exact statistics only
    settings = {"missing": {"income": "constant", "color": "most_frequent"}, "fill_value": 5.0,
                "indicator": True, "clip": SCHEMA["clip"], "min_frequency": 3}
    streamed = TabularFeatures(columns, **settings)
    seen = 0
    for chunk in chunks_of(frame, [1, 2, 150, 247]):
        streamed.partial_fit(chunk)
        seen += len(chunk)
        if seen >= 3:  # the binary column has both values by then
            fitted = TabularFeatures(columns, **settings).fit(frame.iloc[:seen])
            assert_json_close(streamed.to_json(), fitted.to_json())
            assert streamed.feature_names_ == fitted.feature_names_


def test_a_column_missing_from_the_first_chunks_is_fitted_once_values_arrive():
    frame = table(300)
    frame.loc[:99, ["age", "smoker"]] = np.nan
    frame["smoker"] = frame["smoker"].astype(object).where(frame["smoker"].notna(), None)
    streamed = fit_features_stream(SCHEMA, SECTION, chunks_of(frame, [100, 200]))
    assert_json_close(streamed.to_json(), fit_features(SCHEMA, SECTION, frame).to_json())


def test_stream_refuses_text_and_image_columns():
    schema = {**SCHEMA, "columns": [*SCHEMA["columns"],
                                    {"name": "review", "kind": "text", "dtype": "object"}]}
    with pytest.raises(DataError, match=r"streaming \(data.stream: true\) supports tabular "
                                        r"columns; column 'review' is text"):
        fit_features_stream(schema, SECTION, chunks_of(table()))
    schema["columns"][-1] = {"name": "photo", "kind": "image", "dtype": "object"}
    with pytest.raises(DataError, match="column 'photo' is image"):
        fit_features_stream(schema, SECTION, chunks_of(table()))


@pytest.mark.parametrize("chunks", [[], [table().iloc[:0]]], ids=["no chunks", "empty chunk"])
def test_empty_stream_is_a_data_error(chunks):
    with pytest.raises(DataError, match="training split has no rows"):
        fit_features_stream(SCHEMA, SECTION, iter(chunks))


def test_column_without_any_value_and_chunk_without_target_are_refused():
    frame = table(50)
    frame["age"] = np.nan
    with pytest.raises(DataError, match="column 'age' has no values in the training split"):
        fit_features_stream(SCHEMA, SECTION, chunks_of(frame, [20, 30]))
    frame = table(50)
    frame["smoker"] = None
    with pytest.raises(DataError, match="'smoker' is binary in schema.json but has 0"):
        fit_features_stream(SCHEMA, SECTION, chunks_of(frame, [20, 30]))
    with pytest.raises(RunDirError, match="no target column 'label'"):
        fit_features_stream(SCHEMA, SECTION, [table(10).drop(columns="label")])


def test_binary_stream_errors_like_fit():
    with pytest.raises(DataError, match="'smoker' is binary in schema.json but has 3"):
        BinaryEncoder(["smoker"]).partial_fit(pd.DataFrame({"smoker": ["no", "yes"]})) \
            .partial_fit(pd.DataFrame({"smoker": ["maybe"]}))
    target = TargetEncoder("binary", name="label").partial_fit(["no", "no"])
    with pytest.raises(DataError, match="a binary task needs 2 classes; got 1"):
        target.check_complete()
    target.partial_fit(["yes"]).check_complete()
    assert target.classes_ == ["no", "yes"]
    with pytest.raises(DataError, match="needs 2 classes; got 3"):
        target.partial_fit(["maybe"])
    with pytest.raises(DataError, match="row 1: missing value"):
        TargetEncoder("multiclass", name="label").partial_fit(["a", None])


# -- the transformers -----------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["standardize", "minmax", "none"])
@pytest.mark.parametrize("missing", ["mean", "constant"])
def test_numeric_exact_statistics(scaling, missing):
    frame = table()[["age", "income", "score"]]
    params = {"scaling": scaling, "missing": missing, "fill_value": 1e3,
              "clip": {"age": [18.0, 70.0], "income": [None, 60.0]}}
    streamed = NumericTransformer(list(frame), **params)
    for chunk in chunks_of(frame):
        streamed.partial_fit(chunk)
    fitted = NumericTransformer(list(frame), **params).fit(frame)
    assert_json_close(streamed.to_json(), fitted.to_json())
    # atol: at a mean of 1e6 the fill and the center differ by rounding (1e-10 after scaling)
    np.testing.assert_allclose(streamed.transform(frame), fitted.transform(frame), rtol=1e-6,
                               atol=1e-6)


def test_constant_column_gets_scale_one_as_in_fit():
    frame = pd.DataFrame({"flat": [0.1] * 7 + [np.nan] * 3})
    streamed = NumericTransformer(["flat"])
    for chunk in chunks_of(frame, [1, 3, 6]):
        streamed.partial_fit(chunk)
    assert streamed.scale_ == NumericTransformer(["flat"]).fit(frame).scale_ == [1.0]


def test_sampled_statistics_are_exact_while_the_sample_holds_every_value():
    frame = table()[["visits", "rooms"]]
    params = {"scaling": "robust", "missing": {"visits": "median", "rooms": "most_frequent"}}
    streamed = NumericTransformer(["visits", "rooms"], **params)
    for chunk in chunks_of(frame):
        streamed.partial_fit(chunk, reservoir_size=N_ROWS)
    fitted = NumericTransformer(["visits", "rooms"], **params).fit(frame)
    assert streamed.to_json() == fitted.to_json()


def test_median_and_robust_from_a_small_sample_are_within_tolerance():
    rng = np.random.default_rng(1)
    n = 40_000
    values = rng.normal(10.0, 3.0, n)
    values[rng.uniform(size=n) < 0.1] = np.nan
    frame = pd.DataFrame({"x": values})
    params = {"scaling": "robust", "missing": "median"}
    streamed = NumericTransformer(["x"], **params)
    for chunk in chunks_of(frame, [1, 9_999, 15_000, 15_000]):
        streamed.partial_fit(chunk, seed=7, reservoir_size=2_000)
    fitted = NumericTransformer(["x"], **params).fit(frame)
    # 2,000 of 36,000 values: quartiles within 10 % of the interquartile range (about 15
    # standard errors of a median of 2,000 normal values).
    iqr = fitted.scale_[0]
    assert abs(streamed.fill_[0] - fitted.fill_[0]) < 0.1 * iqr
    assert abs(streamed.center_[0] - fitted.center_[0]) < 0.1 * iqr
    assert streamed.scale_[0] == pytest.approx(iqr, rel=0.1)
    assert streamed.fill_ != fitted.fill_  # it is a sample, not the data
    assert streamed._stream.samples[0].values.shape == (2_000,)


def test_categorical_counts_are_exact_across_chunks():
    frame = table()[["color", "city"]]
    expected = {  # the colours kept: rare ones dropped; a filled-in value counted
        "most_frequent": ["blue", "green", "red"],
        "constant": ["blue", "green", "red", "violet"],
        "none": ["blue", "green", "pink", "red", "teal"],
    }
    for params in ({"min_frequency": 5, "missing": "most_frequent"},
                   {"min_frequency": 5, "missing": "constant", "fill_value": "violet"},
                   {"min_frequency": 1, "encoding": "embedding"}):
        streamed = CategoricalEncoder(["color", "city"], **params)
        for chunk in chunks_of(frame):
            streamed.partial_fit(chunk)
        fitted = CategoricalEncoder(["color", "city"], **params).fit(frame)
        assert streamed.to_json() == fitted.to_json(), params
        assert streamed.categories_[0] == expected[params.get("missing", "none")]
        np.testing.assert_array_equal(streamed.transform(frame), fitted.transform(frame))


def test_fit_after_partial_fit_starts_afresh():
    frame = table(100)[["age"]]
    numeric = NumericTransformer(["age"]).partial_fit(frame.iloc[:50])
    assert numeric.fit(frame.iloc[50:]).partial_fit(frame.iloc[:50]).to_json() == \
        NumericTransformer(["age"]).fit(frame.iloc[:50]).to_json()


# -- the reservoir --------------------------------------------------------------------------------


def test_reservoir_never_exceeds_its_size_and_is_uniform():
    reservoir = Reservoir(1_000, seed=0)
    for start in range(0, 100_000, 7_919):
        reservoir.add(np.arange(start, min(start + 7_919, 100_000), dtype=float))
        assert len(reservoir.values) <= 1_000
    assert reservoir.seen == 100_000
    sample = reservoir.values
    assert len(np.unique(sample)) == 1_000  # distinct positions
    # uniform over 0..99,999: mean 50,000, standard error 28,868 / sqrt(1000) ≈ 913
    assert abs(sample.mean() - 50_000) < 3_000
    assert np.histogram(sample, bins=4, range=(0, 100_000))[0].min() > 200


def test_reservoir_depends_on_the_seed_not_on_the_chunking():
    values = np.random.default_rng(0).normal(size=5_000)
    one = Reservoir(300, seed=11).add(values).values
    cut = Reservoir(300, seed=11)
    for chunk in np.split(values, [1, 2, 299, 300, 301, 2_000]):
        cut.add(chunk)
    np.testing.assert_array_equal(one, cut.values)
    assert not np.array_equal(one, Reservoir(300, seed=12).add(values).values)


def test_numeric_partial_fit_keeps_at_most_reservoir_size_values_per_sampled_column():
    frame = table()
    numeric = NumericTransformer(["age", "visits", "rooms"], scaling={"visits": "robust"},
                                 missing={"rooms": "median"})
    for chunk in chunks_of(frame):
        numeric.partial_fit(chunk, reservoir_size=50)
        samples = numeric._stream.samples
        assert samples[0] is None  # mean + standardize: nothing sampled
        assert all(len(s.values) <= 50 for s in samples[1:])
    assert [s.seen for s in samples[1:]] == [frame["visits"].notna().sum(),
                                              frame["rooms"].notna().sum()]


def test_stream_is_deterministic_given_the_seed():
    frame = table(5_000)
    frame["visits"] += np.random.default_rng(0).uniform(size=len(frame))  # continuous
    schema = {**SCHEMA, "target": "label"}
    runs = [fit_tabular_stream(*encoders(schema, SECTION, schema["columns"]),
                               chunks_of(frame, sizes), schema=schema, seed=seed,
                               reservoir_size=100)[0].to_json()
            for seed, sizes in [(0, [5_000]), (0, [1, 2_000, 2_999]), (1, [5_000])]]
    assert_json_close(runs[0], runs[1])  # the exact statistics, to rounding

    def sampled(document):  # visits: median fill, robust scaling, from 100 of ~4,500 values
        fitted = document["fitted"]["parts"]["numeric"]["fitted"]
        return [fitted[key][3] for key in ("fill", "center", "scale")]

    assert sampled(runs[0]) == sampled(runs[1])  # bit for bit, whatever the chunking
    assert sampled(runs[0]) != sampled(runs[2])
