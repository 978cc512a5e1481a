"""Parallel search: local worker processes sharing one journal, and a worker killed mid-trial."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import yaml

from dlpipe import runs, tune
from dlpipe.runs import RunDir
from dlpipe.tune._storage import HEARTBEAT, open_storage
from helpers import minimal_config


def tuned(epochs, **options):
    cfg = minimal_config(tune={"space": {"train.optimizer.lr": {"float": [1e-3, 0.1],
                                                                "log": True},
                                         "model.hidden": [[8], [16, 8]]},
                               "metric": "val.accuracy", "plots": False, **options})
    # More rows than the other tests, so a trial lasts long enough for two workers to overlap.
    cfg["data"]["source"]["params"]["n_samples"] = 2000
    cfg["train"]["epochs"] = epochs
    return cfg


def journal_trials(path):
    storage = open_storage(None, RunDir(path))
    return optuna.load_study(study_name="tiny", storage=storage.backend).get_trials()


@pytest.mark.slow
def test_two_local_workers_run_one_study_without_duplicates(tmp_path):
    result = tune.search(tuned(epochs=8, n_trials=6, pruner="none"), run_dir=tmp_path / "run",
                         workers=2)
    trials = journal_trials(result.path)
    assert [t.number for t in trials] == list(range(6))     # exactly n_trials, each once
    assert {t.state.name for t in trials} == {"COMPLETE"}
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert result.summary["worker_exit_codes"] == [0, 0]
    # What the command reports is what the storage holds.
    best = max(trials, key=lambda t: t.value)
    assert (result.best_trial, result.best_value) == (best.number, best.value)
    assert result.best_params["train.optimizer.lr"] == best.params["train.optimizer.lr"]
    frame = pd.read_csv(result.path / runs.TUNE_TRIALS.filename)
    assert list(frame["value"]) == [t.value for t in trials]
    assert list(frame["worker"]) == [t.user_attrs["worker"] for t in trials]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_its_trial_failed_and_the_study_usable(tmp_path):
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(tuned(epochs=2000, n_trials=1, heartbeat_s=1, grace_s=2)))
    run = tmp_path / "run"
    worker = subprocess.Popen([sys.executable, "-m", "dlpipe", "tune", str(config),
                               "--run-dir", str(run)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            journal = run / runs.TUNE_JOURNAL.filename
            trials = journal_trials(run) if journal.exists() else []
            if trials and HEARTBEAT in trials[0].user_attrs:
                break
            assert worker.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no trial started within 120 s")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert journal_trials(run)[0].state.name == "RUNNING"    # nobody told the study it died

    time.sleep(3)  # past grace_s: the heartbeat is now stale
    resumed = tune.search(tuned(epochs=2000, n_trials=3, heartbeat_s=1, grace_s=2),
                          run_dir=run, overrides=["train.epochs=2"])
    trials = journal_trials(run)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"] == (
        "no heartbeat for 2 s: its worker was killed or lost")
    assert resumed.best_trial in (1, 2)
