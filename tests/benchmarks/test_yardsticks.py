"""The hand-written yardsticks of benchmarks/bench_media.py and bench_gpu.py are fair ones:
the same networks as dlpipe's builders (same function once given the same weights), and
augmentations that do what their names say."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_gpu import RESNET_BLOCKS, hand_mlp, small_resnet, steady
from bench_media import (
    BiLSTM,
    Timed,
    hand_crop,
    hand_fit,
    hand_hflip,
    hand_rotate,
    synthetic_images,
    tutorial_cnn,
)
from dlpipe.models.cnn import cnn
from dlpipe.models.mlp import mlp
from dlpipe.models.rnn import rnn


def _copy_in_order(source: nn.Module, target: nn.Module) -> None:
    """Give `target` the parameters of `source`, matched by position and shape."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for src, dst in pairs:
            assert src.shape == dst.shape
            dst.copy_(src)


def _random_ids(batch: int, length: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    ids[torch.arange(length) >= lengths[:, None]] = 0  # right padding
    return ids


@pytest.mark.parametrize(("ours", "hand", "x"), [
    (lambda: cnn((1, 28, 28), 10), lambda: tutorial_cnn((1, 28, 28), 10), torch.randn(4, 784)),
    (lambda: cnn((1, 16, 16), 10), lambda: tutorial_cnn((1, 16, 16), 10), torch.randn(4, 256)),
    (lambda: cnn((3, 32, 32), 10, blocks=RESNET_BLOCKS, residual=True, pool="avg", hidden=[]),
     lambda: small_resnet((3, 32, 32), 10), torch.randn(4, 3072)),
    (lambda: mlp(20, 1, hidden=[128, 64], dropout=0.2),
     lambda: hand_mlp(20, [128, 64], 1, 0.2), torch.randn(4, 20)),
    (lambda: mlp(512, 10, hidden=[2048, 2048]), lambda: hand_mlp(512, [2048, 2048], 10, 0.0),
     torch.randn(4, 512)),
])
def test_hand_network_computes_what_dlpipes_builder_does(ours, hand, x):
    torch.manual_seed(0)
    theirs, mine = ours().eval(), hand().eval()
    _copy_in_order(theirs, mine)
    torch.testing.assert_close(mine(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_hand_bilstm_computes_the_tutorial_rnn():
    torch.manual_seed(0)
    theirs, mine = rnn(50, 1, bidirectional=True).eval(), BiLSTM(50).eval()
    _copy_in_order(theirs, mine)
    ids = _random_ids(6, 9, 50)
    torch.testing.assert_close(mine(ids), theirs(ids.float()), rtol=1e-4, atol=1e-5)


def test_hand_crop_shifts_each_image_by_at_most_the_padding_with_zero_fill():
    images = torch.arange(1, 1 + 64 * 2 * 6 * 6, dtype=torch.float32).view(64, 2, 6, 6)
    out = hand_crop(images, torch.Generator().manual_seed(0), padding=2)
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for b in range(len(images)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[b], padded[b, :, dy:dy + 6, dx:dx + 6])]
        assert len(found) == 1, f"image {b} is no window of its padded self"
        shifts.add(found[0])
    assert len(shifts) > 10  # one offset per image, not one per batch


def test_hand_hflip_mirrors_with_probability_p():
    images = torch.randn(8, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(hand_hflip(images, g, p=1.0), images.flip(-1))
    assert torch.equal(hand_hflip(images, g, p=0.0), images)


def test_hand_rotate_keeps_an_unrotated_image_and_turns_a_rotated_one():
    images = torch.randn(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(hand_rotate(images, g, 0.0), images, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hand_rotate(images, g, 30.0), images, atol=1e-3)


def test_synthetic_images_are_seeded_balanced_and_learnable():
    x, y = synthetic_images(2000, seed=1)
    again, _ = synthetic_images(2000, seed=1)
    assert x.dtype == np.uint8 and x.shape == (2000, 28, 28)
    assert np.array_equal(x, again)
    assert np.bincount(y, minlength=10).min() > 150
    # Even the nearest class centroid of the row and column brightness profiles mostly
    # finds the class (chance: 0.1); a CNN does far better.
    profiles = np.concatenate([x.mean(axis=1), x.mean(axis=2)], axis=1) / 255  # (N, 56)
    centroids = np.stack([profiles[:1500][y[:1500] == k].mean(0) for k in range(10)])
    nearest = ((profiles[1500:, None] - centroids) ** 2).sum(-1).argmin(1)
    assert (nearest == y[1500:]).mean() > 0.4
    rgb, _ = synthetic_images(10, seed=1, size=32, channels=3)
    assert rgb.shape == (10, 32, 32, 3)


def test_hand_fit_keeps_the_best_epoch_and_stops_on_patience():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).float()
    xv = torch.randn(64, 4, generator=g)
    yv = 1 - (xv[:, 0] > 0).float()  # learning train makes validation worse: epoch 1 is best
    timed = hand_fit(lambda: nn.Linear(4, 1), (x, y), (xv, yv), epochs=20, batch_size=32,
                     lr=0.05, seed=0, monitor="val_loss", patience=2)
    assert timed.epochs == 3 and len(timed.marks) == 3
    assert timed.marks == sorted(timed.marks)
    assert steady(timed) == pytest.approx((timed.marks[2] - timed.marks[0]) / 2)


def test_steady_state_timing_needs_two_epochs():
    with pytest.raises(SystemExit, match="at least 2 epochs"):
        steady(Timed(None, 1.0, 1, [0.5]))
