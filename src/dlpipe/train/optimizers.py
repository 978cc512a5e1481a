"""OPTIMIZERS: name → builder(params, **kwargs); parameter groups without decay on biases.

Thin wrappers over `torch.optim`, with annotated signatures so `pipeline.check` validates
`train.optimizer` before any work starts (a negative `lr` is a config error, not a crash).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from dlpipe.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Params = Iterable[Any]


@OPTIMIZERS.register("sgd")
def sgd(params: Params, *, lr: PositiveFloat = 0.01, momentum: Beta = 0.0,
        nesterov: bool = False, weight_decay: NonNegative = 0.0,
        dampening: NonNegative = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, dampening=dampening)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Params, *, lr: PositiveFloat = 0.01, alpha: Beta = 0.99,
            eps: PositiveFloat = 1e-8, momentum: Beta = 0.0, centered: bool = False,
            weight_decay: NonNegative = 0.0) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                               centered=centered, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Params, *, lr: PositiveFloat = 1e-3,
         betas: tuple[Beta, Beta] = (0.9, 0.999), eps: PositiveFloat = 1e-8,
         weight_decay: NonNegative = 0.0, amsgrad: bool = False,
         fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam; `fused` (one kernel for every parameter) defaults to on for CUDA parameters."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad, fused=fused)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, *, lr: PositiveFloat = 1e-3,
          betas: tuple[Beta, Beta] = (0.9, 0.999), eps: PositiveFloat = 1e-8,
          weight_decay: NonNegative = 0.01, amsgrad: bool = False,
          fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW; `fused` (one kernel for every parameter) defaults to on for CUDA parameters."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad, fused=fused)


@OPTIMIZERS.register("adagrad")
def adagrad(params: Params, *, lr: PositiveFloat = 0.01, lr_decay: NonNegative = 0.0,
            weight_decay: NonNegative = 0.0, eps: PositiveFloat = 1e-10) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                               eps=eps)


@OPTIMIZERS.register("adadelta")
def adadelta(params: Params, *, lr: PositiveFloat = 1.0, rho: Beta = 0.9,
             eps: PositiveFloat = 1e-6, weight_decay: NonNegative = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


_NO_DECAY = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.Embedding)


def decay_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights that take decay and penalties, biases / norm / embedding parameters)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias" or isinstance(module, _NO_DECAY) or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return decay, no_decay


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weight decay on weight matrices only, none on biases and norms.

    Without decay the split would change nothing but cost a second (foreach) update per
    step, about 12% of a small MLP's step time on CPU, so one group is returned.
    """
    if not weight_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": 0.0}]
    decay, no_decay = decay_split(model)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
