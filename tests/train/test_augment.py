"""Batch image augmentation: each op's effect checked numerically, targets mixed exactly,
seeded and resumable streams, errors that name the config entry."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlpipe.errors import ConfigError
from dlpipe.train.augment import (
    AUGMENTATIONS,
    BatchAugment,
    augment_problems,
    build_augment,
    sample_beta,
    warp,
)


def augmenter(*specs, shape=(1, 8, 8), start=0, task="multiclass", n_classes=3, seed=0):
    return build_augment(list(specs), start=start, shape=shape, task=task,
                         n_classes=n_classes, seed=seed)


def images(b=16, c=1, h=8, w=8, seed=0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def apply(spec, x, y=None, **kwargs):
    """Run one transform over (B, C, H, W) images through BatchAugment's flat interface."""
    b, c, h, w = x.shape
    y = torch.zeros(b, dtype=torch.long) if y is None else y
    out, targets = augmenter(spec, shape=(c, h, w), **kwargs)(x.reshape(b, -1), y)
    return out.reshape(b, c, h, w), targets


# -- geometry --------------------------------------------------------------------------------


def test_hflip_and_vflip_with_p_1_mirror_every_image():
    x = images()
    torch.testing.assert_close(apply(("hflip", {"p": 1.0}), x)[0], x.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(apply(("vflip", {"p": 1.0}), x)[0], x.flip(-2), rtol=0, atol=0)


def test_hflip_with_p_half_mirrors_some_images_and_keeps_the_others():
    x = images(b=64)
    out = apply(("hflip", {"p": 0.5}), x)[0]
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 16 < int(flipped.sum()) < 48  # ~32 of 64: both outcomes happen


@pytest.mark.parametrize("spec", [
    ("hflip", {"p": 0.0}), ("vflip", {"p": 0.0}), ("rotation", {"degrees": 0}),
    ("affine", {"degrees": 0, "translate": [0, 0], "scale": [1, 1]}),
    ("random_crop", {"padding": 0}),
    ("random_resized_crop", {"scale": [1, 1], "ratio": [1, 1]}),
    ("color_jitter", {"brightness": 0, "contrast": 0, "saturation": 0}),
    ("mixup", {"p": 0.0}), ("cutmix", {"p": 0.0}),
], ids=lambda s: s[0])
def test_a_transform_set_to_do_nothing_is_the_identity(spec):
    x = images(c=3)
    # grid_sample recomputes each pixel centre from [-1, 1] coordinates: exact up to rounding.
    torch.testing.assert_close(apply(spec, x)[0], x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_is_a_window_of_the_padded_image_at_a_random_offset(mode):
    x, pad = images(b=32, c=2, h=6, w=7), 2
    out = apply(("random_crop", {"padding": pad, "padding_mode": mode}), x)[0]
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect")
    offsets = []
    for b in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[b], padded[b, :, dy:dy + 6, dx:dx + 7])]
        assert hits, f"image {b} is no window of its padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # offsets are drawn per image


def test_random_resized_crop_stays_inside_the_image_and_changes_it():
    ones = torch.ones(32, 1, 8, 10)
    # The window never leaves the image, so no zero padding is ever sampled.
    torch.testing.assert_close(apply(("random_resized_crop", {}), ones)[0], ones,
                               rtol=0, atol=1e-5)
    x = images(b=32, h=8, w=10)
    out = apply(("random_resized_crop", {"scale": [0.1, 0.5]}), x)[0]
    assert out.shape == x.shape
    assert not torch.isclose(out, x, atol=1e-3).flatten(1).all(1).any()  # every one zoomed


def test_warp_by_90_degrees_is_rot90():
    x = images(c=2, h=6, w=6)
    turned = warp(x, torch.full((16,), 90.0), torch.ones(16), torch.zeros(16, 2))
    torch.testing.assert_close(turned, torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-5)


def test_warp_keeps_proportions_on_a_non_square_image():
    x = torch.zeros(1, 1, 6, 10)
    x[..., 2:4, 3:7] = 1.0  # a 2 x 4 bar around the centre (2.5, 4.5)
    want = torch.zeros_like(x)
    want[..., 1:5, 4:6] = 1.0  # turned a quarter: 4 x 2
    got = warp(x, torch.tensor([90.0]), torch.ones(1), torch.zeros(1, 2))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_warp_shifts_by_whole_pixels_and_zooms_about_the_centre():
    x = images(b=1, h=5, w=6)
    shifted = warp(x, torch.zeros(1), torch.ones(1), torch.tensor([[2.0, -1.0]]))  # right, up
    want = torch.zeros_like(x)
    want[..., :-1, 2:] = x[..., 1:, :-2]
    torch.testing.assert_close(shifted, want, rtol=0, atol=1e-5)
    ones = torch.ones(1, 1, 8, 8)
    shrunk = warp(ones, torch.zeros(1), torch.full((1,), 0.5), torch.zeros(1, 2))
    assert shrunk[0, 0, 3:5, 3:5].eq(1).all() and shrunk[0, 0, 0, 0] == 0  # centre kept


