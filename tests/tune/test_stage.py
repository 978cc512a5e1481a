"""The tune stage: outputs, the best config retrained, failures, resuming, reproducibility."""

import math

import optuna
import pandas as pd
import pytest
import yaml

import dlpipe
from dlpipe import runs, tune
from dlpipe.config import load_config
from dlpipe.errors import ConfigError, TrainingError
from dlpipe.runs import RunDir
from dlpipe.tune._storage import open_storage
from helpers import minimal_config


def tuned(space=None, **options):
    space = space or {"train.optimizer.lr": {"float": [1e-3, 0.1], "log": True},
                      "model.hidden": [[8], [16, 8]]}
    options = {"metric": "val.accuracy", "n_trials": 4, "startup_trials": 2, "plots": False,
               **options}
    cfg = minimal_config(tune={"space": space, **options})
    cfg["train"]["epochs"] = 4
    return cfg


def storage_trials(path):
    """The trials as the study's storage reports them, read afresh from the journal."""
    storage = open_storage(None, RunDir(path))
    study = optuna.load_study(study_name="tiny", storage=storage.backend)
    return study.get_trials()


def test_the_best_config_is_written_back_retrained_and_evaluated_on_test(tmp_path):
    cfg = tuned(plots=True)
    # Keep the epoch the search scored, so the retrained model is the best trial's model.
    cfg["train"]["early_stopping"] = {"monitor": "val_accuracy", "patience": 10}
    result = dlpipe.run(cfg, run_dir=tmp_path / "run",
                        stages=("data", "features", "tune", "train", "evaluate"))
    rundir = result.rundir
    trials = storage_trials(rundir.path)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)

    best_config = load_config(rundir.read_yaml(runs.TUNE_BEST_CONFIG))
    assert best_config.tune is None                     # retrains as it is, without searching
    assert best_config.train.optimizer.kwargs["lr"] == best.params["train.optimizer.lr"]
    assert str(list(best_config.model.kwargs["hidden"])) == best.params["model.hidden"]
    # The run's config is the best one, so `dlpipe train RUN_DIR` retrains it too.
    assert load_config(rundir.read_yaml(runs.CONFIG)).train == best_config.train
    # Same config, same seed, same splits: the retrained curve is the best trial's curve.
    curve = [row["val_accuracy"] for row in result.history]
    assert curve == [best.intermediate_values[e] for e in sorted(best.intermediate_values)]
    assert result.metrics["val"]["accuracy"] == best.value
    assert "test" in result.metrics

    frame = pd.read_csv(rundir.file(runs.TUNE_TRIALS))
    assert list(frame["number"]) == [t.number for t in trials]
    assert list(frame["state"]) == [t.state.name for t in trials]
    assert list(frame["train.optimizer.lr"]) == [t.params["train.optimizer.lr"] for t in trials]
    assert list(frame["epochs"]) == [t.user_attrs["epochs"] for t in trials]
    summary = rundir.read_json(runs.TUNE_SUMMARY)
    assert summary["best"]["number"] == best.number
    assert summary["epochs_trained"] == sum(t.user_attrs["epochs"] for t in trials)
    for name in summary["plots"]:
        assert rundir.file(runs.TUNE_PLOTS[name]).read_bytes()[:4] == b"\x89PNG"
    assert "history" in summary["plots"]


def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path):
    # A grid of 4: a huge learning rate makes the loss non-finite; warmup with the plateau
    # scheduler is a combination no single value shows, caught when the trial is built.
    space = {"train.optimizer.lr": [0.01, 1.0e+30], "train.warmup_epochs": [0, 1],
             "train.scheduler.name": ["plateau"]}
    cfg = tuned(space, sampler="grid", n_trials=10, pruner="none")
    result = dlpipe.run(cfg, run_dir=tmp_path / "run", stages=("data", "features", "tune"))
    frame = pd.read_csv(result.rundir.file(runs.TUNE_TRIALS)).set_index(
        ["train.optimizer.lr", "train.warmup_epochs"])
    assert len(frame) == 4                               # the grid, not n_trials
    assert frame.loc[(0.01, 0), "state"] == "COMPLETE"
    assert frame.loc[(1e30, 0), "state"] == "FAIL"
    assert "the loss became" in frame.loc[(1e30, 0), "fail_reason"]
    for lr in (0.01, 1e30):
        assert frame.loc[(lr, 1), "state"] == "FAIL"
        assert frame.loc[(lr, 1), "fail_reason"] == (
            "train.warmup_epochs: warmup cannot be combined with the plateau scheduler; use 0")
    assert result.rundir.read_json(runs.TUNE_SUMMARY)["best"]["value"] == frame.loc[
        (0.01, 0), "value"]


