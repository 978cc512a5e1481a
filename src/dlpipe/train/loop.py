"""The one training loop, `fit`, and `validate`. Everything else hooks in through callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from dlpipe.errors import TrainingError
from dlpipe.train.callbacks import Callback, call, overriding
from dlpipe.train.precision import Precision
from dlpipe.train.state import TrainState

Batch = tuple[torch.Tensor, torch.Tensor]
_SYNC_EVERY = 32
"""Batches between two non-finite-loss checks on an accelerator (each check syncs)."""
_nothing = contextlib.nullcontext()


class TensorBatches:
    """Mini-batches sliced from pre-built tensors by a (shuffled) index; no per-sample Python.

    Args:
        x: (N, ...) inputs, already on the training device.
        y: (N, ...) targets, same device.
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: draw a new permutation from `generator` every epoch. A shuffled epoch
            skips a trailing batch of a single row (batch norm cannot train on one row);
            the skipped row changes from epoch to epoch.
        generator: CPU generator whose state is part of the checkpoint, for exact resume.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 shuffle: bool = False, generator: torch.Generator | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-self._stop() // self.batch_size)

    @property
    def device(self) -> torch.device:
        """Where the batches are delivered: the training device."""
        return self.x.device

    def _stop(self) -> int:
        n = len(self.x)
        return n - 1 if self.shuffle and n > 1 and n % self.batch_size == 1 else n

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.x)
        if not self.shuffle:
            for start in range(0, n, self.batch_size):
                yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            return
        order = torch.randperm(n, generator=self.generator).to(self.x.device)
        for start in range(0, self._stop(), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]

    # Under torchrun each process iterates over its share (`distributed.ShardedBatches`);
    # these two put the shares' results back together. In a single process they do nothing.
    def gather(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs of every process's rows, in row order, from this process's (N, ...) ones."""
        return outputs

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the processes that share the batches."""
        return value


def fit(
    model: nn.Module,
    train: TensorBatches,
    val: TensorBatches | None,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    callbacks: Sequence[Callback] = (),
    state: TrainState | None = None,
    val_metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    grad_clip: float | None = None,
    accumulation: int = 1,
    precision: Precision | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
    train_metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
) -> TrainState:
    """Train `model` for up to `epochs` epochs; return the final state.

    The loop, and where each hook fires::

        on_fit_start
        while epoch < epochs and not should_stop:
            on_epoch_start
            for x, y in train:                  # shuffled slices of pre-built tensors
                (augment the batch)             # images only; mixup/cutmix soften y
                forward · loss (+ penalty) · backward     # forward under autocast if mixed
                every `accumulation` batches: (unscale) · clip · step · zero_grad
                    on_batch_end                # EMA update, per-step LR schedules
            metrics = train_metrics(outputs)    # train_<name>, from the epoch's batches
            metrics |= validate(model, val)     # val_loss and `val_metrics`
            epoch += 1
            on_epoch_end(metrics)               # EMA adds ema_*, history, early stopping,
                                                # best weights, LR schedules, checkpoint
        on_fit_end

    Under torchrun, `model` is wrapped in DistributedDataParallel (backward averages the
    gradients), `train` and `val` are this rank's shares (`distributed.ShardedBatches`), the
    train loss is averaged and the validation outputs gathered across ranks.

    Args:
        val_metrics: maps (outputs, targets) of the whole validation split to metrics
            (without the ``val_`` prefix, which `validate` adds).
        penalty: extra loss term (L1/L2 on weights), called once per batch.
        accumulation: batches whose gradients are summed before each optimizer step.
        precision: mixed-precision autocast and, for fp16, the gradient scaler.
        augment: maps each training batch (x, y) to an augmented one (new tensors; the
            batch is a view of the data set and is never changed in place).
        train_metrics: like `val_metrics`, applied (keys prefixed ``train_``) to the training
            batches' outputs of the epoch, as Keras does: taken as they came out during the
            epoch, under dropout and augmentation, with the weights changing between batches.
            The outputs stay on the device, one host copy per epoch, no sync per batch.
            Skipped when `augment` mixes targets (mixup/cutmix: no hard target to score).
            Under torchrun each rank scores its share and the values are averaged (exact
            for per-row means such as accuracy; all shares have the same size).

    Raises:
        TrainingError: the loss became NaN or infinite, naming the step and the first
            module whose output was not finite.
    """
    state = state or TrainState()
    precision = precision or Precision()
    scaler = precision.scaler
    on_batch_end = overriding(callbacks, "on_batch_end")  # unused hooks cost nothing
    scoring = train_metrics is not None and not getattr(augment, "mixes_targets", False)
    call(callbacks, "on_fit_start", state)
    while state.epoch < epochs and not state.should_stop:
        call(callbacks, "on_epoch_start", state)
        model.train()
        loss_sum = torch.zeros((), device=train.device)
        n_batches = len(train)
        outputs: list[torch.Tensor] | None = [] if scoring else None
        targets: list[torch.Tensor] = []
        # Reading a GPU value stalls the host until the GPU catches up, so on accelerators the
        # loss is checked every _SYNC_EVERY batches (the running sum carries any NaN/inf).
        check_every = 1 if train.device.type == "cpu" else _SYNC_EVERY
        for i, (x, y) in enumerate(train):
            steps = (i + 1) % accumulation == 0 or i + 1 == n_batches
            if augment is not None:
                x, y = augment(x, y)
            # Under DDP, a micro-batch that does not end an accumulation keeps its gradients
            # local: one all-reduce per optimizer step, not one per batch.
            with model.no_sync() if not steps and hasattr(model, "no_sync") else _nothing:
                with precision.autocast():
                    out = model(x)
                    loss = loss_fn(out, y)
                if outputs is not None:  # kept on the device: scored once at the epoch's end
                    outputs.append(out.detach())
                    targets.append(y)
                if penalty is not None:
                    loss = loss + penalty()
                loss_sum += loss.detach()                    # no .item(): no sync per batch
                if ((i + 1) % check_every == 0 or i + 1 == n_batches) and not torch.isfinite(
                        loss_sum):
                    bad = loss if not torch.isfinite(loss) else loss_sum  # the NaN/inf itself
                    raise _non_finite(model, x, state, bad, check_every)
                scaled = loss / accumulation if accumulation > 1 else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if steps:
                if scaler is not None:
                    scaler.unscale_(optimizer)           # clip the true gradients
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)               # skips steps with inf/NaN gradients
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                for hook in on_batch_end:
                    hook(state)
        state.train_loss = float(train.average(loss_sum)) / n_batches  # over ranks, too
        metrics = _scored(train, train_metrics, outputs, targets) if outputs else {}
        if val is not None:
            metrics.update(validate(model, val, loss_fn, val_metrics))
        state.epoch += 1
        call(callbacks, "on_epoch_end", state, metrics)
    call(callbacks, "on_fit_end", state)
    return state


