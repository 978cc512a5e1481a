"""The accuracy guard: keep a compressed variant only if the guarded metric stays within
`compress.max_metric_drop` of the original's on the validation split.

The guarded metric is the run's main one: accuracy for classification, R² for regression,
unless `compress.metric` names another. The drop is absolute (0.005 = half a point of
accuracy); for a lower-is-better metric such as rmse a rise counts as the drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dlpipe.errors import ConfigError
from dlpipe.metrics import METRICS, STANDARD, compute_metrics, higher_is_better, metric_tasks
from dlpipe.models.heads import to_scores

__all__ = ["Guard", "guarded_metric", "score_outputs"]

# Float noise in a metric computed two ways (say 0.9500000000000001 vs 0.95) is no drop.
_EPS = 1e-9


def guarded_metric(task: str, configured: str | None) -> str:
    """The metric the guard watches: `configured`, or accuracy / r2 by task.

    Raises:
        ConfigError: `configured` is unknown or does not apply to `task` (under
            ``compress.metric``).
    """
    name = configured or ("r2" if task == "regression" else "accuracy")
    if configured is not None:
        METRICS.get(name, path="compress.metric")  # unknown: did-you-mean
        if task not in metric_tasks(name) or name == "confusion_matrix":
            fits = [n for n in METRICS.names() if task in metric_tasks(n)
                    and n != "confusion_matrix"]
            raise ConfigError([("compress.metric", f"metric {name!r} does not apply to a {task} "
                                                   f"task; use one of {', '.join(fits)}")])
    return name


@dataclass(frozen=True)
class Guard:
    """Judge variants against the original's value of `metric`."""

    metric: str
    baseline: float
    max_drop: float

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def drop(self, value: float) -> float:
        """How much worse `value` is than the baseline (negative: better)."""
        return self.baseline - value if self.higher_is_better else value - self.baseline

    def allows(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and (
            self.drop(value) <= self.max_drop + _EPS)

    def reason(self, value: float | None) -> str:
        """Why `value` is kept or rejected, in one line for the report."""
        if value is None or not math.isfinite(value):
            return f"val {self.metric} is undefined"
        verb = "within" if self.allows(value) else "exceeds"
        return (f"val {self.metric} {value:.4f} vs {self.baseline:.4f}: drop "
                f"{self.drop(value):+.4f} {verb} the allowed {self.max_drop:g}")


def score_outputs(outputs: np.ndarray, y: np.ndarray, *, task: str, metric: str,
                  target: Any, threshold: float = 0.5, top_k: int = 3) -> float | None:
    """The value of `metric` for raw model outputs.

    Args:
        outputs: (N, out) raw outputs (logits, or values on the training scale).
        y: (N,) encoded targets as `FittedFeatures.arrays` returns them.
        target: the fitted `TargetEncoder`, which maps regression values back to the
            original scale.
        threshold: the binary decision threshold chosen on validation.
    """
    if len(y) == 0:
        return None
    scores = to_scores(task, torch.from_numpy(np.ascontiguousarray(outputs, np.float32))).numpy()
    truth = y
    if task == "regression":
        scores, truth = target.inverse_transform(scores), target.inverse_transform(y)
    extra = [] if metric in STANDARD[task] else [metric]
    value = compute_metrics(task, truth, scores, threshold=threshold, top_k=top_k,
                            extra=extra)[metric]
    return None if value is None else float(value)