def test_a_study_where_no_trial_completes_says_why(tmp_path):
    cfg = tuned({"train.optimizer.lr": [1.0e+30]}, sampler="grid")
    with pytest.raises(TrainingError, match=r"tune: no trial of study 'tiny' completed "
                                            r"\(states: \{'FAIL': 1\}\).*First failure: trial 0: "
                                            r"training: the loss became"):
        dlpipe.run(cfg, run_dir=tmp_path / "run")


def test_one_worker_and_a_seed_repeat_a_study(tmp_path):
    frames = []
    for name in ("a", "b"):
        result = dlpipe.run(tuned(), run_dir=tmp_path / name, stages=("data", "features", "tune"))
        frames.append(pd.read_csv(result.rundir.file(runs.TUNE_TRIALS)).drop(columns="duration_s"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[0]["train.optimizer.lr"].nunique() == 4  # the trials did differ


def test_running_dlpipe_tune_again_resumes_the_study(tmp_path):
    first = tune.search(tuned(), run_dir=tmp_path / "run", n_trials=2)
    before = pd.read_csv(first.path / runs.TUNE_TRIALS.filename)
    again = tune.search(tuned(), run_dir=tmp_path / "run", n_trials=3)
    after = pd.read_csv(again.path / runs.TUNE_TRIALS.filename)
    assert list(after["number"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert again.summary["trials"] == 3 and len(storage_trials(again.path)) == 3


def test_a_run_made_from_other_data_is_not_resumed(tmp_path):
    tune.search(tuned(), run_dir=tmp_path / "run", n_trials=1)
    other = tuned()
    other["data"]["split"]["val"] = 0.3
    with pytest.raises(dlpipe.RunDirError, match=r"was made with a different data section"):
        tune.search(other, run_dir=tmp_path / "run")


def test_the_search_never_reads_the_test_split(tmp_path):
    rundir = dlpipe.run(tuned(), run_dir=tmp_path / "run", stages=("data", "features")).rundir
    rundir.split_file("test").unlink()
    fresh = RunDir.open(rundir.path)
    result = tune.run(load_config(tuned()), fresh, n_trials=2)
    assert math.isfinite(result.best_value)


def test_sqlite_is_refused_for_parallel_workers_with_the_reason(tmp_path):
    cfg = tuned(storage=f"sqlite:///{tmp_path / 'study.db'}", workers=2)
    with pytest.raises(ConfigError, match=r"tune: storage: sqlite:///.*SQLite cannot be shared "
                                          r"by parallel workers.*Optuna FAQ"):
        dlpipe.run(cfg, run_dir=tmp_path / "run", stages=("data", "features", "tune"))


def test_sqlite_serves_a_single_worker_and_the_study_outlives_the_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = tune.search(tuned(storage=url, study="shared"), run_dir=tmp_path / "a", n_trials=2)
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.value for t in study.trials] == list(pd.read_csv(
        result.path / runs.TUNE_TRIALS.filename)["value"])
    # A second run directory with the same storage and study joins (and resumes) it.
    again = tune.search(tuned(storage=url, study="shared"), run_dir=tmp_path / "b", n_trials=3)
    assert again.summary["trials"] == 3


def test_the_best_config_yaml_reads_back_as_a_pipeline(tmp_path):
    result = tune.search(tuned(), run_dir=tmp_path / "run", n_trials=2)
    text = (result.path / runs.TUNE_BEST_CONFIG.filename).read_text()
    assert yaml.safe_load(text)["tune"] is None          # retrains without searching again
    assert load_config(yaml.safe_load(text)).model == result.config.model


def test_retrain_on_train_and_val_fits_both_splits_for_the_best_trials_epochs(tmp_path):
    cfg = tuned(retrain="train+val", n_trials=2)
    result = dlpipe.run(cfg, run_dir=tmp_path / "run",
                        stages=("data", "features", "tune", "train", "evaluate"))
    rundir = result.rundir
    best = rundir.read_json(runs.TUNE_SUMMARY)["best"]
    training = rundir.read_json(runs.TRAINING)
    rows = len(rundir.read_split("train")) + len(rundir.read_split("val"))
    assert rows % 32 != 1   # else a shuffled epoch drops its single-row last batch
    assert training["epochs_run"] == best["best_epoch"]
    assert training["steps"] == best["best_epoch"] * -(-rows // 32)   # every row, every epoch
    assert load_config(rundir.read_yaml(runs.CONFIG)).train.fit_on == "train+val"
    assert load_config(rundir.read_yaml(runs.TUNE_BEST_CONFIG)).train.fit_on == "train"
    assert "test" in result.metrics
