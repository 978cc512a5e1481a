"""`dlpipe run` on every bundled example reaches its accuracy floor, and predict works after."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import dlpipe

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# (example, metric, floor): the floors the README promises.
FLOORS = [
    ("quickstart.yaml", "accuracy", 0.95),
    ("tabular_binary.yaml", "accuracy", 0.93),
    ("multiclass.yaml", "accuracy", 0.95),
    ("regression.yaml", "r2", 0.40),
    ("tune.yaml", "accuracy", 0.95),  # the best of 16 trials, retrained, on the unseen test split
    ("compress.yaml", "accuracy", 0.95),  # the trained model's; compress keeps it within 0.005
    ("digits_cnn.yaml", "accuracy", 0.97),  # the tutorial CNN on 8x8 digits, with augmentation
    ("text_lstm.yaml", "accuracy", 0.93),  # the tutorial BiLSTM; bag of words gets ~0.60
    ("mixed.yaml", "accuracy", 0.85),  # table + text; either alone misses part of the rule
]


@pytest.mark.slow
@pytest.mark.parametrize(("example", "metric", "floor"), FLOORS)
def test_example_reaches_its_test_floor(example, metric, floor, tmp_path):
    result = dlpipe.run(EXAMPLES / example, run_dir=tmp_path / "run")
    assert result.metrics["test"][metric] >= floor
    saved = json.loads((result.path / "metrics.json").read_text())
    assert saved["test"][metric] == result.metrics["test"][metric]


@pytest.mark.slow
def test_quickstart_from_the_command_line_then_predict(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "dlpipe", "run", str(EXAMPLES / "quickstart.yaml"),
                           "--run-dir", str(run_dir), "--set", "train.epochs=5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout and str(run_dir) in done.stdout

    rows = pd.read_parquet(run_dir / "data" / "test.parquet").drop(columns=["target"])
    rows.to_csv(tmp_path / "new_rows.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "dlpipe", "predict", str(run_dir),
                           str(tmp_path / "new_rows.csv"), "-o", str(tmp_path / "pred.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    predictions = pd.read_csv(tmp_path / "pred.csv")
    assert len(predictions) == len(rows)
    assert set(predictions.columns) == {"prediction", "probability_0", "probability_1"}
    python_side = dlpipe.load(run_dir).predict(rows)
    assert (predictions["prediction"].to_numpy() == python_side.labels).all()


def test_two_runs_of_the_same_config_give_identical_metrics(tmp_path):
    from helpers import minimal_config

    cfg = minimal_config()
    a = dlpipe.run(cfg, run_dir=tmp_path / "a")
    b = dlpipe.run(cfg, run_dir=tmp_path / "b")
    assert (a.path / "metrics.json").read_bytes() == (b.path / "metrics.json").read_bytes()
    fa = json.loads((a.path / "fingerprint.json").read_text())
    fb = json.loads((b.path / "fingerprint.json").read_text())
    assert fa["config_sha256"] == fb["config_sha256"] and fa["data_sha256"] == fb["data_sha256"]
    assert fa["versions"]["torch"]