def test_rotation_turns_and_affine_shifts_each_image_by_its_own_draw():
    x = torch.zeros(64, 1, 9, 9)
    x[..., 4, :] = 1.0  # a horizontal line through the centre
    turned = apply(("rotation", {"degrees": 30}), x)[0]
    assert turned[..., 4, 4].gt(0.99).all()  # the centre stays
    assert turned[..., 0, 4].eq(0).all()  # within 30 degrees the line cannot reach the top
    assert len({tuple(t.flatten().round(decimals=3).tolist()) for t in turned}) > 32
    shifted = apply(("affine", {"translate": [0.3, 0.0], "scale": [1, 1]}), x)[0]
    assert shifted[..., [0, 1, 2, 3, 5, 6, 7, 8], :].abs().max() < 1e-5  # along the line only
    kept = shifted[:, 0, 4, :].sum(-1)  # (B,) what is left of the line's 9 pixels
    assert kept.min() >= 9 - 0.3 * 9 - 1e-4 and kept.max() <= 9 + 1e-4
    assert (kept < 8.5).any()


# -- colour and occlusion ------------------------------------------------------------------------


def test_brightness_scales_each_image_by_one_factor_within_the_range():
    x = images(b=64).abs() + 0.1
    out = apply(("color_jitter", {"brightness": 0.3, "contrast": 0}), x)[0]
    ratio = (out / x).flatten(1)  # (B, pixels)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=1e-5)
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6
    assert ratio[:, 0].std() > 0.05  # a factor per image


def test_contrast_keeps_the_mean_and_scales_the_deviations():
    x = images(b=32)
    out = apply(("color_jitter", {"brightness": 0, "contrast": 0.5}), x)[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3), keepdim=True), mean, rtol=0, atol=1e-5)
    factor = ((out - mean) / (x - mean)).flatten(1)
    torch.testing.assert_close(factor, factor[:, :1].expand_as(factor), rtol=1e-3, atol=1e-3)
    assert factor.min() >= 0.5 - 1e-3 and factor.max() <= 1.5 + 1e-3


def test_saturation_keeps_each_pixels_luminance():
    x = images(b=8, c=3)
    out = apply(("color_jitter", {"brightness": 0, "contrast": 0, "saturation": 0.8}), x)[0]
    luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    torch.testing.assert_close((out * luma).sum(1), (x * luma).sum(1), rtol=0, atol=1e-5)
    assert not torch.allclose(out, x)


def test_cutout_zeros_one_clipped_square_per_image_and_nothing_else():
    x = torch.ones(64, 2, 10, 10)
    out = apply(("cutout", {"size": 4}), x)[0]
    zero = out[:, 0] == 0  # (B, H, W); both channels alike
    assert torch.equal(zero, out[:, 1] == 0)
    assert (out[~zero[:, None].expand_as(out)] == 1).all()
    for mask in zero:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(mask.sum()) == len(rows) * len(cols)  # one solid rectangle
    assert (zero.flatten(1).sum(1) == 16).float().mean() > 0.3  # most squares lie inside


# -- mixing examples and targets -------------------------------------------------------------


def labelled_batch(b=32, h=6, w=6):
    """Image i is filled with the value i and has class i, so mixes can be read back."""
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, h, w)
    return x.contiguous(), torch.arange(b)


def test_mixup_blends_images_and_targets_with_the_same_weight():
    x, y = labelled_batch()
    out, targets = apply(("mixup", {"alpha": 0.4}), x, y, n_classes=32)
    assert targets.dtype == torch.float32 and targets.shape == (32, 32)
    torch.testing.assert_close(targets.sum(1), torch.ones(32), rtol=0, atol=1e-6)
    mixed = 0
    for i in range(32):
        lam = float(targets[i, i])
        others = [j for j in range(32) if j != i and targets[i, j] > 0]
        partner = others[0] if others else i
        mixed += bool(others)
        # x = lam x_i + (1 - lam) x_j, for every pixel
        assert torch.allclose(out[i], torch.full_like(out[i], lam * i + (1 - lam) * partner),
                              atol=1e-5)
    assert mixed > 24  # only self-pairs of the permutation stay unmixed


