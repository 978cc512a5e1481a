"""k-fold cross-validation on train+val: data.kfold_indices + features fit + train.fit_arrays.

The test split is never touched. Each fold refits the preprocessing on its own training
part and carves an inner validation split out of it for early stopping and best-weight
selection, so the held-out fold is scored once, by a model that never saw it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dlpipe import runs
from dlpipe.config import PipelineConfig
from dlpipe.data import kfold_indices, split_indices
from dlpipe.data.clean import resample
from dlpipe.features import fit_features
from dlpipe.runs import RunDir
from dlpipe.train import fit_arrays


def cross_validate(cfg: PipelineConfig, rundir: RunDir) -> dict[str, Any]:
    """Train and score `cfg.evaluate.cv_folds` models; return per-fold values, mean and std."""
    from dlpipe.evaluate import evaluate_frames

    schema = rundir.read_json(runs.SCHEMA)
    frame = _cv_rows(cfg, rundir)
    seed = cfg.data.split.seed if cfg.data.split.seed is not None else cfg.seed
    folds = kfold_indices(frame, schema, cfg.evaluate.cv_folds, seed=seed)
    target, task = schema["target"], schema["task"]
    inner_val = cfg.data.split.val / (1 - cfg.data.split.test)
    scores: list[dict[str, Any]] = []
    for fit_rows, held_rows in folds:
        part = frame.iloc[fit_rows].reset_index(drop=True)
        inner = split_indices(part, val=inner_val, test=0.0, seed=seed, target=target, task=task)
        train, val = part.iloc[inner["train"]], part.iloc[inner["val"]]
        if cfg.data.imbalance in ("oversample", "undersample"):
            train, _ = resample(train, target, cfg.data.imbalance, seed)
        fitted = fit_features(schema, cfg.features, train)
        trained = fit_arrays(cfg, fitted, fitted.arrays(train),
                             fitted.arrays(val) if len(val) else None)
        held = frame.iloc[held_rows]
        scores.append(evaluate_frames(cfg, trained.model, fitted, {"val": val, "test": held})
                      ["test"])
    names = [k for k, v in scores[0].items() if isinstance(v, float) and k != "threshold"]
    summary = {}
    for name in names:
        values = [s[name] for s in scores]
        clean = [v for v in values if v is not None]
        summary[name] = {"mean": float(np.mean(clean)) if clean else None,
                         "std": float(np.std(clean)) if clean else None, "values": values}
    return {"folds": len(folds), "rows": len(frame), "metrics": summary}


def _cv_rows(cfg: PipelineConfig, rundir: RunDir) -> pd.DataFrame:
    """Train and val rows as they were before resampling (oversampled copies appended to
    the train split would otherwise land in different folds)."""
    train = rundir.read_split("train")
    if cfg.data.imbalance == "oversample":
        before = rundir.read_json(runs.PROFILE)["imbalance"]["class_counts_before"]
        train = train.iloc[: sum(before.values())]
    return pd.concat([train, rundir.read_split("val")], ignore_index=True)
