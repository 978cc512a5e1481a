"""ImageFeatures: channel-first float32 blocks, resize, channels, scale, normalize, JSON, errors.

The oracle for every number is the same computation written out in numpy (and Pillow for
resizing), on the (N, C, H, W) stack.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlpipe.data.images import arrays_to_cells, to_npy_bytes
from dlpipe.errors import ConfigError, DataError
from dlpipe.features.base import NotFittedError
from dlpipe.features.images import ImageFeatures

RNG = np.random.default_rng(0)
LUMA = np.array([0.299, 0.587, 0.114])


def table(cells, index=None) -> pd.DataFrame:
    return pd.DataFrame({"image": list(cells)}, index=index)


def uint8_images(shape) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def roundtrip(features: ImageFeatures) -> ImageFeatures:
    return ImageFeatures.from_json(json.loads(json.dumps(features.to_json())))


def hand_normalize(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → per-channel standardized, then flattened."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(0, 2, 3), keepdims=True), 1e-6)
    return ((x - mean) / std).reshape(len(x), -1)


# -- numbers -------------------------------------------------------------------------------------


def test_uint8_gray_images_are_divided_by_255_then_standardized():
    X = uint8_images((12, 6, 5))
    features = ImageFeatures("image").fit(table(arrays_to_cells(X)))
    out = features.transform(table(arrays_to_cells(X)))
    assert out.dtype == np.float32 and out.shape == (12, 30) and features.shape_ == [1, 6, 5]
    x = X[:, None].astype(np.float64) / 255  # (N, 1, H, W)
    # float32 pipeline vs float64 oracle: values of order 1, so 1e-5 covers the rounding.
    np.testing.assert_allclose(out, hand_normalize(x), rtol=1e-5, atol=1e-5)
    # The statistics are summed in float64 over float32 pixels (x/255 rounded to 24 bits).
    np.testing.assert_allclose(features.mean_, [x.mean()], rtol=1e-6)
    np.testing.assert_allclose(features.std_, [x.std()], rtol=1e-6)


def test_other_dtypes_map_the_training_min_and_max_to_0_and_1():
    X = RNG.uniform(-3.0, 7.0, (10, 4, 4))
    test = RNG.uniform(-5.0, 9.0, (3, 4, 4))
    features = ImageFeatures("image", normalize=False).fit(table(arrays_to_cells(X)))
    low, high = X.astype(np.float32).min(), X.astype(np.float32).max()
    assert features.offset_ == pytest.approx(low) and features.divisor_ == pytest.approx(
        high - low)
    out = features.transform(table(arrays_to_cells(test)))
    np.testing.assert_allclose(out, ((test - low) / (high - low)).reshape(3, -1), atol=1e-6)


def test_a_numeric_scale_divides_and_none_keeps_values_as_they_are():
    X = uint8_images((5, 3, 3))
    by_16 = ImageFeatures("image", scale=16, normalize=False).fit(table(arrays_to_cells(X)))
    np.testing.assert_allclose(by_16.transform(table(arrays_to_cells(X))),
                               X.reshape(5, -1) / 16, rtol=1e-6)
    raw = ImageFeatures("image", scale="none", normalize=False).fit(table(arrays_to_cells(X)))
    np.testing.assert_array_equal(raw.transform(table(arrays_to_cells(X))), X.reshape(5, -1))


def test_a_constant_channel_is_centred_with_the_std_floor_not_divided_by_zero():
    X = np.full((4, 3, 3), 7.0)
    features = ImageFeatures("image").fit(table(arrays_to_cells(X)))
    assert features.divisor_ == 1.0 and features.std_ == [1e-6]
    np.testing.assert_array_equal(features.transform(table(arrays_to_cells(X))), 0.0)


# -- channels and layout -------------------------------------------------------------------------


def test_rgb_images_come_out_channel_first_and_alpha_is_dropped():
    rgb = uint8_images((3, 4, 5, 3))
    rgba = np.concatenate([rgb, uint8_images((3, 4, 5, 1))], axis=-1)
    features = ImageFeatures("image", normalize=False).fit(table(arrays_to_cells(rgba)))
    assert features.shape_ == [3, 4, 5]
    out = features.transform(table(arrays_to_cells(rgba)))
    expected = rgb.transpose(0, 3, 1, 2).reshape(3, -1) / 255  # (N, C, H, W) flattened
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_normalize_uses_one_mean_and_std_per_channel():
    rgb = uint8_images((6, 4, 4, 3)).astype(np.float64)
    rgb[..., 1] *= 0.1  # channels with very different statistics
    features = ImageFeatures("image", scale="none").fit(table(arrays_to_cells(rgb)))
    x = rgb.transpose(0, 3, 1, 2)
    # 0.1 * pixel is not exact in float32, the dtype of the stack the mean is taken on.
    np.testing.assert_allclose(features.mean_, x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(features.transform(table(arrays_to_cells(rgb))),
                               hand_normalize(x), rtol=1e-5, atol=1e-5)


def test_channels_auto_grayscale_and_rgb():
    gray, rgb = uint8_images((2, 4, 4)), uint8_images((2, 4, 4, 3))
    mixed = table(arrays_to_cells(gray) + arrays_to_cells(rgb))
    assert ImageFeatures("image").fit(table(arrays_to_cells(gray))).shape_[0] == 1
    auto = ImageFeatures("image", normalize=False).fit(mixed)
    assert auto.shape_ == [3, 4, 4]
    out = auto.transform(mixed).reshape(4, 3, 4, 4)
    np.testing.assert_allclose(out[0], np.broadcast_to(gray[0] / 255, (3, 4, 4)), rtol=1e-6)
    to_gray = ImageFeatures("image", channels="grayscale", normalize=False).fit(mixed)
    assert to_gray.shape_ == [1, 4, 4]
    out = to_gray.transform(table(arrays_to_cells(rgb))).reshape(2, 4, 4)
    np.testing.assert_allclose(out, rgb @ LUMA / 255, rtol=1e-5)
    to_rgb = ImageFeatures("image", channels="rgb").fit(table(arrays_to_cells(gray)))
    assert to_rgb.shape_ == [3, 4, 4]


def test_png_paths_and_encoded_bytes_give_the_same_block(tmp_path):
    X = uint8_images((3, 5, 5))
    paths, encoded = [], []
    for i, image in enumerate(X):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
        (tmp_path / f"{i}.png").write_bytes(buffer.getvalue())
        paths.append(str(tmp_path / f"{i}.png"))
    features = ImageFeatures("image").fit(table(paths))
    from_npy = features.transform(table(arrays_to_cells(X)))
    np.testing.assert_array_equal(features.transform(table(encoded)), from_npy)
    np.testing.assert_array_equal(features.transform(table(paths)), from_npy)


# -- resize --------------------------------------------------------------------------------------


def pillow_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = Image.fromarray(image.astype(np.float32)).resize((width, height),
                                                              Image.Resampling.BILINEAR)
    return np.asarray(resized)


def test_size_resizes_every_image_bilinearly_as_pillow_does():
    small, large = uint8_images((2, 8, 8)), uint8_images((2, 16, 12))
    frame = table(arrays_to_cells(small) + arrays_to_cells(large))
    features = ImageFeatures("image", size=(6, 4), scale="none", normalize=False).fit(frame)
    assert features.shape_ == [1, 6, 4]
    out = features.transform(frame).reshape(4, 6, 4)
    for got, image in zip(out, [*small, *large], strict=True):
        np.testing.assert_array_equal(got, pillow_bilinear(image, 6, 4))
    assert not np.array_equal(out[0], small[0][:6, :4])  # it really was resized


def test_resize_keeps_a_constant_image_constant_and_per_channel():
    rgb = np.empty((1, 5, 7, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    features = ImageFeatures("image", size=3, scale="none", normalize=False)
    out = features.fit(table(arrays_to_cells(rgb))).transform(table(arrays_to_cells(rgb)))
    assert features.shape_ == [3, 3, 3]
    np.testing.assert_allclose(out.reshape(3, 9), [[10] * 9, [20] * 9, [30] * 9], rtol=1e-6)


def test_mixed_sizes_without_size_name_two_rows_and_the_fix():
    cells = arrays_to_cells(uint8_images((5, 8, 8))) + [to_npy_bytes(uint8_images((16, 12)))]
    with pytest.raises(DataError, match=r"column 'image': images of mixed sizes \(8x8 in row 0 "
                                        r"\(\d+ bytes\), 16x12 in row 5 \(\d+ bytes\)\); set "
                                        r"features.image.size"):
        ImageFeatures("image").fit(table(cells))


def test_mixed_size_paths_are_named_by_their_path(tmp_path):
    paths = []
    for name, shape in [("a", (8, 8)), ("b", (4, 4))]:
        Image.fromarray(uint8_images(shape)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    with pytest.raises(DataError, match=r"8x8 in row 0 \('.*a\.png'\), 4x4 in row 1 "
                                        r"\('.*b\.png'\)"):
        ImageFeatures("image").fit(table(paths))


def test_an_image_of_another_size_at_transform_time_is_refused_naming_the_row():
    features = ImageFeatures("image").fit(table(arrays_to_cells(uint8_images((3, 8, 8)))))
    cells = arrays_to_cells(uint8_images((2, 8, 8))) + [to_npy_bytes(uint8_images((9, 8)))]
    with pytest.raises(DataError, match=r"^column 'image', row 42 \(\d+ bytes\): image is 9x8 "
                                        r"but the model was fitted on 8x8 images"):
        features.transform(table(cells, index=[40, 41, 42]))


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {},
    {"size": (5, 6), "channels": "rgb"},
    {"scale": 16.0, "normalize": False},
    {"scale": "none", "channels": "grayscale"},
])
def test_json_round_trip_reproduces_the_transform_exactly(params):
    train = arrays_to_cells(RNG.uniform(0, 16, (6, 8, 8, 3)))
    test = table(arrays_to_cells(RNG.uniform(0, 16, (4, 8, 8, 3))))
    features = ImageFeatures("image", **params).fit(table(train))
    again = roundtrip(features)
    assert again.to_json() == features.to_json()
    np.testing.assert_array_equal(again.transform(test), features.transform(test))


def test_to_json_is_plain_data():
    features = ImageFeatures("image", size=[4, 4]).fit(table(arrays_to_cells(uint8_images(
        (2, 8, 8)))))
    data = features.to_json()
    assert data["params"] == {"column": "image", "size": [4, 4], "channels": "auto",
                              "scale": "auto", "normalize": True}
    assert data["fitted"]["shape"] == [1, 4, 4] and data["fitted"]["divisor"] == 255.0
    assert json.loads(json.dumps(data)) == data


# -- errors --------------------------------------------------------------------------------------


def test_missing_values_are_refused_naming_the_row():
    cells = arrays_to_cells(uint8_images((2, 4, 4)))
    for missing in (None, np.nan):
        with pytest.raises(DataError, match=r"column 'image', row b: missing image"):
            ImageFeatures("image").fit(table([cells[0], missing, cells[1]], index=list("abc")))


def test_a_missing_column_an_empty_split_and_an_unfitted_transformer_are_errors():
    cells = arrays_to_cells(uint8_images((2, 4, 4)))
    with pytest.raises(DataError, match=r"missing the image column 'photo'; columns: image"):
        ImageFeatures("photo").fit(table(cells))
    with pytest.raises(DataError, match=r"the training split has no rows"):
        ImageFeatures("image").fit(table([]))
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        ImageFeatures("image").transform(table(cells))


def test_unreadable_images_and_non_finite_pixels_name_the_row(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(RNG.bytes(100))
    good = arrays_to_cells(RNG.random((2, 4, 4)))
    with pytest.raises(DataError, match=r"row 1 \('.*bad\.png'\): not an image file"):
        ImageFeatures("image").fit(table([good[0], str(bad)]))
    with_nan = RNG.random((4, 4))
    with_nan[2, 3] = np.nan
    with pytest.raises(DataError, match=r"row 2 \(\d+ bytes\): image has non-finite pixel"):
        ImageFeatures("image").fit(table([*good, to_npy_bytes(with_nan)]))


@pytest.mark.parametrize(("params", "message"), [
    ({"size": (0, 4)}, r"features.image.size: must be \[height, width\], two positive integers"),
    ({"size": (4, 4, 4)}, r"features.image.size: must be"),
    ({"channels": "bgr"}, r"features.image.channels: must be one of auto, grayscale, rgb; got "
                          r"'bgr'"),
    ({"scale": 0}, r"features.image.scale: must be auto, none or a positive number; got 0"),
    ({"scale": "minmax"}, r"features.image.scale: must be auto, none or a positive number"),
])
def test_bad_settings_are_config_errors_naming_the_field(params, message):
    with pytest.raises(ConfigError, match=message):
        ImageFeatures("image", **params).fit(table(arrays_to_cells(uint8_images((2, 4, 4)))))


def test_fit_stores_the_constructor_arguments_unchanged(tmp_path: Path):
    features = ImageFeatures("image", size=[8, 8], channels="rgb", scale=2, normalize=False)
    assert (features.size, features.channels, features.scale, features.normalize) == (
        [8, 8], "rgb", 2, False)
    assert not hasattr(features, "shape_")
