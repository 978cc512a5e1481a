"""One trial: a sampled config trained on the train split and scored on val every epoch.

The validation metric is reported to Optuna after every epoch, so the pruner can stop a
trial early: `Pruning` raises `optuna.TrialPruned` from `on_epoch_end`, which the loop lets
through (Optuna's contract). A trial's value is its best epoch's value of the metric, the
epoch that early stopping and best-weight selection keep. The test split is never read.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from dlpipe import runs
from dlpipe.config import PipelineConfig
from dlpipe.errors import ConfigError, TrainingError
from dlpipe.features import FittedFeatures, fit_features
from dlpipe.features import load as load_features
from dlpipe.metrics import METRICS, higher_is_better, metric_tasks
from dlpipe.runs import RunDir
from dlpipe.train import Callback, TrainState, fit_arrays
from dlpipe.tune._storage import FAIL_REASON
from dlpipe.tune.space import Space, base_config, trial_config

__all__ = ["BEST_EPOCH", "EPOCHS", "FAIL_REASON", "WORKER", "Pruning", "Search", "metric_value"]

#: Trial user attributes dlpipe writes (besides `FAIL_REASON` and the heartbeat).
EPOCHS, BEST_EPOCH, WORKER = "epochs", "best_epoch", "worker"


def metric_value(metrics: dict[str, float], key: str, maximize: bool) -> float | None:
    """The epoch's value of `key`: the better of the raw and the weight-averaged (``ema_``)
    value, as best-weight selection sees it; None when neither is a finite number."""
    values = [metrics.get(k) for k in (key, f"ema_{key}")]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if maximize else min(finite)


class Pruning(Callback):
    """Report the validation metric to the trial each epoch; raise `TrialPruned` when the
    pruner says so. Also remembers the best value and its epoch (the trial's result)."""

    passthrough = (optuna.TrialPruned,)

    def __init__(self, trial: optuna.Trial, key: str, *, maximize: bool, epochs: int) -> None:
        self.trial = trial
        self.key = key
        self.maximize = maximize
        self.max_epochs = epochs
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.epochs = 0

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.epochs = state.epoch
        if self.key not in metrics:
            known = ", ".join(sorted(k for k in metrics if k.startswith("val_")))
            raise TrainingError(f"tune.metric: {self.key!r} is not logged; logged: {known}")
        value = metric_value(metrics, self.key, self.maximize)
        if value is None:  # undefined this epoch (one class in val): nothing to compare
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_epoch = value, state.epoch
        self.trial.report(value, state.epoch)
        finished = state.epoch >= self.max_epochs or state.should_stop  # nothing left to save
        if not finished and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {state.epoch}: {self.key} = {value:.6g}")


@dataclass
class Search:
    """What every trial shares: the base config, the space, the train and val splits.

    Calling it runs one trial (it is the Optuna objective).
    """

    base: dict[str, Any]
    space: Space
    schema: dict[str, Any]
    fitted: FittedFeatures
    frames: tuple[pd.DataFrame, pd.DataFrame]
    arrays: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    metric: str
    maximize: bool

    @classmethod
    def prepare(cls, cfg: PipelineConfig, rundir: RunDir) -> Search:
        """Read the splits and the fitted features of `rundir`; check the metric fits the task.

        Raises:
            ConfigError: the config has no `tune` section, the metric does not apply to the
                task, or there is no validation split to score trials on.
        """
        section = cfg.tune
        if section is None:
            raise ConfigError([("tune", "the config has no `tune:` section; add one with a "
                                        "`space` of fields to search")])
        schema = rundir.read_json(runs.SCHEMA)
        task = schema["task"]
        metric = section.metric
        if metric != "loss":
            METRICS.get(metric, path="tune.metric")
            if task not in metric_tasks(metric):
                fits = sorted(n for n in METRICS.names()
                              if task in metric_tasks(n) and n != "confusion_matrix")
                raise ConfigError([("tune.metric", f"metric {metric!r} does not apply to a "
                                                   f"{task} task; use loss or one of: "
                                                   f"{', '.join(fits)}")])
        frames = rundir.read_split("train"), rundir.read_split("val")
        if len(frames[1]) == 0:
            raise ConfigError([("data.split.val", "tuning scores every trial on the validation "
                                                  "split, which is empty; set data.split.val > 0")])
        fitted = load_features(rundir)
        direction = section.direction
        maximize = higher_is_better(metric) if direction == "auto" else direction == "maximize"
        base = base_config(cfg)
        base["train"]["progress"] = "never"  # a trial is one line of output, not a bar
        return cls(base=base, space=Space.from_config(section), schema=schema,
                   fitted=fitted, frames=frames,
                   arrays=(fitted.arrays(frames[0]), fitted.arrays(frames[1])),
                   metric=metric, maximize=maximize)

    @property
    def key(self) -> str:
        """The per-epoch metric name the loop logs (``val_accuracy``)."""
        return f"val_{self.metric}"

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def __call__(self, trial: optuna.Trial) -> float:
        """Train the trial's config and return its best epoch's validation metric.

        Raises:
            optuna.TrialPruned: the pruner stopped the trial.
            ConfigError: the sampled combination is not a valid config.
            TrainingError: training failed (a non-finite loss), or the metric never had a
                finite value.
        """
        cfg = trial_config(self.base, self.space.sample(trial))
        fitted, (train_xy, val_xy) = self.fitted, self.arrays
        if self.space.touches("features"):  # preprocessing is searched: refit it on train
            fitted = fit_features(self.schema, cfg.features, self.frames[0])
            train_xy, val_xy = fitted.arrays(self.frames[0]), fitted.arrays(self.frames[1])
        pruning = Pruning(trial, self.key, maximize=self.maximize, epochs=cfg.train.epochs)
        extra = () if self.metric == "loss" else (self.metric,)
        try:
            fit_arrays(cfg, fitted, train_xy, val_xy, callbacks=[pruning], metrics=extra)
        finally:
            set_attr(trial, EPOCHS, pruning.epochs)
            if pruning.best_epoch is not None:
                set_attr(trial, BEST_EPOCH, pruning.best_epoch)
        if pruning.best is None:
            raise TrainingError(f"tune.metric: {self.key} had no finite value in any of the "
                                f"{pruning.epochs} epochs")
        return pruning.best


def set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Record a user attribute; a no-op when another worker already closed the trial."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr(key, value)
