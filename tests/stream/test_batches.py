"""Batches streamed from prepared files: every row once per epoch, shuffled across blocks,
reproducible from the generator, bounded by the buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlpipe.errors import RunDirError
from dlpipe.features.prepared import NpyWriter, PreparedArray
from dlpipe.train.stream import StreamBatches, StreamedSplit


def prepared(tmp_path, n: int, width: int = 3) -> StreamedSplit:
    """x holds each row's number in every column; y the row number too."""
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
    with NpyWriter(tmp_path / "x.npy", (n, width), np.float32) as out:
        for start in range(0, n, 333):  # written in uneven blocks
            out.write(x[start:start + 333])
    with NpyWriter(tmp_path / "y.npy", (n,), np.int64) as out:
        out.write(np.arange(n))
    return StreamedSplit(PreparedArray(tmp_path / "x.npy"), PreparedArray(tmp_path / "y.npy"))


def rows_of(batches: StreamBatches) -> list[np.ndarray]:
    return [x[:, 0].numpy().astype(np.int64) for x, _ in batches]


def test_a_shuffled_epoch_yields_every_row_once_in_full_batches(tmp_path):
    split = prepared(tmp_path, 1000)
    batches = StreamBatches(split, 64, block_rows=100, buffer_rows=300, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    epoch = rows_of(batches)
    assert len(epoch) == len(batches) == 16
    assert [len(b) for b in epoch[:-1]] == [64] * 15 and len(epoch[-1]) == 1000 - 15 * 64
    np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(1000))
    for x, y in batches:  # targets travel with their rows
        np.testing.assert_array_equal(x[:, 0].numpy(), y.numpy())


def test_rows_are_mixed_across_blocks_and_epochs_differ(tmp_path):
    split = prepared(tmp_path, 1000)
    batches = StreamBatches(split, 64, block_rows=100, buffer_rows=300, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    first, second = rows_of(batches), rows_of(batches)
    assert len(set(first[0] // 100)) >= 2  # one batch draws on several blocks
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    assert not np.array_equal(np.concatenate(first), np.arange(1000))


def test_the_same_generator_state_gives_the_same_batches(tmp_path):
    split = prepared(tmp_path, 1000)
    generator = torch.Generator().manual_seed(7)
    batches = StreamBatches(split, 50, block_rows=128, buffer_rows=256, shuffle=True,
                            generator=generator)
    rows_of(batches)
    state = generator.get_state()  # what a checkpoint after epoch 1 holds
    expected = rows_of(batches)
    resumed = StreamBatches(split, 50, block_rows=128, buffer_rows=256, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    resumed.generator.set_state(state)
    for a, b in zip(rows_of(resumed), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_trailing_single_row_is_skipped_when_shuffling(tmp_path):
    split = prepared(tmp_path, 129)
    batches = StreamBatches(split, 64, block_rows=50, buffer_rows=100, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    epoch = rows_of(batches)
    assert [len(b) for b in epoch] == [64, 64] and len(batches) == 2


def test_unshuffled_batches_follow_the_file(tmp_path):
    split = prepared(tmp_path, 300)
    batches = StreamBatches(split, 64, block_rows=70, buffer_rows=140)
    np.testing.assert_array_equal(np.concatenate(rows_of(batches)), np.arange(300))
    np.testing.assert_array_equal(batches.y.numpy(), np.arange(300))


def test_a_truncated_prepared_file_is_refused(tmp_path):
    prepared(tmp_path, 100)
    path = tmp_path / "x.npy"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(RunDirError, match="truncated"):
        PreparedArray(path)


def test_the_writer_refuses_a_short_file(tmp_path):
    with pytest.raises(ValueError, match="3 rows written, 5 declared"), \
            NpyWriter(tmp_path / "x.npy", (5, 2), np.float32) as out:
        out.write(np.zeros((3, 2)))



def shards(split: StreamedSplit, world: int, *, batch_size: int = 64, shuffle: bool = True,
           seed: int = 3) -> list:
    """The `world` ranks' shares of one StreamBatches (blocks of 100 rows, buffers of 300)."""
    from dlpipe.train.distributed import ShardedStreamBatches

    return [ShardedStreamBatches(
        StreamBatches(split, batch_size, block_rows=100, buffer_rows=300, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed)),
        rank=r, world_size=world) for r in range(world)]


@pytest.mark.parametrize(("n", "world", "batch_size"), [
    (1000, 2, 64), (1001, 2, 64), (997, 3, 48), (1000, 4, 64), (130, 2, 64), (1000, 2, 2)])
def test_ranks_stream_disjoint_equal_shares_in_the_same_number_of_steps(tmp_path, n, world,
                                                                        batch_size):
    split = prepared(tmp_path, n)
    ranks = shards(split, world, batch_size=batch_size)
    for epoch in range(2):
        seen = [rows_of(r) for r in ranks]
        steps = {len(s) for s in seen}
        assert steps == {len(ranks[0])}  # DDP hangs on unequal step counts
        for step in zip(*seen, strict=True):
            assert len({len(part) for part in step}) == 1  # equal shares of each global batch
            assert len(step[0]) <= batch_size // world
        rows = np.concatenate([b for s in seen for b in s])
        assert len(np.unique(rows)) == len(rows), "a row went to two ranks"
        segment = n // world
        short = segment % (batch_size // world)
        kept = segment - short if short == 1 and batch_size // world >= 2 else segment
        assert len(rows) == kept * world  # at most world-1 (+ a one-row step) rows left out
        # Every rank drew the same from the shared generator: they stay in step.
        states = [r.generator.get_state() for r in ranks]
        assert all(torch.equal(states[0], st) for st in states[1:]), epoch


def test_a_rank_reads_a_segment_of_the_shuffled_blocks_and_mixes_it(tmp_path):
    split = prepared(tmp_path, 1000)
    first, second = (rows_of(r) for r in shards(split, 2))
    assert len(set(np.concatenate(first) // 100)) >= 5  # blocks from across the file
    assert len(set(first[0] // 100)) >= 2  # a batch mixes the blocks of its buffer
    assert not set(np.concatenate(first)) & set(np.concatenate(second))


def test_a_rank_resumed_from_the_shared_generator_reads_the_same_batches(tmp_path):
    split = prepared(tmp_path, 1000)
    rank = shards(split, 2)[1]
    rows_of(rank)
    state = rank.generator.get_state()  # a checkpoint after epoch 1
    expected = rows_of(rank)
    resumed = shards(split, 2, seed=99)[1]
    resumed.generator.set_state(state)
    for a, b in zip(rows_of(resumed), expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("n", "world"), [(1000, 2), (999, 4), (3, 4)])
def test_streamed_validation_blocks_cover_every_row_once_in_the_same_passes(tmp_path, n, world):
    split = prepared(tmp_path, n)
    ranks = shards(split, world, batch_size=128, shuffle=False)
    assert len({len(r) for r in ranks}) == 1
    padded = [np.concatenate(rows_of(r)) for r in ranks]
    assert {len(p) for p in padded} == {ranks[0].block}  # equal sizes, as all_gather needs
    kept = np.concatenate([p[:c] for p, c in zip(padded, ranks[0].counts, strict=True)])
    np.testing.assert_array_equal(kept, np.arange(n))