def test_cutmix_pastes_one_box_whose_area_is_the_targets_weight():
    x, y = labelled_batch(h=8, w=10)
    out, targets = apply(("cutmix", {"alpha": 1.0}), x, y, n_classes=32)
    torch.testing.assert_close(targets.sum(1), torch.ones(32), rtol=0, atol=1e-6)
    for i in range(32):
        own = out[i, 0] == i
        assert torch.allclose(own.float().mean(), targets[i, i])  # area share == lam
        pasted = ~own
        if pasted.any():
            j = int(out[i, 0][pasted][0])
            assert (out[i, 0][pasted] == j).all() and targets[i, j] == 1 - targets[i, i]
            rows, cols = pasted.any(1).sum(), pasted.any(0).sum()
            assert int(pasted.sum()) == int(rows * cols)  # one rectangle


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_mixup_mixes_the_float_targets_of_binary_and_regression(task):
    b = 32
    x = torch.eye(b)[:, None, None, :]  # (B, 1, 1, B): image i is the indicator of pixel i
    y = (torch.arange(b) % 2).float() if task == "binary" else torch.randn(b)
    out, targets = apply(("mixup", {"alpha": 1.0}), x, y, task=task)
    assert targets.shape == (b,) and targets.dtype == torch.float32
    for i in range(b):
        row = out[i, 0, 0]  # lam at pixel i, 1 - lam at the partner's pixel
        lam = float(row[i])
        others = [j for j in range(b) if j != i and row[j] > 0]
        expected = lam * y[i] + (1 - lam) * (y[others[0]] if others else 0)
        torch.testing.assert_close(targets[i], expected, rtol=0, atol=1e-5)


def test_with_a_mixing_transform_targets_are_always_soft_even_when_nothing_mixes():
    x, y = labelled_batch(b=4)
    out, targets = apply(("mixup", {"p": 0.0}), x, y, n_classes=5)
    torch.testing.assert_close(targets, F.one_hot(y, 5).float(), rtol=0, atol=0)
    _, hard = apply(("hflip", {}), x, y, n_classes=5)
    assert hard is y  # without mixing, targets pass through untouched


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 3.0])
def test_sample_beta_draws_from_beta_alpha_alpha(alpha):
    stats = pytest.importorskip("scipy.stats")
    draws = sample_beta(alpha, 4000, torch.Generator().manual_seed(0)).numpy()
    assert draws.min() >= 0 and draws.max() <= 1
    # Kolmogorov-Smirnov against scipy's Beta; a fixed seed, so the verdict cannot flicker.
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_sample_beta_with_a_tiny_alpha_gives_weights_near_0_and_1_not_nan():
    draws = sample_beta(0.01, 1000, torch.Generator().manual_seed(0))
    assert torch.isfinite(draws).all()
    assert ((draws < 0.01) | (draws > 0.99)).float().mean() > 0.9


# -- the batch augmenter ---------------------------------------------------------------------


def pipeline_specs():
    return [("random_crop", {"padding": 2}), ("hflip", {}), ("rotation", {"degrees": 10}),
            ("cutout", {"size": 3}), ("mixup", {"alpha": 0.2})]


def mixed_input(b=16, seed=0):
    """2 tabular columns, a 1x8x8 image, 1 more column: the image block is columns 2..66."""
    return torch.randn(b, 67, generator=torch.Generator().manual_seed(seed))


def test_only_the_image_block_changes_and_the_callers_batch_is_left_alone():
    x = mixed_input()
    before = x.clone()
    out, _ = augmenter(*pipeline_specs(), start=2)(x, torch.zeros(16, dtype=torch.long))
    assert torch.equal(x, before)
    assert torch.equal(out[:, :2], x[:, :2]) and torch.equal(out[:, 66:], x[:, 66:])
    assert not torch.allclose(out[:, 2:66], x[:, 2:66])


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    x, y = mixed_input(), torch.arange(16) % 3
    runs = [augmenter(*pipeline_specs(), start=2, seed=s) for s in (7, 7, 8)]
    first, again, other = ([aug(x, y) for _ in range(3)] for aug in runs)
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], other[0][0])
    assert not torch.equal(first[0][0], first[1][0])  # each batch draws afresh


