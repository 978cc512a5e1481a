"""Trained runs shared by the export tests (module-scoped: training is the slow part)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dlpipe
from helpers import minimal_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

STAGES = ("data", "features", "train", "evaluate", "export")
FAST_TRAIN = {"epochs": 8, "batch_size": 32, "progress": "never", "checkpoint_every": 1000}


def frame_with_a_categorical(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Six numeric columns, a categorical `color` that carries signal, a binary target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = x[:, 0] - x[:, 1] + np.where(color == "red", 1.5, -0.5)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["color"] = color
    frame["target"] = (logit + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return frame


def trained_run(path, task: str):
    """A small trained and exported run of `task` (binary has an embedded categorical)."""
    if task == "binary":
        cfg = minimal_config(train=FAST_TRAIN, features={"categorical": "embedding"},
                             export={"parity_rows": 64})
        cfg["data"].pop("source")
        return dlpipe.run(cfg, run_dir=path, stages=STAGES, data=frame_with_a_categorical())
    params = {"n_samples": 300, "n_features": 6, "random_state": 0}
    source = {"builtin": "make_regression", "params": params} if task == "regression" else {
        "builtin": "make_classification", "params": {**params, "n_informative": 4,
                                                      "n_classes": 3}}
    cfg = minimal_config(train=FAST_TRAIN, export={"parity_rows": 64})
    cfg["data"]["source"] = source
    return dlpipe.run(cfg, run_dir=path, stages=STAGES)


@pytest.fixture(scope="session")
def _runs(tmp_path_factory):
    made: dict[str, object] = {}

    def get(task: str):
        if task not in made:
            made[task] = trained_run(tmp_path_factory.mktemp(task) / "run", task)
        return made[task]

    return get


@pytest.fixture(params=["binary", "multiclass", "regression"])
def exported(request, _runs):
    return _runs(request.param)


@pytest.fixture
def binary_run(_runs):
    return _runs("binary")
