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
