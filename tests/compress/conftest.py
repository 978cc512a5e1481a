"""Trained runs shared by the compress tests (training is the slow part, so each is made once)."""

from __future__ import annotations

import shutil

import pytest

import dlpipe
from dlpipe import runs
from dlpipe.pipeline import load_run_config, run_stage
from dlpipe.runs import RunDir
from helpers import minimal_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TRAINED = ("data", "features", "train", "evaluate")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A trained run on make_classification (400 rows, 8 features), MLP 32-16."""
    cfg = minimal_config(
        model={"name": "mlp", "hidden": [32, 16]},
        train={"epochs": 15, "batch_size": 32, "progress": "never", "checkpoint_every": 1000})
    return dlpipe.run(cfg, run_dir=tmp_path_factory.mktemp("tiny") / "run", stages=TRAINED)


@pytest.fixture(scope="session")
def breast_cancer(tmp_path_factory):
    """The quickstart's data and model (breast cancer, MLP 64-32), trained briefly."""
    cfg = minimal_config(
        data={"source": {"builtin": "breast_cancer"}, "split": {"val": 0.15, "test": 0.2}},
        model={"name": "mlp", "hidden": [64, 32]},
        train={"epochs": 30, "batch_size": 32, "progress": "never", "checkpoint_every": 1000,
               "optimizer": {"name": "adamw", "lr": 3.0e-3}},
    )
    return dlpipe.run(cfg, run_dir=tmp_path_factory.mktemp("bc") / "run", stages=TRAINED)


@pytest.fixture
def compressed(trained, tmp_path):
    """compressed(**section) → (rundir, report): compress a copy of `trained` (or of the run
    given as `run=`) with this `compress:` section."""

    def make(run=None, **section):
        source = run or trained
        target = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source.path, target)
        rundir = RunDir.open(target)
        config = rundir.read_yaml(runs.CONFIG)
        config["compress"] = {"latency_runs": 3, "finetune_epochs": 1, **section}
        rundir.write_yaml(runs.CONFIG, config)
        cfg = load_run_config(rundir)
        return rundir, run_stage("compress", cfg, rundir)

    return make
