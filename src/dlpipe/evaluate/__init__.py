"""The evaluate stage: metrics of the trained model on the validation and test splits.

Writes metrics.json as ``{"val": {...}, "test": {...}}`` (and ``"cv"`` with k-fold
cross-validation), and curves.json with predictions/test.parquet (see `curves`). The binary
decision threshold is chosen on validation, never on test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dlpipe import runs
from dlpipe.config import PipelineConfig
from dlpipe.evaluate.curves import write_curves
from dlpipe.features import FittedFeatures
from dlpipe.features import load as load_features
from dlpipe.metrics import best_threshold, compute_metrics
from dlpipe.models.heads import to_scores
from dlpipe.models.spec import load_network
from dlpipe.runs import RunDir
from dlpipe.train import TensorBatches, predict_outputs

__all__ = ["evaluate_frames", "run", "scores_of"]


def run(cfg: PipelineConfig, rundir: RunDir) -> dict[str, Any]:
    """Evaluate the run's deliverable weights; write and return metrics.json's content."""
    fitted = load_features(rundir)
    model = load_network(rundir)
    frames = {split: rundir.read_split(split) for split in ("val", "test")}
    metrics = evaluate_frames(cfg, model, fitted, frames)
    write_curves(rundir, model, fitted, frames, metrics)
    if cfg.evaluate.cv_folds >= 2:
        from dlpipe.evaluate.kfold import cross_validate

        metrics["cv"] = cross_validate(cfg, rundir)
    rundir.write_json(runs.METRICS, metrics)
    return metrics


def evaluate_frames(cfg: PipelineConfig, model: nn.Module, fitted: FittedFeatures,
                    frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Metrics for each non-empty frame; the binary threshold comes from ``val`` if asked."""
    ec = cfg.evaluate
    scored = {name: scores_of(model, fitted, frame) for name, frame in frames.items()
              if len(frame)}
    threshold = 0.5 if ec.threshold == "optimize" else ec.threshold
    if fitted.task == "binary" and ec.threshold == "optimize" and "val" in scored:
        threshold = best_threshold(*scored["val"])
    return {name: compute_metrics(fitted.task, y, s, threshold=threshold, top_k=ec.top_k,
                                  extra=ec.metrics or ())
            for name, (y, s) in scored.items()}


def scores_of(model: nn.Module, fitted: FittedFeatures,
              frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true targets, scores) of `frame`: class indices and probabilities, or values on the
    target's original scale for regression."""
    x, y = fitted.arrays(frame)
    xt = torch.as_tensor(x, dtype=torch.float32)
    device = next(model.parameters()).device
    outputs = predict_outputs(model, TensorBatches(xt.to(device), xt.to(device), 4096))
    scores = to_scores(fitted.task, outputs).cpu().numpy()
    if fitted.task == "regression":
        return fitted.target.inverse_transform(y), fitted.target.inverse_transform(scores)
    return y, scores
