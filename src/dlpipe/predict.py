"""Predictions from a trained run: `dlpipe.load(run_dir).predict(rows)` and `dlpipe predict`.

A `Predictor` holds only what the run directory says: the fitted preprocessing
(features.json), the model spec (model.json) and the weights (safetensors). New rows are
checked against the training schema first, so a missing, extra or mistyped column is an
error that lists what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlpipe import runs
from dlpipe._prediction import Prediction, RowPredictor, write_frames
from dlpipe.errors import DataError
from dlpipe.features import FittedFeatures
from dlpipe.features import load as load_features
from dlpipe.models.heads import to_scores
from dlpipe.models.spec import load_network
from dlpipe.runs import RunDir

__all__ = ["Prediction", "Predictor", "load", "read_rows", "write_predictions"]


class Predictor(RowPredictor):
    """A trained run, ready to predict on raw rows (or a whole file, `predict_file`).

    Example:
        >>> predictor = dlpipe.load("runs/quickstart")
        >>> predictor.predict(frame).labels[:3]
    """

    def __init__(self, fitted: FittedFeatures, model: torch.nn.Module, threshold: float = 0.5,
                 target: str | None = None) -> None:
        self.fitted = fitted
        self.model = model.eval()
        self.threshold = threshold
        self.target = target

    def _scores(self, x: np.ndarray) -> np.ndarray:
        inputs = torch.as_tensor(x, dtype=torch.float32)
        with torch.inference_mode():
            outputs = torch.cat([self.model(inputs[i:i + 4096])
                                 for i in range(0, len(inputs), 4096)]
                                ) if len(inputs) else torch.zeros(0, 1)
        return to_scores(self.task, outputs).numpy()


def load(run_dir: str | os.PathLike[str] | RunDir) -> Predictor:
    """Load a trained run for prediction."""
    rundir = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    fitted = load_features(rundir)
    model = load_network(rundir)
    threshold = 0.5
    if rundir.has(runs.METRICS):
        threshold = rundir.read_json(runs.METRICS).get("test", {}).get("threshold", 0.5)
    target = rundir.read_json(runs.SCHEMA)["target"]
    return Predictor(fitted, model, threshold=threshold, target=target)


def read_rows(path: str | os.PathLike[str], fitted: FittedFeatures | None = None, *,
              encoding: str = "utf-8", sep: str = ",") -> pd.DataFrame:
    """Read rows to predict on: CSV (text in `encoding`, fields separated by `sep`), Parquet,
    JSON Lines or .npz (arrays of images too), or, for a model whose one input is an image
    column, an image file or a folder of them (every image below it, in sorted order; the
    table's column is named after the model's)."""
    from dlpipe._csv import predict_hint
    from dlpipe.data import load_table
    from dlpipe.data.images import IMAGE_EXTENSIONS

    where = Path(path)
    image_input = fitted is not None and len(fitted.columns) == 1 and bool(fitted.images)
    if image_input and (where.is_dir() or where.suffix.lower() in IMAGE_EXTENSIONS):
        files = [where] if where.is_file() else sorted(
            f for f in where.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(where).parts))
        if not files:
            raise DataError(f"input: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                            f"{str(where)!r}")
        return pd.DataFrame({fitted.columns[0]: [str(f.resolve()) for f in files]})
    if where.is_dir():
        raise DataError(f"input: {str(where)!r} is a folder; predict reads a CSV, Parquet, "
                        f"JSON Lines or .npz file (a folder of images only for an image model)")
    frame = load_table(path, encoding=encoding, sep=sep, hint=predict_hint)
    if fitted is not None and list(frame.columns[:1]) == ["image"] and len(fitted.images) == 1:
        frame = frame.rename(columns={"image": next(iter(fitted.images))})  # arrays from .npz
    return frame


def write_predictions(prediction: Prediction, path: str | os.PathLike[str], *,
                      inputs: pd.DataFrame | None = None) -> Path:
    """Write predictions as CSV, Parquet or JSON Lines (by extension), atomically; `inputs`
    columns (e.g. the image paths) come first, to tell the rows apart."""
    frame = prediction.to_frame()
    if inputs is not None:
        frame = pd.concat([inputs.reset_index(drop=True), frame], axis=1)
    write_frames([frame], path)
    return Path(path)
