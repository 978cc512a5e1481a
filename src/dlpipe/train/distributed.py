"""Distributed training under torchrun: DistributedDataParallel over NCCL (GPUs) or gloo (CPU).

``torchrun --nproc-per-node N -m dlpipe run CONFIG`` starts N copies of dlpipe; they find
each other through torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE). `train.batch_size`
is the global batch: every process (rank) draws the same shuffled order, trains on its own
1/N share of each global batch, and DDP averages the gradients, so each step is the
single-process step on the same rows. Validation rows are split too and the outputs
gathered, so every rank computes the same metrics and takes the same early-stopping,
best-weights and learning-rate decisions.

Only rank 0 writes the run directory: the other ranks read it through a `RunDir` opened with
``writable=False``. Checkpoints hold the unwrapped network and the shared shuffling
generator, so they resume on any number of processes, and when torchrun restarts a failed
job (``--max-restarts``) training continues from the last complete checkpoint.

With a single process (no torchrun, or WORLD_SIZE=1) nothing here runs: `join` returns None
and the train stage takes its usual path, unchanged.

Example (what the train stage does; see `dlpipe.train.fit_arrays`)::

    group = join(cfg)                     # None in a single process
    if group is not None:
        train, val = group.shard(train), group.shard(val)
        model_for_fit = group.wrap(model)   # DDP; checkpoints keep `model` itself
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dlpipe.config import PipelineConfig
from dlpipe.errors import ConfigError, RunDirError
from dlpipe.runs import RunDir
from dlpipe.train.callbacks import Callback
from dlpipe.train.loop import Batch, TensorBatches
from dlpipe.train.state import TrainState
from dlpipe.train.stream import StreamBatches

__all__ = ["Group", "SeedPerRank", "ShardedBatches", "ShardedStreamBatches", "config_problems",
           "is_main_process", "join"]

T = TypeVar("T")

#: How long a collective may wait for the slowest rank. Generous, because the other ranks
#: wait in a barrier while rank 0 alone runs the data and features stages; a rank that dies
#: is noticed by torchrun's agent, which stops the others, long before that.
TIMEOUT = timedelta(hours=1)

_joined: Group | None = None


def is_main_process() -> bool:
    """Whether this process writes the run directory: a single process, or rank 0 of torchrun's."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def join(cfg: PipelineConfig) -> Group | None:
    """Join the torchrun job this process belongs to; None when it is the only process.

    The first call starts the process group (NCCL when training on CUDA, else gloo) and pins
    the process to the GPU of its LOCAL_RANK; later calls return the same `Group`.

    Raises:
        ConfigError: `cfg.train` cannot be split over the job's processes (batch size, device).

    Example:
        >>> group = join(cfg)       # under `torchrun --nproc-per-node 2`: Group(rank=0, ...)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    problems = config_problems(cfg, world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if problems:
        raise ConfigError(problems)
    global _joined
    if _joined is None:
        _joined = _start(cfg.train.device)
    return _joined


def config_problems(cfg: PipelineConfig, world: int, local_world: int) -> list[tuple[str, str]]:
    """What in `cfg.train` cannot run on `world` processes, `local_world` of them on this node."""
    tc = cfg.train
    problems: list[tuple[str, str]] = []
    if tc.batch_size % world:
        problems.append(("train.batch_size", _batch_message(tc.batch_size, world)))
    name = tc.device
    if name == "mps" or name.startswith("cuda:"):
        problems.append(("train.device", f"{name!r} cannot be shared by the {world} processes "
                                         f"of a torchrun job; use cuda (each process takes the "
                                         f"GPU of its LOCAL_RANK), auto or cpu"))
    elif name == "cuda" and not torch.cuda.is_available():
        problems.append(("train.device", "CUDA is not available on this machine; use cpu or auto"))
    elif _wants_cuda(name) and local_world > (gpus := torch.cuda.device_count()):
        problems.append(("train.device", f"torchrun started {local_world} processes on this "
                                         f"node, which has {gpus} GPU{'s' * (gpus != 1)}; use "
                                         f"--nproc-per-node {gpus} or train.device=cpu"))
    if tc.sync_batchnorm and not _wants_cuda(name):
        problems.append(("train.sync_batchnorm", "PyTorch's SyncBatchNorm runs on GPUs only "
                                                 "and this job trains on CPU processes; set it "
                                                 "to false"))
    return problems


def _batch_message(batch_size: int, world: int) -> str:
    return (f"{batch_size} is the global batch, split evenly over the {world} processes of "
            f"this torchrun job; use a multiple of {world}, e.g. {-(-batch_size // world) * world}")


def _wants_cuda(device_name: str) -> bool:
    return device_name in ("auto", "cuda") and torch.cuda.is_available()


def _start(device_name: str) -> Group:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = _wants_cuda(device_name)
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():  # a caller's own process group is used as it is
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, **_this_attempt())
        atexit.register(_leave)
    return Group(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
        device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
        restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        run_id=os.environ.get("TORCHELASTIC_RUN_ID", "none"),
    )


def _this_attempt() -> dict[str, Any]:
    """`init_process_group` arguments that give this attempt of the job keys of its own.

    torchrun's agent keeps one key-value store for all restarts of a job, so the addresses
    a process group publishes there outlive their processes, and a restarted job would read
    those of the dead ones (pytorch/pytorch#135712). Prefixing the keys with the restart
    count keeps attempts apart. The count is the same on every node when every node's agent
    restarts for a failure; a node that restarts for a membership change only keeps its old
    count, so elastic jobs over several nodes should set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    for torchrun, which gives each attempt a store of its own (and this returns {}).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return {}  # a store of this attempt's own: torch's env:// rendezvous is right
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=TIMEOUT)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"dlpipe/restart-{restart}/", store),
            "rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"])}


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun job, and the few operations training needs of it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    """Where this rank trains: cuda:LOCAL_RANK, or the CPU."""
    restart_count: int = 0
    """How many times torchrun has restarted the job (TORCHELASTIC_RESTART_COUNT)."""
    run_id: str = "none"
    """torchrun's rendezvous id (TORCHELASTIC_RUN_ID): the same in every process and restart."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    def shard(self, batches: TensorBatches) -> TensorBatches:
        """This rank's share of `batches` (same data, batch size and generator)."""
        if isinstance(batches, StreamBatches):
            return ShardedStreamBatches(batches, rank=self.rank, world_size=self.world_size)
        return ShardedBatches(batches.x, batches.y, batches.batch_size, rank=self.rank,
                              world_size=self.world_size, shuffle=batches.shuffle,
                              generator=batches.generator)

    def wrap(self, model: nn.Module, *, sync_batchnorm: bool = False) -> nn.Module:
        """`model` in DistributedDataParallel, which averages gradients across ranks.

        Only the training loop sees the wrapper: checkpoints, best weights and the weight
        average keep `model` itself, so their keys have no ``module.`` prefix. With
        `sync_batchnorm`, `model`'s batch norm layers are first replaced, in place, by
        SyncBatchNorm layers holding the same parameters and running statistics (the
        optimizer's parameters and the checkpoint keys stay the same).
        """
        from torch.nn.parallel import DistributedDataParallel

        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def on_main(self, fn: Callable[[T], None]) -> Callable[[T], None]:
        """`fn` run by rank 0 only, every rank waiting until it is done (e.g. a checkpoint:
        no rank starts the next epoch before the checkpoint of this one is complete)."""

        def run(arg: T) -> None:
            if self.is_main:
                fn(arg)
            self.barrier()

        return run

    def default_run_dir(self, name: str) -> Path:
        """``runs/<name>-<rendezvous id>``: the same for every rank and every restart.

        Raises:
            ConfigError: torchrun has no rendezvous id (``--rdzv-id``) to name the run after.
        """
        if self.run_id in ("", "none"):
            raise ConfigError([("run_dir", "every process of a torchrun job, and every restart "
                                           "of it, must use the same run directory: pass "
                                           "--run-dir (on a filesystem all nodes share), or "
                                           "start torchrun with --rdzv-id or --standalone")])
        return Path("runs") / f"{name}-{re.sub(r'[^A-Za-z0-9_.-]', '-', self.run_id)}"

    def open_replica(self, path: str | os.PathLike[str]) -> RunDir:
        """The run directory rank 0 made, opened read-only.

        Raises:
            RunDirError: this rank cannot see it (a node without the shared filesystem).
        """
        try:
            return RunDir.open(path, writable=False)
        except RunDirError as exc:
            raise RunDirError(f"rank {self.rank} cannot read the run directory rank 0 wrote "
                              f"({exc}); with several nodes it must be on a filesystem every "
                              f"node shares") from None

    def resumes(self, rundir: RunDir) -> bool:
        """Whether torchrun restarted this job after `rundir` got a checkpoint to resume from."""
        if self.restart_count == 0:
            return False
        found = rundir.read_checkpoint()
        if found is None:
            return False
        if self.is_main:
            epoch = found[1].get("state", {}).get("epoch")
            sys.stderr.write(f"dlpipe: torchrun restart {self.restart_count}: resuming training "
                             f"from the checkpoint of epoch {epoch} in {rundir.path}\n")
        return True

    def seed_per_rank(self, seed: int, generators: Sequence[torch.Generator] = ()) -> SeedPerRank:
        """The callback that gives this rank its own dropout and augmentation streams."""
        return SeedPerRank(seed, self.rank, generators)


