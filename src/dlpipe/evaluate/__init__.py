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
    if cfg.data.stream:  # larger than memory: score the prepared rows block by block
        scored = {split: _streamed_scores(rundir, model, fitted, split, cfg.data.chunk_rows)
                  for split in ("val", "test")}
        frames = None
    else:
        frames = {split: rundir.read_split(split) for split in ("val", "test")}
        scored = {split: scores_of(model, fitted, frame) for split, frame in frames.items()}
    metrics = evaluate_scores(cfg, fitted, scored)
    write_curves(rundir, fitted, metrics, scored, frames)
    if cfg.evaluate.cv_folds >= 2:
        from dlpipe.evaluate.kfold import cross_validate

        metrics["cv"] = cross_validate(cfg, rundir)
    rundir.write_json(runs.METRICS, metrics)
    return metrics


def evaluate_frames(cfg: PipelineConfig, model: nn.Module, fitted: FittedFeatures,
                    frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Metrics for each non-empty frame; the binary threshold comes from ``val`` if asked."""
    scored = {name: scores_of(model, fitted, frame) for name, frame in frames.items()}
    return evaluate_scores(cfg, fitted, scored)


def evaluate_scores(cfg: PipelineConfig, fitted: FittedFeatures,
                    scored: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Metrics of each non-empty split's (true targets, scores); see `evaluate_frames`."""
    ec = cfg.evaluate
    scored = {name: pair for name, pair in scored.items() if len(pair[0])}
    threshold = 0.5 if ec.threshold == "optimize" else ec.threshold
    if fitted.task == "binary" and ec.threshold == "optimize" and "val" in scored:
        threshold = best_threshold(*scored["val"])
    return {name: compute_metrics(fitted.task, y, s, threshold=threshold, top_k=ec.top_k,
                                  extra=ec.metrics or ())
            for name, (y, s) in scored.items()}


def _streamed_scores(rundir: RunDir, model: nn.Module, fitted: FittedFeatures, split: str,
                     block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`scores_of` for a split of a streaming run, read from prepared/ block by block."""
    from dlpipe.train.stream import StreamBatches, StreamedSplit

    device = next(model.parameters()).device
    batches = StreamBatches(StreamedSplit.of(rundir, split), 4096, block_rows=block_rows,
                            device=device)
    if len(batches.split) == 0:
        return np.empty(0), np.empty(0)
    outputs = predict_outputs(model, batches)
    return _on_target_scale(fitted, batches.y.numpy(), to_scores(fitted.task, outputs))


def scores_of(model: nn.Module, fitted: FittedFeatures,
              frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true targets, scores) of `frame`: class indices and probabilities, or values on the
    target's original scale for regression; empty arrays for an empty frame."""
    if len(frame) == 0:
        return np.empty(0), np.empty(0)
    x, y = fitted.arrays(frame)
    xt = torch.as_tensor(x, dtype=torch.float32)
    device = next(model.parameters()).device
    outputs = predict_outputs(model, TensorBatches(xt.to(device), xt.to(device), 4096))
    return _on_target_scale(fitted, y, to_scores(fitted.task, outputs))


def _on_target_scale(fitted: FittedFeatures, y: np.ndarray, scores: torch.Tensor
                     ) -> tuple[np.ndarray, np.ndarray]:
    values = scores.cpu().numpy()
    if fitted.task == "regression":
        return fitted.target.inverse_transform(y), fitted.target.inverse_transform(values)
    return y.astype(np.int64) if fitted.task == "binary" else y, values
