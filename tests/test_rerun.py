"""Running one stage again on an existing run: the later stages' results go, the config
records the overrides that shaped the files, and the report is written again."""

from __future__ import annotations

import shutil

import pytest
import yaml

import dlpipe
from dlpipe import runs
from dlpipe.errors import RunDirError
from dlpipe.runs import RunDir
from helpers import minimal_config

CONFIG = minimal_config(export={})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return dlpipe.run(CONFIG, run_dir=tmp_path_factory.mktemp("rerun") / "base")


@pytest.fixture
def run_copy(base, tmp_path):
    shutil.copytree(base.path, tmp_path / "run")
    return tmp_path / "run"


def _config(path):
    return yaml.safe_load((path / "config.yaml").read_text())


def test_training_again_removes_the_results_that_described_the_old_model(run_copy):
    rundir = RunDir.open(run_copy)
    assert rundir.has(runs.METRICS) and rundir.has(runs.EXPORT)
    done = dlpipe.rerun("train", run_copy, ["train.epochs=2"])
    assert done.removed == ["evaluate", "export"]
    assert not rundir.has(runs.METRICS) and not rundir.has(runs.PREDICTIONS)
    assert not (run_copy / "predictions").exists() and not rundir.has(runs.EXPORT)
    assert done.outcome.state.epoch == 2
    # The override shaped the new weights, so config.yaml records it (and the hash follows).
    assert _config(run_copy)["train"]["epochs"] == 2
    info = RunDir.open(run_copy).read_json(runs.RUN_INFO)
    assert set(info["stages"]) == {"data", "features", "train"}
    assert info["reruns"][-1]["stage"] == "train"
    assert info["reruns"][-1]["overrides"] == ["train.epochs=2"]
    with pytest.raises(RunDirError, match=r"no metrics\.json; run `dlpipe evaluate"):
        RunDir.open(run_copy).require(runs.METRICS)


def test_an_earlier_stages_override_holds_for_this_command_only(run_copy, base):
    before = _config(run_copy)
    done = dlpipe.rerun("evaluate", run_copy, ["train.epochs=99", "evaluate.threshold=0.3"])
    assert done.for_this_command == ["train.epochs=99"]
    after = _config(run_copy)
    assert after["train"]["epochs"] == before["train"]["epochs"]  # the weights' own setting
    assert after["evaluate"]["threshold"] == 0.3
    assert done.removed == ["export"]  # its signature held the old threshold
    assert done.outcome["test"]["threshold"] == 0.3


def test_new_splits_remove_everything_fitted_or_trained_on_the_old_ones(run_copy):
    done = dlpipe.rerun("data", run_copy, ["data.split.seed=5"])
    assert done.removed == ["features", "train", "evaluate", "export"]
    rundir = RunDir.open(run_copy)
    assert not rundir.has(runs.FEATURES) and not rundir.has(runs.WEIGHTS)
    with pytest.raises(RunDirError, match=r"no features\.json; run `dlpipe features"):
        dlpipe.rerun("evaluate", run_copy)


def test_the_report_is_written_again_after_the_stage(run_copy):
    dlpipe.rerun("evaluate", run_copy, ["report.enabled=true"])
    done = dlpipe.rerun("evaluate", run_copy, ["evaluate.threshold=0.4"])
    assert done.report == run_copy / "report.html" and done.report.is_file()
    assert "report" not in done.removed
    assert "0.4" in done.report.read_text()
