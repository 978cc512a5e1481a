"""Fine-tuning works for every kind of network: a cnn on images, an rnn on text, a `multi`
model on a table with a text column; `all_but_head` really freezes what it names."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import dlpipe
from helpers import minimal_config


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "weights.safetensors"))


def _digits() -> pd.DataFrame:
    from dlpipe.data.builtin import load_builtin

    return load_builtin("digits", {"as_images": True})


def _parent(tmp_path_factory, name: str, source, **sections):
    cfg = minimal_config(**sections)
    cfg["train"] = {"epochs": 2, "batch_size": 64, "progress": "never", "threads": 1,
                    "optimizer": {"name": "adam", "lr": 3e-3}, **cfg.get("train", {})}
    if isinstance(source, dict):  # a `data.source` mapping
        cfg["data"] = {**cfg["data"], "source": source}
        source = None
    return dlpipe.run(cfg, data=source, run_dir=tmp_path_factory.mktemp(name) / "parent")


@pytest.fixture(scope="module")
def cnn_parent(tmp_path_factory):
    """A one-block cnn on the first 900 digits (8x8 images)."""
    return _parent(tmp_path_factory, "cnn", _digits().iloc[:900].reset_index(drop=True),
                   data={"target": "target", "split": {"val": 0.2, "test": 0.2}},
                   model={"name": "cnn", "blocks": [{"channels": 4, "kernel": 3, "pool": "max"}],
                          "hidden": [16]})


@pytest.fixture(scope="module")
def rnn_parent(tmp_path_factory):
    """A small GRU on generated reviews."""
    return _parent(tmp_path_factory, "rnn",
                   {"builtin": "reviews", "params": {"n": 400, "seed": 0}},
                   data={"split": {"val": 0.2, "test": 0.2}},
                   features={"text": {"max_length": 16}},
                   model={"name": "rnn", "cell": "gru", "embedding_dim": 8, "hidden": 8})


@pytest.fixture(scope="module")
def multi_parent(tmp_path_factory):
    """A `multi` model: the table through embeddings, the review through an LSTM."""
    return _parent(tmp_path_factory, "multi",
                   {"builtin": "returns", "params": {"n": 400, "seed": 0}},
                   data={"target": "returned", "split": {"val": 0.2, "test": 0.2}},
                   features={"categorical": "embedding", "text": {"max_length": 16}},
                   model={"name": "multi", "hidden": [8], "encoders": {
                       "review": {"name": "rnn", "hidden": 8, "embedding_dim": 8}}})


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _new_digits() -> pd.DataFrame:
    """The other 897 digits, brighter and with an offset: data the parent never saw."""
    frame = _digits().iloc[900:].reset_index(drop=True)
    frame["image"] = [_npy(np.clip(np.load(io.BytesIO(image)) * 0.7 + 4.0, 0, 16))
                      for image in frame["image"]]
    return frame


NEW_DATA = {
    "cnn": _new_digits,
    "rnn": lambda: {"builtin": "reviews", "params": {"n": 300, "seed": 7}},
    "multi": lambda: {"builtin": "returns", "params": {"n": 300, "seed": 7}},
}


@pytest.mark.parametrize("kind", ["cnn", "rnn", "multi"])
def test_all_but_head_trains_only_the_head_of_every_model_type(kind, request, tmp_path):
    parent = request.getfixturevalue(f"{kind}_parent")
    result = dlpipe.finetune_from(parent.path, data=NEW_DATA[kind](), run_dir=tmp_path / "child",
                                  overrides=["finetune.freeze=all_but_head", "finetune.epochs=2"])
    old, new = _tensors(parent.path), _tensors(result.path)
    assert set(old) == set(new)
    frozen = set(result.report["frozen"])
    trainable = [name for name in old if name not in frozen]
    # Everything but the last block with parameters is frozen, and stays bit for bit.
    assert frozen and trainable, (sorted(frozen), trainable)
    assert len({name.split(".")[0] for name in trainable}) == 1, trainable
    for name in frozen:
        assert new[name].numpy().tobytes() == old[name].numpy().tobytes(), name
    assert any(not np.array_equal(new[n].numpy(), old[n].numpy()) for n in trainable)
    # The new data's metrics of the parent as it is and fine-tuned, on val and test.
    for when in ("before", "after"):
        for split in ("val", "test"):
            assert 0 <= result.report[when][split]["accuracy"] <= 1, (when, split)
    assert result.after["test"] == result.metrics["test"]
    assert result.report["parameters"]["frozen"] > 0
    assert len(result.history) == 2


@pytest.mark.parametrize("kind", ["cnn", "rnn", "multi"])
def test_fine_tuning_everything_changes_every_layer_and_predictions_load(kind, request,
                                                                         tmp_path):
    parent = request.getfixturevalue(f"{kind}_parent")
    result = dlpipe.finetune_from(parent.path, data=NEW_DATA[kind](), run_dir=tmp_path / "child",
                                  overrides=["finetune.epochs=1"])
    assert result.report["frozen"] == []
    old, new = _tensors(parent.path), _tensors(result.path)
    changed = {name.split(".")[0] for name in old
               if old[name].is_floating_point() and not np.array_equal(old[name].numpy(),
                                                                        new[name].numpy())}
    assert len(changed) >= 2, changed  # not only the head
    test = result.rundir.read_split("test")
    target = {"cnn": "target", "rnn": "target", "multi": "returned"}[kind]
    predicted = dlpipe.load(result.path).predict(test.drop(columns=target))
    accuracy = float(np.mean(np.asarray(predicted.labels) == test[target].to_numpy()))
    assert accuracy == pytest.approx(result.after["test"]["accuracy"], abs=1e-9)
