"""A few epochs of training after a pruning step, through `dlpipe.train.fit_arrays`: the
run's own loss, optimizer, batch size, clipping, penalties and augmentation, at a constant
rate (`compress.finetune_lr_factor` × the run's; no scheduler, EMA or early stopping),
keeping the weights of the epoch with the lowest validation loss when validation rows are
given."""

from __future__ import annotations

import inspect

import numpy as np
from torch import nn

from dlpipe.config import Component, PipelineConfig
from dlpipe.errors import ConfigError
from dlpipe.features import FittedFeatures
from dlpipe.train import OPTIMIZERS, fit_arrays

__all__ = ["finetune", "finetune_config", "run_lr"]


def finetune_config(cfg: PipelineConfig, *, epochs: int, lr_factor: float,
                    restore_best: bool) -> PipelineConfig:
    """`cfg` with a train section for fine-tuning a pruned model.

    Args:
        epochs: the epochs to train.
        lr_factor: the learning rate is this × the rate the run trained with
            (`train.optimizer.lr`, or `finetune.lr` for a fine-tuned run).
        restore_best: keep the epoch of lowest `val_loss` (else the last epoch).

    Example:
        >>> finetune_config(cfg, epochs=3, lr_factor=0.1, restore_best=True).train.epochs
        3
    """
    tc = cfg.train
    kwargs = {**tc.optimizer.kwargs, "lr": run_lr(cfg) * lr_factor}
    train = tc.model_copy(update={
        "epochs": epochs, "optimizer": Component(name=tc.optimizer.name, **kwargs),
        "scheduler": None, "early_stopping": None, "ema": None, "compile": False,
        "keep": "best" if restore_best else "last", "progress": "never", "loggers": [],
    })
    return cfg.model_copy(update={"train": train})


def finetune(model: nn.Module, cfg: PipelineConfig, fitted: FittedFeatures,
             train_xy: tuple[np.ndarray, np.ndarray],
             val_xy: tuple[np.ndarray, np.ndarray] | None = None, *, epochs: int,
             lr_factor: float) -> nn.Module:
    """Train `model` in place for `epochs` epochs at `lr_factor` × the run's learning rate.

    Pruning masks attached by `torch.nn.utils.prune` stay applied, so pruned weights stay
    zero. With `val_xy`, the weights of the epoch with the lowest validation loss are kept.

    Args:
        fitted: the run's fitted features (task, classes, input layout for augmentation).
        train_xy: float32 (N, F) training inputs and their (N,) encoded targets.
        val_xy: the validation split alike, or None.

    Returns:
        The model, in eval mode.
    """
    if epochs == 0 or len(train_xy[0]) == 0:
        return model.eval()
    has_val = val_xy is not None and len(val_xy[0]) > 0
    tuned = finetune_config(cfg, epochs=epochs, lr_factor=lr_factor, restore_best=has_val)
    trained = fit_arrays(tuned, fitted, train_xy, val_xy if has_val else None, model=model)
    return trained.model.eval()


def run_lr(cfg: PipelineConfig) -> float:
    """The learning rate the run trained with: `finetune.lr` for a fine-tuned run, else
    `train.optimizer.lr`, else the optimizer's default.

    Raises:
        ConfigError: none of these is known.
    """
    if cfg.finetune is not None and cfg.finetune.lr is not None:
        return float(cfg.finetune.lr)
    optimizer = cfg.train.optimizer
    if "lr" in optimizer.kwargs:
        return float(optimizer.kwargs["lr"])
    default = inspect.signature(OPTIMIZERS.get(optimizer.name)).parameters.get("lr")
    if default is None or not isinstance(default.default, int | float):
        raise ConfigError([("train.optimizer.lr", f"optimizer {optimizer.name!r} has no default "
                                                  f"learning rate to scale for fine-tuning "
                                                  f"after pruning; set train.optimizer.lr")])
    return float(default.default)
