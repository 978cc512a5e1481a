"""Predictions from a trained run: `dlpipe.load(run_dir).predict(rows)` and `dlpipe predict`.

A `Predictor` holds only what the run directory says: the fitted preprocessing
(features.json), the model spec (model.json) and the weights (safetensors). New rows are
checked against the training schema first, so a missing, extra or mistyped column is an
error that lists what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dlpipe import runs
from dlpipe._prediction import Prediction, prediction_from_scores, rows_to_frame
from dlpipe.features import FittedFeatures
from dlpipe.features import load as load_features
from dlpipe.models.heads import to_scores
from dlpipe.models.spec import load_network
from dlpipe.runs import RunDir

__all__ = ["Prediction", "Predictor", "load", "read_rows", "write_predictions"]


class Predictor:
    """A trained run, ready to predict on raw rows.

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

    @property
    def task(self) -> str:
        return self.fitted.task

    @property
    def classes(self) -> list[Any]:
        return list(self.fitted.target.classes_) if self.task != "regression" else []

    def predict(self, rows: pd.DataFrame | np.ndarray | Sequence[Mapping[str, Any]]
                ) -> Prediction:
        """Predict raw rows: a DataFrame, a list of dicts, or a 2-D array in column order."""
        frame = self.fitted.validate_input(
            rows_to_frame(rows, self.fitted.columns),
            target=self.target)
        x = torch.as_tensor(self.fitted.transform(frame), dtype=torch.float32)
        with torch.inference_mode():
            outputs = torch.cat([self.model(x[i:i + 4096]) for i in range(0, len(x), 4096)]
                                ) if len(x) else torch.zeros(0, 1)
        scores = to_scores(self.task, outputs).numpy()
        return prediction_from_scores(self.task, scores, self.fitted.target, self.threshold)



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


def read_rows(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read CSV, Parquet or JSON Lines rows to predict on."""
    from dlpipe.config import SourceConfig
    from dlpipe.data import load_table

    return load_table(SourceConfig(path=str(path)))


def write_predictions(prediction: Prediction, path: str | os.PathLike[str]) -> Path:
    """Write predictions as CSV, Parquet or JSON Lines (by extension), atomically."""
    import io

    from dlpipe.runs import atomic_write

    out = Path(path)
    frame = prediction.to_frame()
    buffer = io.BytesIO()
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(buffer, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        buffer.write(frame.to_json(orient="records", lines=True).encode())
    else:
        buffer.write(frame.to_csv(index=False).encode())
    atomic_write(out, buffer.getvalue())
    return out