class _Shares:
    """What the shares of a split have in common: rank r evaluates the r-th contiguous block
    of ``ceil(N / world_size)`` rows, padded to that length with copies of row 0, so every rank
    runs the same forward passes; `gather` and `average` put the ranks' results together."""

    world_size: int
    block: int
    counts: list[int]

    def _blocks(self, n: int, rank: int) -> tuple[int, int]:
        """Set `block` and `counts` for `n` rows; return this rank's rows [start, stop)."""
        self.block = -(-n // self.world_size)  # rows per rank when evaluating
        bounds = [(min(r * self.block, n), min((r + 1) * self.block, n))
                  for r in range(self.world_size)]
        self.counts = [stop - start for start, stop in bounds]
        return bounds[rank]

    def gather(self, outputs: torch.Tensor) -> torch.Tensor:
        """(block, ...) outputs of this rank's rows → (N, ...) outputs of all rows, in order."""
        parts = [torch.empty_like(outputs) for _ in range(self.world_size)]
        dist.all_gather(parts, outputs.contiguous())
        return torch.cat([part[:count] for part, count in zip(parts, self.counts, strict=True)])

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over every rank (the same on every rank)."""
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size


class ShardedBatches(_Shares, TensorBatches):
    """This rank's share of every batch of a `TensorBatches`, for DistributedDataParallel.

    Training (``shuffle=True``): every rank draws the same permutation from the same
    generator and cuts the same global batches of `batch_size` rows; rank r takes rows
    ``[r*b, (r+1)*b)`` of each, ``b = batch_size / world_size``. The last, short global batch
    is cut to a multiple of `world_size` rows (at most world_size - 1 rows are left out,
    different ones each epoch), or left out when a share would have fewer than min(2, b)
    rows. So every rank takes the same number of steps (DDP hangs otherwise), all shares of a
    step are equal, and the averaged gradient is the one of the whole global batch.

    Evaluation (``shuffle=False``): rank r takes the r-th contiguous block of
    ``ceil(N / world_size)`` rows, padded with copies of row 0, so every rank runs the same
    forward passes of `batch_size` rows; `gather` puts every rank's outputs back in row order.

    `x` and `y` stay the whole tensors (`validate` scores the gathered outputs against `y`).

    Raises:
        ConfigError: a training `batch_size` that `world_size` does not divide.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, rank: int,
                 world_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if shuffle and batch_size % world_size:
            raise ConfigError([("train.batch_size", _batch_message(batch_size, world_size))])
        super().__init__(x, y, batch_size, shuffle=shuffle, generator=generator)
        self.rank, self.world_size = rank, world_size
        start, stop = self._blocks(len(x), rank)
        pad = torch.zeros(self.block - (stop - start), dtype=torch.long)
        self._rows = torch.cat([torch.arange(start, stop), pad]).to(x.device)

    def _stop(self) -> int:
        if not self.shuffle:
            return self.block
        n, world = len(self.x), self.world_size
        full = n // self.batch_size * self.batch_size
        share = (n - full) // world  # rows per rank in the last, short global batch
        return full + share * world if share >= min(2, self.batch_size // world) else full

    def __iter__(self) -> Iterator[Batch]:
        if not self.shuffle:
            for start in range(0, self.block, self.batch_size):
                idx = self._rows[start:start + self.batch_size]
                yield self.x[idx], self.y[idx]
            return
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        stop = self._stop()
        for start in range(0, stop, self.batch_size):
            rows = order[start:min(start + self.batch_size, stop)]  # one global batch
            share = len(rows) // self.world_size
            idx = rows[self.rank * share:(self.rank + 1) * share]
            yield self.x[idx], self.y[idx]

class ShardedStreamBatches(_Shares, StreamBatches):
    """This rank's disjoint share of a streamed split (`StreamBatches`), for DDP.

    Each rank reads only its own rows from disk. Training (``shuffle=True``): every rank draws
    the same random block order from the shared generator; the epoch's rows, in that order,
    are cut into `world_size` equal contiguous segments (the last ``N mod world_size`` rows
    left out, different ones each epoch), and rank r streams segment r through its own
    shuffle buffer, shuffled by a generator seeded from the shared one and r. Every rank
    trains ``batch_size / world_size`` rows a step, the same number of steps (a last short
    step only when its shares have at least min(2, share) rows), so the averaged gradient is
    the one of a global batch of `batch_size` rows. Unlike `ShardedBatches`, those global
    batches are not the single process's: its buffer mixes blocks that here go to different
    ranks. The shared generator advances the same on every rank, and is all a checkpoint
    needs, so a job resumes on any number of processes.

    Evaluation (``shuffle=False``): contiguous blocks padded with row 0, as in
    `ShardedBatches`, read in batches straight from the file.

    Raises:
        ConfigError: a training `batch_size` that `world_size` does not divide.
    """

    def __init__(self, batches: StreamBatches, *, rank: int, world_size: int) -> None:
        if batches.shuffle and batches.batch_size % world_size:
            raise ConfigError([("train.batch_size",
                                _batch_message(batches.batch_size, world_size))])
        super().__init__(batches.split, batches.batch_size, block_rows=batches.block_rows,
                         buffer_rows=batches.blocks_per_buffer * batches.block_rows,
                         shuffle=batches.shuffle, generator=batches.generator,
                         device=batches.target)
        self.rank, self.world_size = rank, world_size
        self.share = batches.batch_size // world_size if batches.shuffle else batches.batch_size
        self._rows = self._blocks(len(self.split), rank)

    def __len__(self) -> int:
        return -(-self._stop() // self.share)

    def _stop(self) -> int:
        if not self.shuffle:
            return self.block
        segment = len(self.split) // self.world_size
        short = segment % self.share  # rows of the last step, on each rank
        return segment - short if 0 < short < min(2, self.share) else segment

    def _host_batches(self) -> Iterator[Batch]:
        if not self.shuffle:
            yield from self._evaluation_batches()
            return
        n, world = len(self.split), self.world_size
        order = torch.randperm(-(-n // self.block_rows), generator=self.generator).tolist()
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        mine = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, self.rank]).generate_state(1, np.uint64)[0] >> 1))
        segment = n // world
        lo, hi = self.rank * segment, (self.rank + 1) * segment  # positions in the epoch's rows
        ranges, position = [], 0
        for b in order:
            start, stop = self._block(b)
            a, z = max(lo, position), min(hi, position + stop - start)
            if a < z:
                ranges.append((start + a - position, start + z - position))
            position += stop - start
        buffer_rows = self.blocks_per_buffer * self.block_rows
        groups: list[list[tuple[int, int]]] = [[]]
        filled = 0
        for start, stop in ranges:
            if filled >= buffer_rows:
                groups.append([])
                filled = 0
            groups[-1].append((start, stop))
            filled += stop - start
        yield from self._cut([g for g in groups if g], mine, self.share, self._stop())

    def _evaluation_batches(self) -> Iterator[Batch]:
        start, stop = self._rows
        first: tuple[np.ndarray, np.ndarray] | None = None
        for offset in range(0, self.block, self.batch_size):
            rows = min(self.batch_size, self.block - offset)
            lo, hi = min(start + offset, stop), min(start + offset + rows, stop)
            x, y = self.split.x.read(lo, hi), self.split.y.read(lo, hi)
            if hi - lo < rows:  # padding: copies of the split's first row
                if first is None:
                    first = self.split.x.read(0, 1), self.split.y.read(0, 1)
                pad = rows - (hi - lo)
                x = np.concatenate([x, np.repeat(first[0], pad, axis=0)])
                y = np.concatenate([y, np.repeat(first[1], pad, axis=0)])
            yield torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(
                np.ascontiguousarray(y))


class SeedPerRank(Callback):
    """At every epoch's start, reseed torch's global generator (dropout) and `generators`
    (augmentation) from (seed, epoch, rank).

    Every rank starts from the same seed, so without this all ranks would draw the same
    dropout masks and augmentations for their different rows, and a resumed job would carry
    rank 0's checkpointed stream to every rank. The shuffling generator is not touched: it must
    stay the same on every rank.
    """

    def __init__(self, seed: int, rank: int, generators: Sequence[torch.Generator] = ()) -> None:
        self.seed = seed
        self.rank = rank
        self.generators = list(generators)

    def on_epoch_start(self, state: TrainState) -> None:
        entropy = [self.seed % 2**63, state.epoch, self.rank]
        seeds = np.random.SeedSequence(entropy).generate_state(1 + len(self.generators),
                                                               np.uint64)
        torch.manual_seed(int(seeds[0]))
        for generator, seed in zip(self.generators, seeds[1:], strict=True):
            generator.manual_seed(int(seed))
