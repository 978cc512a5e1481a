"""Hand the finished report to the experiment loggers the run trained with (loggers.json).

MLflow gets report.html, the plots, metrics.json, curves.json, config.yaml and the weights as
artifacts of the same run, and the test metrics as `test_<name>`; TensorBoard gets the plots
as images and the test metrics as scalars at the last epoch. A logger whose package is not
installed here is skipped with a warning: the report itself is already written.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from typing import Any

from dlpipe import runs
from dlpipe.runs import RunDir

#: Files of the run directory logged to MLflow as artifacts, when present.
ARTIFACTS = (runs.REPORT, runs.METRICS, runs.CURVES, runs.CONFIG, runs.MODEL, runs.WEIGHTS,
             runs.HISTORY, runs.TRAINING)


def log_report(rundir: RunDir, pngs: dict[str, bytes]) -> None:
    """Log the report, plots and final metrics to every logger in loggers.json."""
    entries = rundir.read_json(runs.LOGGERS)
    test = _test_metrics(rundir)
    step = (rundir.read_json(runs.TRAINING).get("epochs_run", 0)
            if rundir.has(runs.TRAINING) else 0)
    if "mlflow" in entries:
        _mlflow(rundir, entries["mlflow"], test)
    if "tensorboard" in entries:
        _tensorboard(entries["tensorboard"], pngs, test, step)


def _test_metrics(rundir: RunDir) -> dict[str, float]:
    metrics = rundir.read_json(runs.METRICS) if rundir.has(runs.METRICS) else {}
    return {f"test_{k}": float(v) for k, v in metrics.get("test", {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _missing(name: str) -> None:
    warnings.warn(f"report: loggers.json names {name}, which is not installed here, so the "
                  f"report was not logged to it; pip install 'dlpipe[{name}]'", UserWarning,
                  stacklevel=3)


def _mlflow(rundir: RunDir, entry: dict[str, Any], test: dict[str, float]) -> None:
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        _missing("mlflow")
        return
    client = MlflowClient(tracking_uri=entry.get("tracking_uri"))
    run_id = entry["run_id"]
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in test.items()])
    for artifact in ARTIFACTS:
        if rundir.has(artifact):
            client.log_artifact(run_id, str(rundir.file(artifact)))
    plots = rundir.path / runs.PLOTS.filename
    if plots.is_dir():
        client.log_artifacts(run_id, str(plots), artifact_path=runs.PLOTS.filename)


def _tensorboard(entry: dict[str, Any], pngs: dict[str, bytes], test: dict[str, float],
                 step: int) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _missing("tensorboard")
        return
    from matplotlib.image import imread

    writer = SummaryWriter(log_dir=entry["log_dir"])
    try:
        for key, value in test.items():
            writer.add_scalar(key, value, step)
        for name, png in pngs.items():
            pixels = imread(io.BytesIO(png), format="png")  # (H, W, 4) floats in [0, 1]
            writer.add_image(f"report/{name}", pixels[..., :3], step, dataformats="HWC")
    finally:
        writer.close()
