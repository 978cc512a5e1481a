"""Where the prepared data sets live while a model trains on a GPU (`train.data_on_device`).

When the training and validation tensors fit in GPU memory they are put there once, and
every batch is sliced on the device by the shuffled index: no host→device copy per step.
Otherwise they stay in pinned (page-locked) host memory: each batch is gathered on the host
by the same shuffled index into a pinned buffer, copied with ``non_blocking=True`` on a side
CUDA stream, one batch ahead, so the copy of the next batch overlaps the compute of this one.

Both paths draw the same permutation from the same generator, so they train on the same
batches in the same order. On the CPU (or MPS) the data simply lives on the training device,
as it always did.

Example (what the train stage does; see `dlpipe.train.fit_arrays`)::

    placed = place("auto", torch.device("cuda"), tensor_bytes(train_xy, task))
    x, y = placed.put(x, y)                       # on the GPU, or pinned on the host
    train = placed.feed(TensorBatches(x, y, 64, shuffle=True, generator=g))
    placed.label                                  # "cuda" or "pinned host", for training.json
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dlpipe.train.loop import Batch, TensorBatches

__all__ = ["DEVICE_SHARE", "HostBatches", "Placement", "place", "tensor_bytes"]

DEVICE_SHARE = 0.5
"""The largest fraction of the GPU's free memory (`torch.cuda.mem_get_info`) that `auto`
gives to the data sets; the rest is left to activations, gradients and optimizer state."""

Mode = Literal["auto", "always", "never"]


def tensor_bytes(xy: tuple[np.ndarray, np.ndarray] | None, task: str) -> int:
    """Bytes the training tensors of `xy` take: float32 inputs, int64 or float32 targets.

    Example:
        >>> tensor_bytes((np.zeros((10, 3)), np.zeros(10)), "regression")
        160
    """
    if xy is None:
        return 0
    x, y = xy
    return int(x.size) * 4 + int(y.size) * (8 if task == "multiclass" else 4)


@dataclass(frozen=True)
class Placement:
    """Where the data sets of one training run live.

    Attributes:
        device: the training device.
        on_device: the data sets live on `device` (else in pinned host memory).
    """

    device: torch.device
    on_device: bool = True

    @property
    def label(self) -> str:
        """What training.json records as ``data_on``: the device type, or ``pinned host``."""
        return self.device.type if self.on_device else "pinned host"

    @property
    def data_device(self) -> torch.device:
        """Where to build the data tensors: the training device, or the host."""
        return self.device if self.on_device else torch.device("cpu")

    def put(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` and `y` where they live during training (pinned when on a CUDA machine's host)."""
        if self.on_device:
            return x.to(self.device), y.to(self.device)
        if self.device.type == "cuda":
            return x.cpu().pin_memory(), y.cpu().pin_memory()
        return x.cpu(), y.cpu()

    def feed(self, batches: TensorBatches) -> TensorBatches:
        """`batches` as the loop should read them: as they are on the device, else prefetched."""
        return batches if self.on_device else HostBatches(batches, self.device)


def place(mode: Mode, device: torch.device, nbytes: int, *,
          share: float = DEVICE_SHARE) -> Placement:
    """Decide where `nbytes` of data sets live while training on `device`.

    Args:
        mode: ``always`` keeps them on a GPU, ``never`` in pinned host memory, ``auto`` on the
            GPU when they take at most `share` of its free memory.
        device: the training device; on anything but CUDA the data live there, whatever `mode`.
        nbytes: size of the training (and validation) tensors, see `tensor_bytes`.

    Returns:
        The `Placement`.

    Example:
        >>> place("auto", torch.device("cpu"), 10**12).label
        'cpu'
    """
    if device.type != "cuda" or mode == "always":
        return Placement(device, on_device=True)
    if mode == "never":
        return Placement(device, on_device=False)
    free, _total = torch.cuda.mem_get_info(device)
    return Placement(device, on_device=nbytes <= share * free)


