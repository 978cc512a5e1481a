"""A whole run on streamed data: trains as well as in memory, resumes exactly, predicts a
file chunk by chunk."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

import dlpipe
from dlpipe import train
from dlpipe.errors import DataError
from dlpipe.pipeline import load_run_config
from dlpipe.runs import RunDir
from dlpipe.train.callbacks import Callback
from helpers import minimal_config, torchrun


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    x, y = make_classification(n_samples=12_000, n_features=10, n_informative=6,
                               random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame["kind"] = np.where(x[:, 0] > 0, "high", "low")
    frame["label"] = np.where(y == 1, "yes", "no")
    frame.loc[::37, "f3"] = np.nan
    path = tmp_path_factory.mktemp("data") / "table.parquet"
    frame.to_parquet(path, index=False, row_group_size=2000)
    return path


def config(source, **train_args):
    return minimal_config(
        data={"source": {"path": str(source)}, "target": "label", "stream": True,
              "chunk_rows": 2000},
        model={"name": "mlp", "hidden": [32]},
        train={"epochs": 4, "batch_size": 64, "progress": "never", "shuffle_buffer": 4000,
               **train_args})


@pytest.fixture(scope="module")
def streamed(source, tmp_path_factory):
    return dlpipe.run(config(source), run_dir=tmp_path_factory.mktemp("runs") / "streamed")


def test_a_streamed_run_learns_as_well_as_an_in_memory_one(source, streamed, tmp_path):
    cfg = config(source)
    cfg["data"]["stream"] = False
    in_memory = dlpipe.run(cfg, run_dir=tmp_path / "memory")
    got, reference = streamed.metrics["test"]["accuracy"], in_memory.metrics["test"]["accuracy"]
    assert got >= 0.85
    assert abs(got - reference) < 0.03
    rundir = RunDir.open(streamed.path)
    assert rundir.read_json(dlpipe.runs.TRAINING)["data_on"] == "streamed from disk"
    assert rundir.prepared_file("train", "x").exists()
    assert (streamed.path / "predictions" / "test.parquet").exists()


def test_a_streamed_run_resumes_to_identical_weights(streamed, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for path in (straight, broken):
        shutil.copytree(streamed.path, path)
    rundir = RunDir.open(straight)
    cfg = load_run_config(rundir)
    train.run(cfg, rundir)

    class Crash(Callback):
        def on_epoch_end(self, state, metrics):
            if state.epoch == 2:
                raise KeyboardInterrupt

    rundir = RunDir.open(broken)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, rundir, callbacks=[Crash()])
    train.run(cfg, RunDir.open(broken), resume=True)
    assert (broken / "weights.safetensors").read_bytes() == (
        straight / "weights.safetensors").read_bytes()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_predicting_a_file_in_chunks_matches_predicting_it_whole(source, streamed, tmp_path,
                                                                  suffix):
    rows = pd.read_parquet(source).iloc[:5000].drop(columns=["label"])
    path = tmp_path / f"rows{suffix}"
    rows.to_parquet(path, index=False) if suffix == ".parquet" else rows.to_csv(path,
                                                                                 index=False)
    predictor = dlpipe.load(streamed.path)
    out = tmp_path / "out.parquet"
    assert predictor.predict_file(path, out, chunk_rows=700) == 5000
    got = pd.read_parquet(out)
    whole = predictor.predict(rows).to_frame()
    assert (got["prediction"] == whole["prediction"]).all()
    np.testing.assert_allclose(got["probability_yes"], whole["probability_yes"], atol=1e-6)


def test_a_bundle_predicts_a_file_in_chunks_as_the_run_does(source, streamed, tmp_path):
    from dlpipe import export

    rows = pd.read_parquet(source).iloc[:3000].drop(columns=["label"])
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    rundir = RunDir.open(streamed.path)
    bundle = export.load_bundle(export.run(load_run_config(rundir), rundir,
                                           out=tmp_path / "bundle"))
    ours, theirs = tmp_path / "bundle.jsonl", tmp_path / "run.jsonl"
    assert bundle.predict_file(path, ours, chunk_rows=1000) == 3000
    dlpipe.load(streamed.path).predict_file(path, theirs, chunk_rows=1000)
    got, expected = pd.read_json(ours, lines=True), pd.read_json(theirs, lines=True)
    assert (got["prediction"] == expected["prediction"]).all()
    np.testing.assert_allclose(got["probability_yes"], expected["probability_yes"], atol=1e-5)


def test_a_bad_row_in_a_streamed_file_is_named_by_its_row_in_the_file(source, streamed,
                                                                      tmp_path):
    rows = pd.read_parquet(source).iloc[:3000].drop(columns=["label"]).astype({"f5": object})
    rows.loc[2222, "f5"] = "n/a?"
    path = tmp_path / "rows.parquet"
    rows.astype({"f5": str}).to_parquet(path, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"row 2222\b"):
        dlpipe.load(streamed.path).predict_file(path, out, chunk_rows=1000)
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


@pytest.mark.slow
def test_two_gloo_processes_train_a_streamed_run_as_well_as_one(source, streamed, tmp_path):
    job = torchrun(tmp_path, config(source), tmp_path / "ddp")()
    training = json.loads((job.run_dir / "training.json").read_text())
    assert training["processes"] == 2 and training["data_on"] == "streamed from disk"
    # Each rank streams its own half of every epoch's block order, so the global batches are
    # not the single process's (its buffer mixes blocks the ranks split): the same model
    # quality, not the same numbers. 2,400 test rows: 0.03 is ~4 standard errors.
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.85
    assert abs(metrics["test"]["accuracy"] - streamed.metrics["test"]["accuracy"]) < 0.03
    history = RunDir(job.run_dir).read_jsonl(dlpipe.runs.HISTORY)
    # train.batch_size is the global batch: 32 rows a rank, the single process's step count.
    assert [row["step"] for row in history] == [row["step"] for row in streamed.history]
    assert job.writes and {rank for rank, _ in job.writes} == {"0"}  # rank 1 only reads
    files = sorted(str(p.relative_to(job.run_dir)) for p in job.run_dir.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(streamed.path)) for p in streamed.path.rglob("*")
                           if p.is_file())
