"""A run killed with SIGKILL and resumed ends byte-identical to an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dlpipe
from dlpipe.errors import RunDirError
from dlpipe.runs import RunDir
from helpers import minimal_config

# Every piece of state that a resume must restore: shuffling and dropout RNG, Adam moments,
# a per-step schedule, the weight average, early-stopping counters and the best weights.
RESUMABLE = minimal_config(
    data={"source": {"builtin": "make_classification",
                     "params": {"n_samples": 3000, "n_features": 12, "random_state": 3}},
          "split": {"val": 0.2, "test": 0.2}},
    model={"name": "mlp", "hidden": [64, 32], "dropout": 0.2},
    train={"epochs": 12, "batch_size": 16, "progress": "never",
           "optimizer": {"name": "adamw", "lr": 3e-3},
           "scheduler": {"name": "onecycle"}, "ema": {"decay": 0.9},
           "early_stopping": {"patience": 50}},
)


def _dlpipe(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "dlpipe", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _last_epoch(path: Path) -> int:
    pointer = path / "checkpoints" / "last.json"
    try:
        return json.loads(pointer.read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_byte_identical_weights(tmp_path):
    prepared = dlpipe.run(RESUMABLE, run_dir=tmp_path / "prepared", stages=("data", "features"))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    shutil.copytree(prepared.path, straight)
    shutil.copytree(prepared.path, killed)

    proc = _dlpipe("train", str(straight))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    proc = _dlpipe("train", str(killed))
    deadline = time.monotonic() + 300
    while _last_epoch(killed) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = _last_epoch(killed)
    assert 3 <= interrupted_at < 12
    assert not (killed / "weights.safetensors").exists()

    proc = _dlpipe("train", str(killed), "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    assert (killed / "weights.safetensors").read_bytes() == (
        straight / "weights.safetensors").read_bytes()
    assert (killed / "history.jsonl").read_text() == (straight / "history.jsonl").read_text()
    assert not list(killed.rglob(".*.tmp"))


def test_resume_without_a_checkpoint_says_how_to_start(tmp_path):
    prepared = dlpipe.run(minimal_config(), run_dir=tmp_path / "run", stages=("data", "features"))
    from dlpipe import train
    from dlpipe.pipeline import load_run_config

    rundir = RunDir.open(prepared.path)
    with pytest.raises(RunDirError, match=r"no complete checkpoint to resume from; run "
                                          r"`dlpipe train .*` without --resume"):
        train.run(load_run_config(rundir), rundir, resume=True)


def test_a_torn_checkpoint_write_leaves_the_previous_one_in_charge(tmp_path):
    rundir = RunDir.create(tmp_path / "run")
    import torch

    rundir.write_checkpoint(1, {"tensors": {"w": torch.ones(2)}}, {"epoch": 1})
    # A crash while writing epoch 2: its folder exists under the temporary name only.
    torn = rundir.path / "checkpoints" / ".epoch-0002.tmp"
    torn.mkdir()
    (torn / "state.json").write_text('{"epoch": 2')
    tensors, state = rundir.read_checkpoint()
    assert state == {"epoch": 1} and torch.equal(tensors["tensors"]["w"], torch.ones(2))
    (rundir.path / "config.yaml").write_text("{}\n")
    RunDir.open(rundir.path)  # opening sweeps the debris
    assert not torn.exists()
