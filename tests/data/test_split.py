import numpy as np
import pandas as pd
import pytest

from dlpipe.data import kfold_indices, split_indices
from dlpipe.errors import DataError


def labelled_frame(counts=(600, 300, 100), seed=0):
    """Rows of three classes in the given counts, shuffled, with a group and a time column."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(y)
    n = len(y)
    return pd.DataFrame({
        "x": rng.normal(size=n),
        "group": rng.integers(0, 50, size=n),
        "time": rng.permutation(n),
        "y": y,
    })


@pytest.mark.parametrize(
    "method, extra",
    [("random", {}), ("stratified", {}), ("group", {"group_column": "group"}),
     ("time", {"time_column": "time"})],
)
def test_split_indices_are_disjoint_and_cover_every_row(method, extra):
    frame = labelled_frame()
    parts = split_indices(frame, method=method, target="y", task="multiclass", seed=1, **extra)
    everything = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert len(everything) == len(set(everything.tolist())) == len(frame)
    assert sorted(everything.tolist()) == list(range(len(frame)))


def test_random_split_gives_rounded_fractions_of_the_rows():
    parts = split_indices(labelled_frame(), method="random", val=0.15, test=0.25, seed=0)
    # 1000 rows: round(150) and round(250) exactly, the rest to train.
    assert {k: len(v) for k, v in parts.items()} == {"train": 600, "val": 150, "test": 250}


def test_stratified_split_keeps_class_ratios_within_one_row():
    frame = labelled_frame(counts=(600, 300, 100))
    parts = split_indices(frame, method="stratified", val=0.15, test=0.15, target="y",
                          task="multiclass", seed=3)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    for name, positions in parts.items():
        counts = frame["y"].iloc[positions].value_counts()
        for label, total in zip((0, 1, 2), (600, 300, 100), strict=True):
            assert abs(counts[label] - fractions[name] * total) <= 1, (name, label)


def test_auto_split_is_stratified_for_classification_and_random_for_regression():
    frame = labelled_frame()
    auto = split_indices(frame, method="auto", target="y", task="multiclass", seed=5)
    stratified = split_indices(frame, method="stratified", target="y", task="multiclass", seed=5)
    random = split_indices(frame, method="random", target="y", task="regression", seed=5)
    auto_regression = split_indices(frame, method="auto", target="y", task="regression", seed=5)
    assert all(np.array_equal(auto[k], stratified[k]) for k in auto)
    assert all(np.array_equal(auto_regression[k], random[k]) for k in random)


def test_group_split_never_puts_a_group_in_two_splits():
    frame = labelled_frame()
    parts = split_indices(frame, method="group", group_column="group", val=0.2, test=0.2, seed=0)
    groups = {name: set(frame["group"].iloc[p]) for name, p in parts.items()}
    assert groups["train"].isdisjoint(groups["val"])
    assert groups["train"].isdisjoint(groups["test"])
    assert groups["val"].isdisjoint(groups["test"])
    # 50 groups: 10 for val and 10 for test.
    assert (len(groups["val"]), len(groups["test"])) == (10, 10)


def test_time_split_puts_the_earliest_rows_in_train_then_val_then_test():
    frame = labelled_frame()
    parts = split_indices(frame, method="time", time_column="time", val=0.1, test=0.2)
    times = {name: frame["time"].iloc[p] for name, p in parts.items()}
    assert times["train"].max() < times["val"].min()
    assert times["val"].max() < times["test"].min()
    assert times["test"].max() == len(frame) - 1
    assert (len(times["train"]), len(times["val"]), len(times["test"])) == (700, 100, 200)


def test_column_split_follows_the_split_column():
    names = np.array(["train", "val", "test", "train", "train", "test"])
    frame = pd.DataFrame({"x": range(6), "fold": names})
    parts = split_indices(frame, method="column", split_column="fold")
    assert {k: v.tolist() for k, v in parts.items()} == {
        "train": [0, 3, 4], "val": [1], "test": [2, 5]}


def test_column_split_names_the_row_of_an_unknown_split_value():
    frame = pd.DataFrame({"x": range(4), "fold": ["train", "val", "dev", "test"]})
    with pytest.raises(DataError, match=r"holds 'dev' at row 2 .*allowed values: train, val, "):
        split_indices(frame, method="column", split_column="fold")


def test_split_is_the_same_for_a_seed_and_differs_for_another_seed():
    frame = labelled_frame()
    first = split_indices(frame, method="stratified", target="y", task="multiclass", seed=7)
    again = split_indices(frame, method="stratified", target="y", task="multiclass", seed=7)
    other = split_indices(frame, method="stratified", target="y", task="multiclass", seed=8)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])


def test_too_few_rows_for_the_fractions_say_how_many_rows_are_needed():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.1, 0.2, 0.3]})
    # 3 * 0.15 = 0.45 rounds to no validation row; 0.5 / 0.15 -> 4 rows needed.
    with pytest.raises(DataError, match=r"data\.split\.val: 3 rows are too few for val=0\.15.*"
                                        r"at least 4 rows"):
        split_indices(frame, method="random", val=0.15, test=0.15)


def test_stratification_with_a_single_member_class_is_impossible():
    frame = pd.DataFrame({"x": range(40), "y": [0] * 20 + [1] * 19 + [2]})
    with pytest.raises(DataError, match=r"class 2 has only 1 row, and each class needs at "
                                        r"least 3"):
        split_indices(frame, method="stratified", target="y", task="multiclass")


def test_a_training_split_with_a_single_class_is_refused():
    frame = pd.DataFrame({"x": range(6), "y": [0, 0, 0, 1, 1, 1],
                          "fold": ["train", "train", "train", "val", "test", "test"]})
    with pytest.raises(DataError, match=r"training split holds a single class \(0\)"):
        split_indices(frame, method="column", split_column="fold", target="y", task="binary")


def test_stratified_method_for_a_regression_task_is_refused():
    with pytest.raises(DataError, match=r"data\.split\.method: 'stratified' needs a "
                                        r"classification task"):
        split_indices(labelled_frame(), method="stratified", target="y", task="regression")


def test_kfold_folds_partition_the_rows_and_keep_class_ratios():
    frame = labelled_frame(counts=(500, 250, 250))
    schema = {"target": "y", "task": "multiclass", "group_column": None}
    folds = kfold_indices(frame, schema, k=5, seed=0)
    held_out = np.concatenate([held for _, held in folds])
    assert sorted(held_out.tolist()) == list(range(len(frame)))
    for train, held in folds:
        assert len(np.intersect1d(train, held)) == 0
        assert len(train) + len(held) == len(frame)
        # StratifiedKFold: each fold of 200 rows holds exactly 100/50/50.
        assert frame["y"].iloc[held].value_counts().sort_index().tolist() == [100, 50, 50]


def test_kfold_with_a_group_column_never_splits_a_group():
    frame = labelled_frame()
    schema = {"target": "y", "task": "multiclass", "group_column": "group"}
    for train, held in kfold_indices(frame, schema, k=4, seed=0):
        assert set(frame["group"].iloc[train]).isdisjoint(frame["group"].iloc[held])


def test_kfold_with_more_folds_than_rows_of_a_class_is_refused():
    frame = pd.DataFrame({"x": range(30), "y": [0] * 27 + [1] * 3})
    with pytest.raises(DataError, match=r"class 1 has only 3 rows, and each class needs at "
                                        r"least 5"):
        kfold_indices(frame, {"target": "y", "task": "binary"}, k=5)
