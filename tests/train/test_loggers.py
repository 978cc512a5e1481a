"""Experiment loggers: config checks, TensorBoard event files, and MLflow against a fake module.

MLflow is a large install, so it is not in the dev extra: its logger is tested against a
stand-in `mlflow` module with the same client API (`MlflowClient`, `entities.Metric/Param`).
"""

import importlib.machinery
import sys
import types
from collections import namedtuple

import pytest

import dlpipe
from dlpipe import runs
from dlpipe.config import load_config
from dlpipe.errors import ConfigError
from dlpipe.pipeline import check
from helpers import minimal_config

TRAIN_ONLY = ("data", "features", "train")


def _config(*loggers, epochs=3):
    cfg = minimal_config(report={"enabled": True})
    cfg["train"].update(loggers=list(loggers), epochs=epochs)
    return cfg


def test_an_unknown_logger_or_argument_is_a_config_error_with_its_path():
    with pytest.raises(ConfigError, match=r"train\.loggers\[0\]\.name: unknown logger "
                                          r"'tensorbord'\. Did you mean 'tensorboard'\?"):
        check(load_config(_config("tensorbord")))
    with pytest.raises(ConfigError, match=r"train\.loggers\[1\]\.log_dri: unknown argument "
                                          r"'log_dri'\. Did you mean 'log_dir'\?"):
        check(load_config(_config("tensorboard", {"name": "tensorboard", "log_dri": "x"})))


def test_a_missing_extra_names_the_pip_command_before_anything_runs(monkeypatch):
    from dlpipe.train import loggers

    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.loggers\[0\]\.name: the tensorboard logger "
                                          r"needs the tensorboard package: "
                                          r"pip install 'dlpipe\[tensorboard\]'"):
        check(load_config(_config("tensorboard")))


def test_tensorboard_gets_every_epochs_metrics_and_the_reports_plots(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = dlpipe.run(_config("tensorboard"), run_dir=tmp_path / "run")
    log_dir = tmp_path / "run" / "tensorboard"
    assert result.rundir.read_json(runs.LOGGERS) == {"tensorboard": {"log_dir": str(log_dir)}}
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    history = result.rundir.read_jsonl(runs.HISTORY)
    val_loss = events.Scalars("val_loss")
    assert [e.step for e in val_loss] == [row["epoch"] for row in history]
    assert [e.value for e in val_loss] == pytest.approx([row["val_loss"] for row in history])
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(
        result.metrics["test"]["accuracy"])
    assert "report/learning_curves" in events.Tags()["images"]
    assert any(tag.startswith("weights/") for tag in events.Tags()["histograms"])


# -- MLflow, against a stand-in module --------------------------------------------------------

Metric = namedtuple("Metric", "key value timestamp step")
Param = namedtuple("Param", "key value")


class FakeClient:
    """Records what an `MlflowClient` would have been asked to do."""

    calls: list[tuple] = []

    def __init__(self, tracking_uri=None):
        self.calls.append(("client", tracking_uri))

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name):
        self.calls.append(("create_experiment", name))
        return "7"

    def create_run(self, experiment_id, run_name=None, tags=None):
        self.calls.append(("create_run", experiment_id, run_name))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls.append(("log_batch", run_id, list(metrics), list(params)))

    def set_terminated(self, run_id, status=None):
        self.calls.append(("set_terminated", run_id))

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self.calls.append(("log_artifact", run_id, local_path))

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        self.calls.append(("log_artifacts", run_id, local_dir, artifact_path))


@pytest.fixture
def fake_mlflow(monkeypatch):
    root = types.ModuleType("mlflow")
    root.__spec__ = importlib.machinery.ModuleSpec("mlflow", None)
    root.get_tracking_uri = lambda: "file:///default/mlruns"
    entities = types.ModuleType("mlflow.entities")
    entities.Metric, entities.Param = Metric, Param
    tracking = types.ModuleType("mlflow.tracking")
    tracking.MlflowClient = FakeClient
    root.entities, root.tracking = entities, tracking
    for name, module in (("mlflow", root), ("mlflow.entities", entities),
                         ("mlflow.tracking", tracking)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeClient.calls = []
    return FakeClient.calls


def test_mlflow_logs_params_then_each_epoch_then_the_report_artifacts(fake_mlflow, tmp_path):
    cfg = _config({"name": "mlflow", "experiment": "churn", "tracking_uri": "file:./mlruns"})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    calls = fake_mlflow
    assert ("create_experiment", "churn") in calls
    assert ("create_run", "7", "run") in calls
    batches = [c for c in calls if c[0] == "log_batch"]
    params = {p.key: p.value for c in batches for p in c[3]}
    assert params["train.epochs"] == "3" and params["model.name"] == "mlp"
    epochs = [c[2] for c in batches if c[2] and c[2][0].key != "test_accuracy"]
    history = result.rundir.read_jsonl(runs.HISTORY)
    assert len(epochs) == len(history)
    for metrics, row in zip(epochs, history, strict=True):
        logged = {m.key: (m.value, m.step) for m in metrics}
        assert logged["val_loss"] == (pytest.approx(row["val_loss"]), row["epoch"])
        assert logged["train_loss"][0] == pytest.approx(row["train_loss"])
    assert calls.index(("set_terminated", "run-1")) > calls.index(batches[-2])
    (final,) = [c[2] for c in batches if c[2] and c[2][0].key.startswith("test_")]
    assert {m.key: m.value for m in final}["test_accuracy"] == pytest.approx(
        result.metrics["test"]["accuracy"])
    logged_files = {c[2] for c in calls if c[0] == "log_artifact"}
    assert str(result.rundir.file(runs.REPORT)) in logged_files
    assert str(result.rundir.file(runs.METRICS)) in logged_files
    assert ("log_artifacts", "run-1", str(tmp_path / "run" / "plots"), "plots") in calls
    assert result.rundir.read_json(runs.LOGGERS) == {
        "mlflow": {"tracking_uri": "file:./mlruns", "run_id": "run-1"}}


def test_a_resumed_training_continues_the_same_mlflow_run(fake_mlflow, tmp_path):
    from dlpipe.pipeline import load_run_config, run_stage

    result = dlpipe.run(_config("mlflow", epochs=2), run_dir=tmp_path / "run",
                        stages=TRAIN_ONLY)
    cfg = load_run_config(result.rundir, ["train.epochs=4"])
    fake_mlflow.clear()
    run_stage("train", cfg, result.rundir, resume=True)
    assert not [c for c in fake_mlflow if c[0] == "create_run"]
    steps = [m.step for c in fake_mlflow if c[0] == "log_batch" for m in c[2]]
    assert sorted(set(steps)) == [3, 4]