def test_a_resumed_augmenter_continues_the_same_random_stream(tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = mixed_input(), torch.arange(16) % 3
    straight = augmenter(*pipeline_specs(), start=2, seed=3)
    straight(x, y)
    save_file(straight.state_dict(), tmp_path / "augment.safetensors")  # as a checkpoint does
    expected = straight(x, y)
    resumed = augmenter(*pipeline_specs(), start=2, seed=99)
    resumed.load_state_dict(load_file(tmp_path / "augment.safetensors"))
    got = resumed(x, y)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_the_batch_must_hold_the_image_block():
    aug = augmenter(("hflip", {}), start=2)
    with pytest.raises(ValueError, match=r"columns 2:66, but the batch has shape \(4, 60\)"):
        aug(torch.zeros(4, 60), torch.zeros(4))


def test_every_registered_augmentation_keeps_shape_dtype_and_finiteness():
    x = images(b=8, c=3)
    for name in AUGMENTATIONS.names():
        out, _ = apply((name, {}), x)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        assert torch.isfinite(out).all(), name


# -- configuration errors --------------------------------------------------------------------


def test_unknown_names_and_bad_kwargs_are_all_reported_at_their_list_position():
    specs = [("hflp", {}), ("random_crop", {"padding": -1, "padding_mode": "refelct"}),
             types.SimpleNamespace(name="mixup", kwargs={"alpha": 0}), {"name": "vflip", "pp": 1},
             "cutout", 42]
    with pytest.raises(ConfigError) as info:
        augmenter(*specs)
    assert dict(info.value.problems) == {
        "train.augment[0].name": "unknown augmentation 'hflp'. Did you mean 'hflip'? Known: "
                                 + ", ".join(AUGMENTATIONS.names()),
        "train.augment[1].padding": "Input should be greater than or equal to 0; got -1",
        "train.augment[1].padding_mode": "unknown value 'refelct'. Did you mean 'reflect'? "
                                         "Known: reflect, zeros",
        "train.augment[2].alpha": "Input should be greater than 0; got 0",
        "train.augment[3].pp": "unknown argument 'pp'. Did you mean 'p'? Known: p",
        "train.augment[5]": "expected a name or {name: ..., <arguments>}; got 42",
    }
    assert augment_problems(specs) == info.value.problems


def test_a_reversed_range_names_its_field():
    with pytest.raises(ConfigError, match=r"train\.augment\[0\]\.scale: the lower bound must "
                                          r"not exceed the upper; got \[1\.2, 0\.8\]"):
        augmenter(("affine", {"scale": [1.2, 0.8]}))


def test_a_transform_that_cannot_apply_to_this_image_shape_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        augmenter(("hflip", {}), ("color_jitter", {"saturation": 0.4}),
                  ("random_crop", {"padding": 8, "padding_mode": "reflect"}), shape=(1, 8, 8))
    problems = dict(info.value.problems)
    assert set(problems) == {"train.augment[1]", "train.augment[2]"}
    assert "saturation needs 3 (RGB) channels; the images have 1" in problems["train.augment[1]"]
    assert "reflect padding must be smaller than the image" in problems["train.augment[2]"]


def test_batch_augment_refuses_a_bad_shape_or_task():
    with pytest.raises(ValueError, match=r"shape must be \(C, H, W\)"):
        BatchAugment([], start=0, shape=(8, 8), task="binary", n_classes=2, seed=0)
    with pytest.raises(ValueError, match="task must be one of"):
        BatchAugment([], start=0, shape=(1, 8, 8), task="ranking", n_classes=2, seed=0)


# -- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_stream_is_seeded_and_the_ops_keep_their_meaning():
    x = torch.arange(32, dtype=torch.float32, device="cuda")[:, None].expand(32, 64).contiguous()
    y = torch.arange(32, device="cuda")
    specs = [("hflip", {}), ("random_crop", {"padding": 1}), ("mixup", {})]
    a = build_augment(specs, start=0, shape=(1, 8, 8), task="multiclass", n_classes=32, seed=0,
                      device="cuda")
    b = build_augment(specs, start=0, shape=(1, 8, 8), task="multiclass", n_classes=32, seed=0,
                      device="cuda")
    (xa, ya), (xb, yb) = a(x, y), b(x, y)
    assert xa.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)
    torch.testing.assert_close(ya.sum(1), torch.ones(32, device="cuda"))
    restored = BatchAugment([], start=0, shape=(1, 8, 8), task="binary", n_classes=2, seed=5,
                            device="cuda")
    restored.load_state_dict(a.state_dict())
    assert torch.equal(restored.generator.get_state(), a.generator.get_state())
    flipped = build_augment([("hflip", {"p": 1.0})], start=0, shape=(1, 8, 8), task="binary",
                            n_classes=2, seed=0, device="cuda")
    ramp = torch.arange(64, dtype=torch.float32, device="cuda").repeat(4, 1)
    got = flipped(ramp, torch.zeros(4, device="cuda"))[0].reshape(4, 1, 8, 8).cpu()
    assert torch.equal(got, ramp.reshape(4, 1, 8, 8).cpu().flip(-1))
    assert np.isfinite(xa.cpu().numpy()).all()
