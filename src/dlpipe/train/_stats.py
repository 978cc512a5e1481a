"""Weight and gradient statistics of every parameter tensor, once per epoch (param_stats.jsonl).

Cheap by design: gradients are read at one optimizer step per epoch (the last one), through
an optimizer step pre-hook, because `fit` sets them to None right after each step. The hook
costs a counter increment on the other steps; the statistics themselves (a histogram, a few
norms per tensor) are computed once per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlpipe.train.callbacks import Callback, Metrics
from dlpipe.train.state import TrainState

__all__ = ["ParamStats"]


class ParamStats(Callback):
    """Record a weight histogram and the gradient L2 norm of each parameter tensor every epoch.

    Each epoch adds one JSON line::

        {"epoch": 3, "params": {"layers.0.weight": {"shape": [64, 30], "mean": ..., "std": ...,
         "norm": ..., "grad_norm": ..., "hist": {"min": ..., "max": ..., "counts": [...]}}}}

    `hist` has `bins` equal-width bins from `min` to `max` of that epoch's values.
    `grad_norm` is the gradient the optimizer applied at the epoch's last step (after
    clipping, summed over accumulated batches); None for a tensor without a gradient.

    Args:
        model: the network being trained.
        optimizer: its optimizer; a step pre-hook on it reads the gradients.
        steps_per_epoch: optimizer steps in an epoch; the gradients of the last are recorded.
        sink: receives the JSON lines of every epoch so far at the end of `fit` (to write
            param_stats.jsonl).
        bins: histogram bins per tensor.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 sink: Callable[[str], None] | None = None, *, bins: int = 20) -> None:
        self.model = model
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.sink = sink
        self.bins = bins
        # Kept as encoded lines: the checkpoint stores them as one string every epoch, which
        # costs a copy, not a walk over thousands of numbers.
        self.lines: list[str] = []
        self._step = 0
        self._grad_norms: dict[str, float | None] = {}
        self._handle: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        self._handle = self.optimizer.register_step_pre_hook(self._before_step)

    def on_epoch_start(self, state: TrainState) -> None:
        self._step = 0
        self._grad_norms = {}

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._grad_norms = grad_norms(self.model)

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        params = {}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                params[name] = tensor_stats(p, self.bins)
                params[name]["grad_norm"] = self._grad_norms.get(name)
        self.lines.append(json.dumps({"epoch": state.epoch, "params": params}) + "\n")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def on_fit_end(self, state: TrainState) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.sink is not None:
            self.sink("".join(self.lines))

    def state_dict(self) -> dict[str, Any]:
        return {"jsonl": "".join(self.lines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lines = state.get("jsonl", "").splitlines(keepends=True)


def grad_norms(model: nn.Module) -> dict[str, float | None]:
    """L2 norm of each parameter's current gradient (None where there is none), one sync."""
    named = [(n, p.grad) for n, p in model.named_parameters()]
    present = [(n, g) for n, g in named if g is not None]
    norms: dict[str, float | None] = dict.fromkeys((n for n, _ in named), None)
    if present:
        values = torch.stack([g.detach().float().norm() for _, g in present])
        norms.update(zip((n for n, _ in present), map(_short, values.cpu().tolist()),
                         strict=True))
    return norms


def tensor_stats(p: torch.Tensor, bins: int) -> dict[str, Any]:
    """Shape, mean, std, L2 norm and a `bins`-bin histogram of a tensor's values."""
    values = p.detach().float().reshape(-1)
    low, high = float(values.min()), float(values.max())
    counts = torch.histc(values, bins=bins, min=low, max=high if high > low else low + 1e-12)
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"shape": list(p.shape), "mean": _short(values.mean()), "std": _short(std),
            "norm": _short(values.norm()), "hist": {"min": low, "max": high,
                                                    "counts": [int(c) for c in counts.tolist()]}}


def _short(value: Any) -> float:
    """7 significant digits (float32's precision), so the lines stay short."""
    return float(f"{float(value):.7g}")
