"""Batches streamed from a streaming run's prepared files (`data.stream: true`).

The training rows stay on disk (prepared/train.x.npy). Every epoch reads them in blocks of
`data.chunk_rows` rows, in a fresh random block order, fills a buffer of about
`train.shuffle_buffer` rows from consecutive blocks of that order, shuffles the buffer's
rows and cuts it into batches; the rows left over (less than a batch) join the next buffer.
A background thread reads the next buffer while the model trains on this one. Memory is
bounded by two buffers, whatever the file's size.

The block order and the row shuffles are drawn from the run's generator, whose state is in
the checkpoints, so a resumed run reads the same batches as an uninterrupted one.

Example::

    split = StreamedSplit.of(rundir, "train")
    train = StreamBatches(split, 64, block_rows=131_072, buffer_rows=262_144,
                          shuffle=True, generator=torch.Generator().manual_seed(0))
    for x, y in train: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dlpipe.features.prepared import PreparedArray
from dlpipe.runs import RunDir
from dlpipe.train.loop import Batch, TensorBatches

__all__ = ["StreamBatches", "StreamedSplit"]


@dataclass(frozen=True)
class StreamedSplit:
    """The prepared inputs and targets of one split of a streaming run."""

    x: PreparedArray
    y: PreparedArray

    @classmethod
    def of(cls, rundir: RunDir, split: str) -> StreamedSplit:
        return cls(PreparedArray(rundir.prepared_file(split, "x")),
                   PreparedArray(rundir.prepared_file(split, "y")))

    def __len__(self) -> int:
        return len(self.x)

    def class_counts(self, n_classes: int, block_rows: int = 1 << 20) -> torch.Tensor:
        """How many rows of each class (targets read block by block)."""
        counts = np.zeros(n_classes, dtype=np.int64)
        for block in self.y.blocks(block_rows):
            counts += np.bincount(block.astype(np.int64), minlength=n_classes)[:n_classes]
        return torch.as_tensor(counts)


class StreamBatches(TensorBatches):
    """Mini-batches of a `StreamedSplit`, read from disk as the loop asks for them.

    Args:
        split: the prepared split.
        batch_size: rows per batch; a shuffled epoch skips a trailing batch of one row.
        block_rows: rows per read (the unit of the block shuffle).
        buffer_rows: rows shuffled together (rounded to whole blocks, at least one).
        shuffle: random block order and row order every epoch; else the file's order.
        generator: CPU generator (checkpointed) for the block order and the row shuffles.
        device: where batches are delivered; from pinned buffers on CUDA.
    """

    def __init__(self, split: StreamedSplit, batch_size: int, *, block_rows: int = 131_072,
                 buffer_rows: int = 262_144, shuffle: bool = False,
                 generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.block_rows = block_rows
        self.blocks_per_buffer = max(1, buffer_rows // block_rows)
        self.target = device or torch.device("cpu")
        self._y: torch.Tensor | None = None

    @property
    def x(self) -> PreparedArray:  # type: ignore[override]
        return self.split.x

    @property
    def y(self) -> torch.Tensor:  # type: ignore[override]
        """Every target of the split (validation scores them all at once)."""
        if self._y is None:
            self._y = _tensor(self.split.y.read(0, len(self.split.y)))
        return self._y

    @property
    def device(self) -> torch.device:
        return self.target

    def _stop(self) -> int:
        n = len(self.split)
        return n - 1 if self.shuffle and n > 1 and n % self.batch_size == 1 else n

    def __iter__(self) -> Iterator[Batch]:
        cuda = self.target.type == "cuda"
        for hx, hy in self._host_batches():
            if cuda:
                hx, hy = hx.pin_memory(), hy.pin_memory()
            yield (hx.to(self.target, non_blocking=cuda), hy.to(self.target, non_blocking=cuda))

    def _host_batches(self) -> Iterator[Batch]:
        n_blocks = -(-len(self.split) // self.block_rows)
        order = (torch.randperm(n_blocks, generator=self.generator).tolist() if self.shuffle
                 else list(range(n_blocks)))
        groups = [[self._block(b) for b in order[g:g + self.blocks_per_buffer]]
                  for g in range(0, n_blocks, self.blocks_per_buffer)]
        yield from self._cut(groups, self.generator, self.batch_size, self._stop())

    def _block(self, b: int) -> tuple[int, int]:
        """The rows [start, stop) of block `b`."""
        return b * self.block_rows, min((b + 1) * self.block_rows, len(self.split))

    def _cut(self, groups: list[list[tuple[int, int]]], generator: torch.Generator | None,
             batch_size: int, stop: int) -> Iterator[Batch]:
        """Batches of `batch_size` rows (the last may be shorter), `stop` rows in all, from
        `groups` of row ranges: each group is read as one buffer (the next one by a thread
        while this one trains) and, when shuffling, its rows are permuted by `generator`;
        the rows left over (less than a batch) join the next buffer."""
        if not groups:
            return
        # The thread only reads; every draw from the generator happens here, in order, so the
        # batches do not depend on the thread's timing.
        carry_x = np.empty((0, *self.split.x.shape[1:]), dtype=self.split.x.dtype)
        carry_y = np.empty((0,), dtype=self.split.y.dtype)
        yielded = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: Future[tuple[np.ndarray, np.ndarray]] = pool.submit(self._read, groups[0])
            for g in range(len(groups)):
                bx, by = pending.result()
                if g + 1 < len(groups):
                    pending = pool.submit(self._read, groups[g + 1])
                bx, by = np.concatenate([carry_x, bx]), np.concatenate([carry_y, by])
                if self.shuffle:
                    perm = torch.randperm(len(bx), generator=generator).numpy()
                    bx, by = bx[perm], by[perm]
                last = g + 1 == len(groups)
                whole = len(bx) if last else len(bx) - len(bx) % batch_size
                for start in range(0, whole, batch_size):
                    rows = min(batch_size, stop - yielded, whole - start)
                    if rows <= 0:
                        return
                    yield (torch.from_numpy(bx[start:start + rows]),
                           _tensor(by[start:start + rows]))
                    yielded += rows
                carry_x, carry_y = bx[whole:], by[whole:]

    def _read(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `ranges`, in that order."""
        xs = [self.split.x.read(start, stop) for start, stop in ranges]
        ys = [self.split.y.read(start, stop) for start, stop in ranges]
        return np.concatenate(xs), np.concatenate(ys)


def _tensor(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y))
