"""Distributed training under torchrun: sharding, rank-0-only writes, elastic restarts.

The slow tests launch real `torchrun` jobs of 2 CPU processes (gloo) and compare them with
one process; the others test the pieces in this process, without a process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import dlpipe
from dlpipe.config import load_config
from dlpipe.errors import ConfigError
from dlpipe.runs import HISTORY, METRICS, RunDir
from dlpipe.train.distributed import (
    Group,
    SeedPerRank,
    ShardedBatches,
    config_problems,
    is_main_process,
    join,
)
from dlpipe.train.loop import TensorBatches
from dlpipe.train.state import TrainState
from helpers import minimal_config, torchrun

HERE = Path(__file__).resolve().parent
EPOCHS = 6

# 600 rows split 60/20/20: 360 training rows are 11 global batches of 32 and one of 8, which
# two ranks split evenly (4 + 4), so every distributed step is a single-process step on the
# same rows; the 120 validation rows are two blocks of 60.
CONFIG = minimal_config(
    data={"source": {"builtin": "make_classification",
                     "params": {"n_samples": 600, "n_features": 10, "random_state": 1}},
          "split": {"val": 0.2, "test": 0.2}},
    model={"name": "mlp", "hidden": [32, 16]},
    train={"epochs": EPOCHS, "batch_size": 32, "progress": "never",
           "optimizer": {"name": "adamw", "lr": 0.01},
           "early_stopping": {"monitor": "val_loss", "patience": 50}},
)


# -- the pieces, in this process ------------------------------------------------------------


def _rows(batches: TensorBatches) -> list[list[int]]:
    """The row numbers of each batch (the data are the row numbers themselves)."""
    return [x.tolist() for x, _ in batches]


# Global batches of 32: 11 full ones, then a short one of n - 352 rows.
@pytest.mark.parametrize(("n", "world", "steps", "last"), [
    (360, 2, 12, 8),     # the short batch of 8 splits 4 + 4
    (363, 2, 12, 10),    # 11 rows: cut to 10, so the shares stay equal
    (364, 4, 12, 12),    # 12 rows: 3 per rank
    (354, 4, 11, 32),    # 2 rows over 4 ranks: left out (shares of 0 rows)
    (356, 4, 11, 32),    # 4 rows over 4 ranks: left out (shares of 1 row; batch norm needs 2)
])
def test_every_rank_takes_an_equal_disjoint_share_of_the_same_global_batches(n, world, steps,
                                                                              last):
    x = torch.arange(n)
    single = _rows(TensorBatches(x, x, 32, shuffle=True,
                                 generator=torch.Generator().manual_seed(7)))
    shares = [_rows(ShardedBatches(x, x, 32, rank=r, world_size=world, shuffle=True,
                                   generator=torch.Generator().manual_seed(7)))
              for r in range(world)]
    assert [len(s) for s in shares] == [steps] * world  # DDP hangs on unequal step counts
    for step in range(steps):
        parts = [s[step] for s in shares]
        assert len({len(p) for p in parts}) == 1, "the shares of a step differ in size"
        joined = [row for part in parts for row in part]
        # The ranks' shares, in rank order, are the single process's batch (its first rows
        # for the short last batch).
        assert joined == single[step][:len(joined)]
    assert sum(len(s[-1]) for s in shares) == last  # rows in the last step, all ranks


def test_a_batch_of_a_single_row_per_rank_keeps_every_full_step():
    x = torch.arange(10)
    shares = [_rows(ShardedBatches(x, x, 2, rank=r, world_size=2, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
              for r in range(2)]
    assert [len(s) for s in shares] == [5, 5]
    assert sorted(row for s in shares for batch in s for row in batch) == list(range(10))


@pytest.mark.parametrize(("n", "world"), [(121, 2), (5, 4), (1, 2), (64, 4)])
def test_validation_blocks_cover_every_row_once_and_run_the_same_passes(n, world):
    x = torch.arange(n)
    blocks = [ShardedBatches(x, x, 16, rank=r, world_size=world) for r in range(world)]
    assert len({len(b) for b in blocks}) == 1  # the same forward passes on every rank
    padded = [torch.cat([xb for xb, _ in b]) for b in blocks]
    assert {len(p) for p in padded} == {blocks[0].block}  # equal sizes, as all_gather needs
    # What `gather` keeps of each rank's outputs: its first `counts[r]` rows, in rank order.
    kept = torch.cat([p[:count] for p, count in zip(padded, blocks[0].counts, strict=True)])
    assert kept.tolist() == list(range(n))


def test_a_global_batch_the_ranks_cannot_split_evenly_is_refused():
    x = torch.zeros(8, 2)
    with pytest.raises(ConfigError, match=r"train\.batch_size: 30 is the global batch, split "
                                          r"evenly over the 4 processes .* e\.g\. 32"):
        ShardedBatches(x, x, 30, rank=0, world_size=4, shuffle=True)


def test_config_problems_name_the_batch_size_and_devices_a_job_cannot_share():
    cfg = load_config(minimal_config(train={"batch_size": 30, "device": "cuda:1"}))
    problems = dict(config_problems(cfg, 4, 4))
    assert "use a multiple of 4, e.g. 32" in problems["train.batch_size"]
    assert problems["train.device"].startswith("'cuda:1' cannot be shared by the 4 processes")
    assert config_problems(load_config(minimal_config(train={"batch_size": 32})), 4, 4) == []
    mps = load_config(minimal_config(train={"batch_size": 32, "device": "mps"}))
    assert "use cuda" in dict(config_problems(mps, 2, 2))["train.device"]


def test_sync_batchnorm_on_cpu_processes_is_refused_by_name():
    cfg = load_config(minimal_config(train={"batch_size": 32, "device": "cpu",
                                            "sync_batchnorm": True}))
    problems = dict(config_problems(cfg, 2, 2))
    assert "GPUs only" in problems["train.sync_batchnorm"]


def test_one_process_joins_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert join(load_config(CONFIG)) is None
    assert not torch.distributed.is_initialized()
    assert is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_each_rank_draws_its_own_dropout_and_augmentation_stream_each_epoch():
    def draws(rank: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator()
        SeedPerRank(0, rank, [generator]).on_epoch_start(TrainState(epoch=epoch))
        return torch.rand(4), torch.rand(4, generator=generator)

    assert not torch.equal(draws(0, 3)[0], draws(1, 3)[0])
    assert not torch.equal(draws(0, 3)[1], draws(1, 3)[1])
    assert not torch.equal(draws(0, 3)[0], draws(0, 4)[0])
    # A resumed run draws what the uninterrupted one drew at the same epoch.
    assert all(torch.equal(a, b) for a, b in zip(draws(1, 3), draws(1, 3), strict=True))


def test_a_read_only_run_directory_writes_nothing_and_keeps_what_it_was_given(tmp_path):
    RunDir.create(tmp_path)
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / ".metrics.json.tmp").write_text("rank 0 is writing this")
    replica = RunDir.open(tmp_path, writable=False)
    replica.write_json(METRICS, {"test": {"accuracy": 1.0}})
    replica.write_jsonl(HISTORY, [{"epoch": 1}])
    replica.write_checkpoint(1, {"tensors": {"w": torch.ones(2)}}, {"epoch": 1})
    replica.clear_checkpoints()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metrics.json.tmp", "config.yaml"]
    assert replica.read_json(METRICS) == {"test": {"accuracy": 1.0}}  # from its memory


def test_without_a_rendezvous_id_the_run_directory_must_be_named():
    group = Group(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"run_dir: every process of a torchrun job, and every "
                                          r"restart of it, must use the same run directory"):
        group.default_run_dir("tiny")
    named = Group(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), run_id="job/42")
    assert named.default_run_dir("tiny") == Path("runs/tiny-job-42")


@pytest.mark.parametrize("accumulation", [1, 3])
def test_gradients_are_all_reduced_once_per_optimizer_step(tmp_path, accumulation):
    """With gradient accumulation, the micro-batches before a step run under DDP's no_sync:
    one all-reduce per step (counted by a communication hook), and the same weights."""
    import torch.distributed as dist

    from dlpipe.train.loop import fit

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        group = Group(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))

        def trained(wrapped: bool) -> tuple[torch.nn.Module, int]:
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            net, reduced = model, []
            if wrapped:
                net = group.wrap(model)

                def count(state, bucket):  # the default all-reduce, counted
                    reduced.append(1)
                    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(
                        lambda fut: fut.value()[0])

                net.register_comm_hook(None, count)
            batches = TensorBatches(x, x[:, 0], 4, shuffle=True,
                                    generator=torch.Generator().manual_seed(1))
            fit(net, batches, None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                loss_fn=lambda out, y: torch.nn.functional.mse_loss(out.squeeze(1), y),
                epochs=2, accumulation=accumulation)
            return model, len(reduced)

        ddp, reductions = trained(True)
        plain, _ = trained(False)
        assert reductions == 2 * -(-10 // accumulation)  # 10 batches an epoch, 1 bucket
        torch.testing.assert_close(ddp.weight, plain.weight)
    finally:
        dist.destroy_process_group()


# -- real torchrun jobs ---------------------------------------------------------------------

def loss_killing_rank_1(run_dir: str, marker: str, after_epoch: int = 2):
    """The default binary loss, which kills (SIGKILL) rank 1 at its first training step after
    the checkpoint of `after_epoch` exists, once: only while `marker` does not exist."""
    from dlpipe.train.losses import LOSSES

    inner = LOSSES.get("binary_cross_entropy")()
    pointer = Path(run_dir) / "checkpoints" / "last.json"

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if (os.environ.get("RANK") == "1" and torch.is_grad_enabled()
                and not Path(marker).exists() and pointer.exists()
                and json.loads(pointer.read_text())["epoch"] >= after_epoch):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(outputs, targets)

    return loss


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, Any]:
    """One torchrun job of 2 processes whose rank 1 is killed once, at the start of epoch 3,
    and a single-process run of the same config, at the same time (torchrun's processes
    wait on each other much of the time). One job, not a plain one and a killed one, keeps
    these tests near 30 s on 2 cores: each process spends ~5 s importing torch and dlpipe."""
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir, marker = tmp / "ddp", tmp / "killed-once"
    config = {**CONFIG, "train": {**CONFIG["train"], "loss": {
        "name": "test_distributed:loss_killing_rank_1", "run_dir": str(run_dir),
        "marker": str(marker)}}}
    job = torchrun(tmp, config, run_dir, "--max-restarts", "1", pythonpath=[HERE])
    single = dlpipe.run(CONFIG, run_dir=tmp / "single")
    return {"ddp": job(), "single": single, "marker": marker}


@pytest.mark.slow
def test_a_rank_killed_mid_training_restarts_from_the_last_checkpoint(jobs):
    ddp = jobs["ddp"]
    assert jobs["marker"].exists(), "rank 1 was never killed"
    assert "exitcode: -9" in ddp.stderr  # torchrun saw the kill, restarted the job, ...
    assert "resuming training from the checkpoint of epoch 2" in ddp.stderr  # ... which resumed
    history = RunDir(ddp.run_dir).read_jsonl(HISTORY)
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    training = json.loads((ddp.run_dir / "training.json").read_text())
    assert training["processes"] == 2 and training["restarts"] == 1
    assert set(json.loads((ddp.run_dir / "run.json").read_text())["stages"]) == {
        "data", "features", "train", "evaluate"}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(jobs):
    ddp, single = jobs["ddp"], jobs["single"]
    history = RunDir(ddp.run_dir).read_jsonl(HISTORY)
    # Every step trains on the same rows as the single process's step (see CONFIG); only the
    # order of float32 sums differs (two half-batch means averaged by DDP vs one mean), a
    # relative 1e-7 per step that Adam carries through the steps: 1e-4 leaves ample margin
    # and is far below what one changed row, a wrong shard or a wrongly restored state (the
    # shuffling generator, Adam's moments) would do (> 1e-2). The same holds across the
    # restart: the checkpoint restores every state the uninterrupted run would have.
    for ours, theirs in zip(history, single.history, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    metrics = json.loads((ddp.run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for name, value in single.metrics[split].items():
            if isinstance(value, float):
                assert metrics[split][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # Rank 0 alone prints the metrics and the run directory.
    assert ddp.stdout.count("run directory:") == 1 and str(ddp.run_dir) in ddp.stdout


@pytest.mark.slow
def test_only_rank_0_writes_the_run_directory_and_it_holds_one_run(jobs):
    ddp = jobs["ddp"]
    assert ddp.writes and {rank for rank, _ in ddp.writes} == {"0"}
    # history.jsonl: once an epoch as training goes (epochs 1-2 before the kill, 3-6 after),
    # and once more by the train stage.
    history_writes = [p for _, p in ddp.writes if Path(p).name == ".history.jsonl.tmp"]
    assert len(history_writes) == EPOCHS + 1
    assert _files(ddp.run_dir) == _files(jobs["single"].path)  # the same files, no extra
    assert not list(ddp.run_dir.rglob(".*.tmp"))


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_in_one(jobs, tmp_path):
    from dlpipe import train
    from dlpipe.pipeline import load_run_config

    copy = tmp_path / "copy"
    shutil.copytree(jobs["ddp"].run_dir, copy)
    more = [f"train.epochs={EPOCHS + 2}"]
    rundir = RunDir.open(copy)
    # train.loss=null: the default loss, which the job's killing wrapper computed too.
    resumed = train.run(load_run_config(rundir, [*more, "train.loss=null"]), rundir, resume=True)
    straight = dlpipe.run(CONFIG, run_dir=tmp_path / "straight", overrides=more)
    assert [row["epoch"] for row in resumed.state.history] == list(range(1, EPOCHS + 3))
    # The same tolerance as above: the checkpoint continues the same global batches.
    for ours, theirs in zip(resumed.state.history, straight.history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4, abs=1e-6)


# -- CUDA / NCCL (skipped without a GPU) ------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_one_process_nccl_group_trains_shares_and_gathers(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        group = Group(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
        model = torch.nn.Linear(3, 1).cuda()
        ddp = group.wrap(model)
        x = torch.randn(10, 3, device="cuda")
        batches = group.shard(TensorBatches(x, x[:, 0], 4, shuffle=True,
                                            generator=torch.Generator().manual_seed(0)))
        for xb, yb in batches:
            torch.nn.functional.mse_loss(ddp(xb).squeeze(1), yb).backward()
        assert model.weight.grad is not None
        val = group.shard(TensorBatches(x, x[:, 0], 4))
        with torch.inference_mode():
            outputs = val.gather(torch.cat([ddp(xb) for xb, _ in val]))
        torch.testing.assert_close(outputs, model(x).detach())  # same weights, same rows
        assert float(batches.average(torch.tensor(3.0, device="cuda"))) == 3.0
        group.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_sync_batchnorm_trains_and_keeps_the_parameters_and_checkpoint_keys(tmp_path):
    import torch.distributed as dist

    from dlpipe.models.cnn import cnn

    model = cnn((1, 8, 8), 3, blocks=[{"channels": 4, "kernel": 3, "batch_norm": True}],
                hidden=[]).cuda()
    keys, params = list(model.state_dict()), list(model.parameters())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        group = Group(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
        ddp = group.wrap(model, sync_batchnorm=True)
        ddp(torch.randn(6, 64, device="cuda")).sum().backward()
    finally:
        dist.destroy_process_group()
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    assert list(model.state_dict()) == keys  # checkpoints and weights files unchanged
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # the optimizer's
    assert all(p.grad is not None for p in params)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_on_two_gpus_an_nccl_job_matches_one_gpu_with_the_same_global_batch(tmp_path):
    config = {**CONFIG, "train": {**CONFIG["train"], "device": "cuda"}}
    job = torchrun(tmp_path, config, tmp_path / "ddp")()
    single = dlpipe.run(config, run_dir=tmp_path / "single")
    training = json.loads((job.run_dir / "training.json").read_text())
    assert training["processes"] == 2
    # The same global batches as on CPU (see CONFIG); cuBLAS may sum in another order than
    # the CPU does, hence 1e-3, still far below what a wrong shard would do (> 1e-2).
    history = RunDir(job.run_dir).read_jsonl(HISTORY)
    for ours, theirs in zip(history, single.history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3, abs=1e-5)
    assert _files(job.run_dir) == _files(single.path)
