"""`dlpipe tune`: its output, its options, its errors."""

import subprocess
import sys

import pandas as pd
import yaml

from dlpipe import runs
from helpers import minimal_config


def _dlpipe(*args):
    return subprocess.run([sys.executable, "-m", "dlpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _config(tmp_path, **sections):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(minimal_config(**sections)))
    return path


def test_dlpipe_tune_runs_the_study_and_names_the_best_trial(tmp_path):
    config = _config(tmp_path, tune={"space": {"train.optimizer.lr": {"float": [1e-3, 0.1]}},
                                     "n_trials": 9, "plots": False})
    done = _dlpipe("tune", config, "--run-dir", tmp_path / "run", "--n-trials", 2,
                   "--study", "mine", "--set", "train.epochs=2")
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "run" / runs.TUNE_TRIALS.filename)
    assert len(frame) == 2                                   # --n-trials over the section's 9
    best = frame.loc[frame["value"].idxmin()]                # val_loss: lower is better
    assert f"best: trial {best['number']}, val_loss = {best['value']:.6g}" in done.stdout
    assert "study 'mine': 2 trials" in done.stdout
    assert (tmp_path / "run" / runs.TUNE_BEST_CONFIG.filename).is_file()


def test_dlpipe_tune_without_a_tune_section_says_what_to_add(tmp_path):
    done = _dlpipe("tune", _config(tmp_path), "--run-dir", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: tune: the config has no `tune:` section; add one with "
                                   "a `space` of fields to search")
    assert not (tmp_path / "run").exists()                  # checked before any work


def test_dlpipe_tune_refuses_sqlite_for_several_workers(tmp_path):
    config = _config(tmp_path, tune={"space": {"train.epochs": [1, 2]}})
    done = _dlpipe("tune", config, "--run-dir", tmp_path / "run", "--workers", 2,
                   "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert done.returncode == 2
    assert "error: tune: storage: sqlite:///" in done.stderr
    assert "SQLite cannot be shared by parallel workers" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()                  # checked before any work