class HostBatches(TensorBatches):
    """The batches of `source` (data in host memory) delivered on `device`, one batch ahead.

    Each batch is gathered on the host by `source`'s (shuffled) index into one of two pinned
    buffers, copied to `device` with ``non_blocking=True`` on a side CUDA stream, and handed
    over when the loop asks for it, while the next batch is already being gathered and
    copied. A plain `TensorBatches` source is gathered straight into the pinned buffer; any
    subclass (DDP's `ShardedBatches`) is iterated as it is and its batches copied into it.

    `x` and `y` stay the whole host tensors; `gather` and `average` are `source`'s. On a
    device other than CUDA there is no stream: batches are gathered and copied in turn.

    Args:
        source: batches over host tensors (pinned when `device` is CUDA).
        device: the training device.
    """

    def __init__(self, source: TensorBatches, device: torch.device) -> None:
        super().__init__(source.x, source.y, source.batch_size, shuffle=source.shuffle,
                         generator=source.generator)
        self.source = source
        self.target = device
        self.world_size = getattr(source, "world_size", 1)  # a ShardedBatches source's

    @property
    def device(self) -> torch.device:
        return self.target

    def __len__(self) -> int:
        return len(self.source)

    def gather(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.source.gather(outputs)

    def average(self, value: torch.Tensor) -> torch.Tensor:
        return self.source.average(value)

    def __iter__(self) -> Iterator[Batch]:
        cuda = self.target.type == "cuda"
        stream = torch.cuda.Stream(self.target) if cuda else None
        slots = [_Slot(self.source, pin=cuda) for _ in range(2)]
        ahead: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None = None
        for i, (hx, hy) in enumerate(self._host_batches(slots)):
            event = torch.cuda.Event() if cuda else None
            with torch.cuda.stream(stream) if cuda else nullcontext():
                # copy=True: a batch never aliases a buffer that is about to be refilled
                dx = hx.to(self.target, non_blocking=cuda, copy=True)
                dy = hy.to(self.target, non_blocking=cuda, copy=True)
                if event is not None:
                    event.record(stream)
            slots[i % 2].copied = event  # the buffer is free again once this copy is done
            if ahead is not None:
                yield _hand_over(*ahead)
            ahead = (dx, dy, event)
        if ahead is not None:
            yield _hand_over(*ahead)

    def _host_batches(self, slots: list[_Slot]) -> Iterator[Batch]:
        """Host batches in `source`'s order; batch i is written in ``slots[i % 2]``."""
        src = self.source
        if type(src) is not TensorBatches:  # a subclass cuts its own batches: copy them
            for i, (bx, by) in enumerate(src):
                yield slots[i % 2].fill(bx, by)
            return
        n = len(src.x)
        if not src.shuffle:  # contiguous rows of the (pinned) tensors: no gather needed
            for start in range(0, n, src.batch_size):
                yield src.x[start:start + src.batch_size], src.y[start:start + src.batch_size]
            return
        order = torch.randperm(n, generator=src.generator)  # the draw TensorBatches makes
        for i, start in enumerate(range(0, src._stop(), src.batch_size)):
            yield slots[i % 2].take(src.x, src.y, order[start:start + src.batch_size])


class _Slot:
    """One pinned host buffer of a batch, reused once the copy out of it has finished."""

    def __init__(self, source: TensorBatches, *, pin: bool) -> None:
        rows = source.batch_size
        self.x = torch.empty((rows, *source.x.shape[1:]), dtype=source.x.dtype, pin_memory=pin)
        self.y = torch.empty((rows, *source.y.shape[1:]), dtype=source.y.dtype, pin_memory=pin)
        self.copied: torch.cuda.Event | None = None

    def _free(self, rows: int) -> Batch:
        if self.copied is not None:
            self.copied.synchronize()  # the previous batch's copy out of this buffer is done
        if rows > len(self.x):  # a source whose batches are larger than its batch_size
            self.x = torch.empty((rows, *self.x.shape[1:]), dtype=self.x.dtype,
                                 pin_memory=self.x.is_pinned())
            self.y = torch.empty((rows, *self.y.shape[1:]), dtype=self.y.dtype,
                                 pin_memory=self.y.is_pinned())
        return self.x[:rows], self.y[:rows]

    def take(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> Batch:
        bx, by = self._free(len(idx))
        torch.index_select(x, 0, idx, out=bx)
        torch.index_select(y, 0, idx, out=by)
        return bx, by

    def fill(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        bx, by = self._free(len(x))
        bx.copy_(x)
        by.copy_(y)
        return bx, by


def _hand_over(x: torch.Tensor, y: torch.Tensor, event: torch.cuda.Event | None) -> Batch:
    """The batch, safe to use on the current stream once its copy has finished."""
    if event is not None:
        current = torch.cuda.current_stream(x.device)
        current.wait_event(event)
        x.record_stream(current)  # allocated on the side stream, used on this one
        y.record_stream(current)
    return x, y

