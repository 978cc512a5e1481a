"""SCHEDULERS: name → builder(optimizer, *, epochs, steps_per_epoch, **kwargs) → (scheduler,
interval). The interval says whether the LRSchedule callback steps it per optimizer step or
per epoch; `plateau` steps on the monitored validation value."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch.optim import lr_scheduler

from dlpipe.registry import Registry

SCHEDULERS: Registry = Registry("scheduler")

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Scheduled = tuple[Any, str]


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
         step_size: Annotated[int, Field(ge=1)] = 10, gamma: Fraction = 0.1) -> Scheduled:
    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch"


@SCHEDULERS.register("exponential")
def exponential(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                gamma: Fraction = 0.95) -> Scheduled:
    return lr_scheduler.ExponentialLR(optimizer, gamma=gamma), "epoch"


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
           eta_min: Annotated[float, Field(ge=0)] = 0.0) -> Scheduled:
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min), "epoch"


@SCHEDULERS.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
             max_lr: Positive | None = None, pct_start: Fraction = 0.3,
             anneal_strategy: str = "cos") -> Scheduled:
    """One-cycle policy, stepped every optimizer step; `max_lr` defaults to the optimizer's lr."""
    peak = max_lr or optimizer.param_groups[0]["lr"]
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, epochs=epochs, steps_per_epoch=steps_per_epoch,
        pct_start=pct_start, anneal_strategy=anneal_strategy,
    ), "step"


@SCHEDULERS.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
            factor: Fraction = 0.1, patience: Annotated[int, Field(ge=0)] = 3,
            min_lr: Annotated[float, Field(ge=0)] = 0.0, mode: str = "min") -> Scheduled:
    """Divide the rate by 1/`factor` when the monitored value stalls for `patience` epochs."""
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor,
                                          patience=patience, min_lr=min_lr), "plateau"


def with_warmup(optimizer: torch.optim.Optimizer, scheduled: Scheduled | None,
                warmup_epochs: int, steps_per_epoch: int) -> Scheduled:
    """Prepend a linear warmup (from 1/10 of the rate) of `warmup_epochs` epochs."""
    scheduler, interval = scheduled or (None, "epoch")
    per = steps_per_epoch if interval == "step" else 1
    warm = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup_epochs * per)
    if scheduler is None:
        return warm, interval
    return lr_scheduler.SequentialLR(optimizer, [warm, scheduler],
                                     milestones=[warmup_epochs * per]), interval