def _scored(train: TensorBatches,
            metrics_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
            outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, float]:
    """`metrics_fn` of the epoch's training outputs, keys prefixed ``train_``; the mean over
    the processes under torchrun (one all-reduce of the values)."""
    with torch.no_grad():
        values = metrics_fn(torch.cat(outputs).float(), torch.cat(targets))
    if getattr(train, "world_size", 1) > 1 and values:
        mean = train.average(torch.tensor(list(values.values()), device=train.device))
        values = dict(zip(values, mean.tolist(), strict=True))
    return {f"train_{k}": v for k, v in values.items()}


@torch.inference_mode()
def predict_outputs(model: nn.Module, batches: TensorBatches) -> torch.Tensor:
    """Raw outputs of `model` on every batch, concatenated: (N, out)."""
    model.eval()
    return batches.gather(torch.cat([model(x) for x, _ in batches]))


@torch.inference_mode()
def validate(
    model: nn.Module,
    val: TensorBatches,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    val_metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Mean loss and metrics of `model` on the validation split, keys prefixed ``val_``."""
    outputs = predict_outputs(model, val)
    y = val.y.to(outputs.device)  # a copy only when the data sets live on the host
    metrics = {"val_loss": float(loss_fn(outputs, y))}
    if val_metrics is not None:
        metrics.update({f"val_{k}": v for k, v in val_metrics(outputs, y).items()})
    return metrics


def _non_finite(model: nn.Module, x: torch.Tensor, state: TrainState,
                loss: torch.Tensor, check_every: int = 1) -> TrainingError:
    """Replay the batch with hooks to name the first module whose output is not finite."""
    culprit: list[str] = []

    def check(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not culprit and isinstance(output, torch.Tensor) and not torch.isfinite(
                    output).all():
                culprit.append(f"{name or 'model'} ({type(module).__name__})")
        return hook

    handles = [m.register_forward_hook(check(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    where = (f"the first non-finite output came from module {culprit[0]}" if culprit
             else "every module's output was finite, so the loss itself overflowed")
    at = f"step {state.step + 1}" if check_every == 1 else (
        f"one of the {check_every} steps up to step {state.step + 1}")
    return TrainingError(
        f"training: the loss became {float(loss.detach())} at {at} (epoch "
        f"{state.epoch + 1}); {where}. Lower train.optimizer.lr, set train.grad_clip, or "
        f"check the inputs for extreme values"
    )
