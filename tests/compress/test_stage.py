"""The compress stage in a pipeline: what it needs, and what `dlpipe run` ships after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import dlpipe
from dlpipe import runs
from dlpipe.errors import ConfigError
from dlpipe.export import load_bundle
from dlpipe.pipeline import load_run_config, run_stage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_compress_needs_validation_rows_for_its_guard(trained, tmp_path):
    import shutil

    shutil.copytree(trained.path, tmp_path / "run")
    rundir = dlpipe.RunDir.open(tmp_path / "run")
    rundir.write_split("val", rundir.read_split("val").iloc[:0])
    with pytest.raises(ConfigError, match=r"data\.split\.val: compress judges every variant on "
                                          r"the validation split, which is empty"):
        run_stage("compress", load_run_config(rundir), rundir)


def test_a_new_compress_run_leaves_no_file_of_the_previous_one(compressed, trained):
    rundir, _ = compressed(methods=["fp16"], max_metric_drop=1.0)
    assert rundir.has(runs.COMPRESSED_FP16)
    cfg = load_run_config(rundir, ["compress.methods=[bf16]"])
    report = run_stage("compress", cfg, rundir)
    assert report["chosen"] == {"fp32": "original", "bf16": "bf16"}
    assert not rundir.has(runs.COMPRESSED_FP16) and rundir.has(runs.COMPRESSED_BF16)


@pytest.mark.slow
def test_dlpipe_run_compresses_then_ships_the_kept_variants(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "dlpipe", "run", str(EXAMPLES / "compress.yaml"), "--run-dir",
         str(run_dir), "--set", "train.epochs=40", "--set", "compress.max_metric_drop=0.02",
         "--set", "compress.latency_runs=10"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "compression: accuracy" in done.stdout  # the table is printed
    rundir = dlpipe.RunDir.open(run_dir)
    report = rundir.read_json(runs.COMPRESS_REPORT)
    bundle = rundir.file(runs.EXPORT)
    frame = rundir.read_split("test").drop(columns=["target"])
    reference = dlpipe.load(run_dir).predict(frame)
    if report["chosen"]["int8"]:
        int8 = load_bundle(bundle, variant="int8").predict(frame)
        assert np.mean(int8.labels == reference.labels) >= 0.95
    if report["chosen"]["fp32"] != "original":  # the bundle's model.onnx is the kept one
        kept = rundir.read_json(runs.COMPRESSED_MODEL)["kwargs"]["hidden"]
        graph = onnx.load(bundle / "model.onnx")
        shapes = {i.name: list(i.dims) for i in graph.graph.initializer}
        assert shapes["block0.0.weight"][0] == kept[0]
    assert load_bundle(bundle).predict(frame).labels.shape == reference.labels.shape


@pytest.mark.slow
def test_dlpipe_compress_prints_the_comparison_table(trained, tmp_path):
    import shutil

    shutil.copytree(trained.path, tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "dlpipe", "compress", str(tmp_path / "run"), "--set",
         "compress.methods=[int8]", "--set", "compress.latency_runs=5"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "140"})
    assert done.returncode == 0, done.stderr
    report = dlpipe.RunDir.open(tmp_path / "run").read_json(runs.COMPRESS_REPORT)
    assert "compression: accuracy" in done.stdout
    for variant in report["variants"]:
        assert variant["name"] in done.stdout and f"{variant['val']:.4f}" in done.stdout
