"""LOSSES: name → builder of a loss module taking (outputs (B, out), targets (B,)).

Builders take the task-dependent weights the train stage computes (`weight` for class
weights) plus their own keyword arguments from `train.loss`. A user loss given as
`module:function` is called with its kwargs and must return such a callable.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dlpipe.registry import Registry

LOSSES: Registry = Registry("loss")

#: Which tasks each built-in loss applies to; checked before training starts.
LOSS_TASKS: dict[str, set[str]] = {}

Smoothing = Annotated[float, Field(ge=0, lt=1)]


def _register(name: str, *tasks: str):
    LOSS_TASKS[name] = set(tasks)
    return LOSSES.register(name)


def default_loss(task: str) -> str:
    return {"binary": "binary_cross_entropy", "multiclass": "cross_entropy"}.get(task, "mse")


class _Flat(nn.Module):
    """Losses on one output column: (B, 1) outputs against (B,) float targets."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs.reshape(-1), targets.to(outputs.dtype))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BinaryCrossEntropy(_Flat):
    def __init__(self, label_smoothing: float = 0.0, pos_weight: float | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("pos_weight", None if pos_weight is None
                             else torch.tensor(pos_weight))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(outputs, targets, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, for both
    binary (one logit) and multiclass outputs; `alpha` weights the positive class (binary)."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.register_buffer("weight", weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape[-1] == 1:                                      # binary: (B, 1)
            logits, t = outputs.reshape(-1), targets.to(outputs.dtype)
            ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            p_t = torch.exp(-ce)
            if self.alpha is not None:
                ce = ce * (self.alpha * t + (1 - self.alpha) * (1 - t))
        else:                                                           # multiclass: (B, K)
            ce = F.cross_entropy(outputs, targets, weight=self.weight, reduction="none")
            p_t = torch.exp(-F.cross_entropy(outputs, targets, reduction="none"))
        return ((1 - p_t) ** self.gamma * ce).mean()


class _Regression(_Flat):
    def __init__(self, fn, **kwargs) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.fn(outputs, targets, **self.kwargs)


@_register("binary_cross_entropy", "binary")
def binary_cross_entropy(*, label_smoothing: Smoothing = 0.0,
                         pos_weight: float | None = None) -> nn.Module:
    """Sigmoid cross-entropy on one logit; `pos_weight` > 1 favours recall."""
    return BinaryCrossEntropy(label_smoothing, pos_weight)


@_register("cross_entropy", "multiclass")
def cross_entropy(*, label_smoothing: Smoothing = 0.0,
                  weight: torch.Tensor | None = None) -> nn.Module:
    """Softmax cross-entropy on K logits."""
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@_register("focal", "binary", "multiclass")
def focal(*, gamma: Annotated[float, Field(ge=0)] = 2.0,
          alpha: Annotated[float, Field(gt=0, lt=1)] | None = None,
          weight: torch.Tensor | None = None) -> nn.Module:
    return FocalLoss(gamma, alpha, weight)


@_register("mse", "regression")
def mse() -> nn.Module:
    return _Regression(F.mse_loss)


@_register("mae", "regression")
def mae() -> nn.Module:
    return _Regression(F.l1_loss)


@_register("huber", "regression")
def huber(*, delta: Annotated[float, Field(gt=0)] = 1.0) -> nn.Module:
    return _Regression(F.huber_loss, delta=delta)
