"""Hooks into `fit`: the Callback base and the callbacks dlpipe ships.

The hook positions are drawn in `dlpipe.train.loop.fit`'s docstring. Callbacks receive the
live `TrainState`, never the loop itself; a callback that keeps state across epochs returns
it from `state_dict`, so a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dlpipe.errors import TrainingError
from dlpipe.metrics import higher_is_better
from dlpipe.train.state import TrainState

Metrics = dict[str, float]


class Callback:
    """Hooks into `fit`. Override the ones you need; the rest do nothing.

    Set `state.should_stop = True` to end training after the current epoch. Exceptions whose
    type is listed in `passthrough` propagate unchanged (Optuna's `TrialPruned`); any other
    failure is re-raised as a `TrainingError` naming the callback and the hook.
    """

    passthrough: tuple[type[BaseException], ...] = ()

    def on_fit_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_batch_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def overriding(callbacks: Sequence[Callback], hook: str) -> list[Callable[..., None]]:
    """The bound `hook` of each callback that overrides it, so unused hooks cost nothing."""
    return [
        _guarded(cb, hook)
        for cb in callbacks
        if getattr(type(cb), hook, None) is not getattr(Callback, hook)
    ]


def call(callbacks: Sequence[Callback], hook: str, *args: Any) -> None:
    """Call `hook` on every callback, in order."""
    for fn in overriding(callbacks, hook):
        fn(*args)


def _guarded(cb: Callback, hook: str) -> Callable[..., None]:
    method = getattr(cb, hook)

    def run(*args: Any) -> None:
        try:
            method(*args)
        except (TrainingError, *cb.passthrough):
            raise
        except Exception as exc:
            raise TrainingError(f"{type(cb).__name__}.{hook} failed: {exc}") from exc

    return run


def monitored(metrics: Metrics, monitor: str, mode: str) -> tuple[float, str]:
    """The better of the raw and the weight-averaged (`ema_`) value of `monitor`.

    Returns:
        (value, source) where source is ``raw`` or ``ema``.
    """
    if monitor not in metrics:
        known = ", ".join(sorted(k for k in metrics if not k.startswith("ema_")))
        raise TrainingError(f"train.early_stopping.monitor: {monitor!r} is not logged; "
                            f"known: {known}")
    value, source = metrics[monitor], "raw"
    ema = metrics.get(f"ema_{monitor}")
    if ema is not None and _better(ema, value, mode, 0.0):
        value, source = ema, "ema"
    return value, source


def resolve_mode(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "max" if higher_is_better(monitor) else "min"


def _better(new: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new < best - min_delta if mode == "min" else new > best + min_delta


class History(Callback):
    """Append each epoch's metrics to `state.history` and hand the list to `sink`."""

    def __init__(self, sink: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.sink = sink

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        row = {"epoch": state.epoch, "step": state.step, "train_loss": state.train_loss}
        row.update(metrics)
        state.history.append(row)
        if self.sink is not None:
            self.sink(state.history)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    def __init__(self, monitor: str = "val_loss", *, mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        value, _ = monitored(metrics, self.monitor, self.mode)
        if _better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.should_stop = True
            state.stop_reason = (f"early stopping: {self.monitor} did not improve for "
                                 f"{self.patience} epochs (best {self.best:.6g})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class ExponentialMovingAverage(Callback):
    """Keep an exponential moving average of the weights and validate it every epoch.

    Its validation metrics join the epoch's metrics with an ``ema_`` prefix, so the best
    weights are chosen between the raw and the averaged ones.
    """

    def __init__(self, model: nn.Module, decay: float,
                 validate: Callable[[nn.Module], Metrics]) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.decay = decay
        self.validate = validate
        self.model = model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)

    def on_batch_end(self, state: TrainState) -> None:
        self.averaged.update_parameters(self.model)

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        metrics.update({f"ema_{k}": v for k, v in self.validate(self.averaged.module).items()})

    def weights(self) -> dict[str, torch.Tensor]:
        return self.averaged.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])


class BestWeights(Callback):
    """Remember the weights (raw or averaged) of the best epoch by `monitor`."""

    def __init__(self, model: nn.Module, monitor: str = "val_loss", *, mode: str = "auto",
                 ema: ExponentialMovingAverage | None = None) -> None:
        self.model = model
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.ema = ema
        self.best: float | None = None
        self.epoch: int | None = None
        self.source: str | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        value, source = monitored(metrics, self.monitor, self.mode)
        if _better(value, self.best, self.mode, 0.0):
            chosen = self.ema.weights() if source == "ema" and self.ema else self.model.state_dict()
            self.weights = {k: v.detach().clone() for k, v in chosen.items()}
            self.best, self.epoch, self.source = value, state.epoch, source

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "source": self.source,
                "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.epoch, self.source = state["best"], state["epoch"], state["source"]
        self.weights = state["weights"]


class LRSchedule(Callback):
    """Step a learning-rate scheduler per optimizer step or per epoch, and log the rate."""

    def __init__(self, scheduler: Any, *, interval: str = "epoch",
                 monitor: str | None = None) -> None:
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def on_batch_end(self, state: TrainState) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        optimizer = self.scheduler.optimizer
        metrics["lr"] = float(optimizer.param_groups[0]["lr"])
        if self.interval != "epoch":
            return
        if self.monitor is not None:
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class Checkpoint(Callback):
    """Every `every` epochs (and at the end), hand the state to `save` for a resumable file."""

    def __init__(self, save: Callable[[TrainState], None], every: int = 1) -> None:
        self.save = save
        self.every = every
        self._saved_epoch = -1

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        if state.epoch % self.every == 0 or state.should_stop:
            self.save(state)
            self._saved_epoch = state.epoch

    def on_fit_end(self, state: TrainState) -> None:
        if self._saved_epoch != state.epoch:
            self.save(state)


class ProgressBar(Callback):
    """A rich progress bar with the live loss and validation metrics; quiet off a terminal."""

    def __init__(self, epochs: int, batches_per_epoch: int, *, enabled: bool | None = None,
                 loss_of: Callable[[], float] | None = None) -> None:
        self.epochs = epochs
        self.batches = batches_per_epoch
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.loss_of = loss_of
        self._every = max(1, batches_per_epoch // 20)  # ~20 refreshes an epoch, not one a batch
        self._progress: Any = None
        self._task: Any = None
        self._in_epoch = 0

    def on_fit_start(self, state: TrainState) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.batches, epoch="", info="")

    def on_epoch_start(self, state: TrainState) -> None:
        if self._progress is not None:
            self._in_epoch = 0
            self._progress.reset(self._task, total=self.batches,
                                 epoch=f"{state.epoch + 1}/{self.epochs}", info="")

    def on_batch_end(self, state: TrainState) -> None:
        if self._progress is None:
            return
        self._in_epoch += 1
        if self._in_epoch % self._every == 0:
            self._progress.update(self._task, completed=self._in_epoch)

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        if self._progress is None:
            return
        shown = {"loss": state.train_loss, **{k: v for k, v in metrics.items() if "val" in k}}
        info = "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, float))
        self._progress.update(self._task, completed=self.batches, info=info)
        self._progress.console.print(f"epoch {state.epoch}: {info}", highlight=False)

    def on_fit_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display; safe to call twice, and after a failed fit."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
