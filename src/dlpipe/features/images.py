"""The model-input block of one image column (`ImageFeatures`): resize, channels, scale, normalize.

Each image becomes C*H*W float32 values in channel-first (C, H, W) order, flattened
(docs/CONTRACTS.md)::

    cell ─decode─► (H0, W0, C0) ─channels─► (H0, W0, C) ─resize─► (H, W, C) ─stack─► (N, C, H, W)
         ─scale─► (x - offset_) / divisor_ ─normalize─► (x - mean_[c]) / std_[c] ─► (N, C*H*W)

Decoding and resizing run per image; the scaling and normalizing run on the whole stack.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from dlpipe.data.images import decode_image, describe_cell, is_missing
from dlpipe.errors import ConfigError, DataError
from dlpipe.features.base import check_fitted

__all__ = ["CHANNELS", "ImageFeatures"]

CHANNELS = ("auto", "grayscale", "rgb")
SCALES = ("auto", "none")
_STD_FLOOR = 1e-6  # a constant channel (std 0) is centred, not blown up
# ITU-R 601-2 luma, the weights of Pillow's convert("L"), so a gray PNG and its RGB twin match.
_LUMA = np.array([0.299, 0.587, 0.114])
_FIELD = "features.image"


class ImageFeatures:
    """Turn one image column into a float32 (N, C*H*W) block, fitted on the training split.

    Args:
        column: the image column (cells: paths, encoded image bytes or NPY bytes).
        size: ``(height, width)`` every image is resized to (Pillow, bilinear, per channel
            in float32); None: every training image must have the same size, and images of
            another size are refused at transform time.
        channels: ``auto`` (1 if every training image is grayscale, else 3), ``grayscale``
            or ``rgb``. Alpha is dropped; RGB → gray uses Pillow's luma weights.
        scale: ``auto`` (uint8 images → /255, any other dtype → the training minimum and
            maximum mapped to 0 and 1), ``none``, or a number to divide by.
        normalize: subtract the per-channel training mean and divide by the per-channel
            standard deviation (floored at 1e-6), both of the scaled training pixels.

    Example:
        >>> features = ImageFeatures("image", size=(16, 16)).fit(train)
        >>> x = features.transform(test)            # (N, C*16*16) float32
        >>> features.shape_                          # [C, 16, 16]
    """

    def __init__(
        self,
        column: str,
        *,
        size: Sequence[int] | int | None = None,
        channels: str = "auto",
        scale: str | float = "auto",
        normalize: bool = True,
    ) -> None:
        self.column = column
        self.size = size
        self.channels = channels
        self.scale = scale
        self.normalize = normalize

    # -- fit / transform ---------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn `shape_`, `offset_`, `divisor_`, `mean_` and `std_` from the training rows.

        Raises:
            ConfigError: a bad `size`, `channels` or `scale`.
            DataError: no rows, a missing column or image, an unreadable image, or (with
                ``size=None``) images of mixed sizes, naming the rows.
        """
        size = self._check_params()
        values, rows = self._cells(frame)
        if len(values) == 0:
            raise DataError("the training split has no rows; image features are fitted on it")
        images = [decode_image(v, where=self._where(r, v)) for r, v in zip(rows, values,
                                                                             strict=True)]
        if self.channels == "auto":
            n_channels = 1 if all(image.shape[2] == 1 for image in images) else 3
        else:
            n_channels = 1 if self.channels == "grayscale" else 3
        if size is None:
            size = _common_size(images, rows, values, self.column)
        uint8 = all(image.dtype == np.uint8 for image in images)
        x = _stack(images, n_channels, size, rows, values, self.column)  # (N, C, H, W)
        offset, divisor = 0.0, 1.0
        if self.scale == "auto" and uint8:
            divisor = 255.0
        elif self.scale == "auto":
            low, high = float(x.min()), float(x.max())
            offset, divisor = low, (high - low if high > low else 1.0)
        elif self.scale != "none":
            divisor = float(self.scale)
        self.shape_ = [n_channels, int(size[0]), int(size[1])]
        self.offset_, self.divisor_ = offset, divisor
        self.mean_, self.std_ = [0.0] * n_channels, [1.0] * n_channels
        if self.normalize:
            scaled = self._scale(x)
            self.mean_ = [float(m) for m in scaled.mean(axis=(0, 2, 3), dtype=np.float64)]
            std = scaled.std(axis=(0, 2, 3), dtype=np.float64)
            self.std_ = [float(s) for s in np.maximum(std, _STD_FLOOR)]
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the float32 (N, C*H*W) block, each row an image in (C, H, W) order.

        Raises:
            DataError: a missing column or image, an unreadable image, non-finite pixels, or
                (fitted with ``size=None``) an image of another size, naming the row.
        """
        check_fitted(self, "shape_")
        values, rows = self._cells(frame)
        images = [decode_image(v, where=self._where(r, v)) for r, v in zip(rows, values,
                                                                             strict=True)]
        n_channels, height, width = self.shape_
        if self.size is None:
            for row, value, image in zip(rows, values, images, strict=True):
                if image.shape[:2] != (height, width):
                    raise DataError(
                        f"{self._where(row, value)}: image is {_hw(image)} but the model was "
                        f"fitted on {height}x{width} images; resize it, or set "
                        f"{_FIELD}.size so every image is resized")
        x = _stack(images, n_channels, (height, width), rows, values, self.column)
        x = self._scale(x)
        mean = np.asarray(self.mean_, dtype=np.float32)[:, None, None]  # (C, 1, 1)
        std = np.asarray(self.std_, dtype=np.float32)[:, None, None]
        x -= mean
        x /= std
        return x.reshape(len(x), -1)  # (N, C*H*W)

    @property
    def n_features_(self) -> int:
        """Width of the block: C*H*W."""
        check_fitted(self, "shape_")
        n_channels, height, width = self.shape_
        return n_channels * height * width

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Constructor arguments and fitted state as plain JSON data."""
        check_fitted(self, "shape_")
        size = None if self.size is None else [int(n) for n in _pair(self.size)]
        scale = self.scale if isinstance(self.scale, str) else float(self.scale)
        return {
            "params": {"column": self.column, "size": size, "channels": self.channels,
                       "scale": scale, "normalize": bool(self.normalize)},
            "fitted": {"shape": list(self.shape_), "offset": self.offset_,
                       "divisor": self.divisor_, "mean": list(self.mean_),
                       "std": list(self.std_)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a fitted ImageFeatures from `to_json`'s output."""
        params = dict(data["params"])
        obj = cls(params.pop("column"), **params)
        fitted = data["fitted"]
        obj.shape_ = [int(n) for n in fitted["shape"]]
        obj.offset_, obj.divisor_ = float(fitted["offset"]), float(fitted["divisor"])
        obj.mean_ = [float(m) for m in fitted["mean"]]
        obj.std_ = [float(s) for s in fitted["std"]]
        return obj

    # -- helpers ---------------------------------------------------------------------------------

    def _scale(self, x: np.ndarray) -> np.ndarray:
        """(x - offset_) / divisor_ in place on the float32 stack."""
        if self.offset_:
            x -= np.float32(self.offset_)
        if self.divisor_ != 1.0:
            x /= np.float32(self.divisor_)
        return x

    def _cells(self, frame: pd.DataFrame) -> tuple[list[Any], list[Any]]:
        """The column's values and row labels; a missing column or cell is a DataError."""
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        if self.column not in frame.columns:
            raise DataError(f"input is missing the image column {self.column!r}; columns: "
                            f"{', '.join(map(str, frame.columns))}")
        series = frame[self.column]
        values, rows = series.tolist(), series.index.tolist()
        for row, value in zip(rows, values, strict=True):
            if is_missing(value):
                raise DataError(f"column {self.column!r}, row {row}: missing image; drop the "
                                f"row or give a path or image bytes")
        return values, rows

    def _where(self, row: Any, value: Any) -> str:
        return describe_cell(self.column, row, value)

    def _check_params(self) -> tuple[int, int] | None:
        problems = []
        size = None
        if self.size is not None:
            try:
                size = _pair(self.size)
            except ValueError:
                problems.append((f"{_FIELD}.size", f"must be [height, width], two positive "
                                                   f"integers; got {self.size!r}"))
        if self.channels not in CHANNELS:
            problems.append((f"{_FIELD}.channels",
                             f"must be one of {', '.join(CHANNELS)}; got {self.channels!r}"))
        if not _valid_scale(self.scale):
            problems.append((f"{_FIELD}.scale", f"must be auto, none or a positive number; "
                                                f"got {self.scale!r}"))
        if problems:
            raise ConfigError(problems)
        return size


def _pair(size: Sequence[int] | int) -> tuple[int, int]:
    """(H, W) from an int or a pair of positive ints; ValueError otherwise."""
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(pair) != 2 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                 and n > 0 for n in pair):
        raise ValueError(size)
    return int(pair[0]), int(pair[1])


def _valid_scale(scale: Any) -> bool:
    if isinstance(scale, str):
        return scale in SCALES
    return (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
            and bool(np.isfinite(scale)) and scale > 0)


def _hw(image: np.ndarray) -> str:
    return f"{image.shape[0]}x{image.shape[1]}"


def _common_size(images: Sequence[np.ndarray], rows: Sequence[Any], values: Sequence[Any],
                 column: str) -> tuple[int, int]:
    """The one size of all training images; mixed sizes are a DataError naming two rows."""
    first = images[0].shape[:2]
    for row, value, image in zip(rows, values, images, strict=True):
        if image.shape[:2] != first:
            raise DataError(
                f"column {column!r}: images of mixed sizes ({_hw(images[0])} in "
                f"{_place(column, rows[0], values[0])}, {_hw(image)} in "
                f"{_place(column, row, value)}); set {_FIELD}.size: [height, width] to resize "
                f"them all")
    return int(first[0]), int(first[1])


def _place(column: str, row: Any, value: Any) -> str:
    """``row 5 ('/data/x.png')``: `describe_cell` without the column."""
    return describe_cell(column, row, value).removeprefix(f"column {column!r}, ")


def _stack(images: Sequence[np.ndarray], n_channels: int, size: tuple[int, int],
           rows: Sequence[Any], values: Sequence[Any], column: str) -> np.ndarray:
    """Float32 (N, C, H, W) of the images: channels converted, resized, non-finite refused."""
    height, width = size
    x = np.empty((len(images), n_channels, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        image = _to_channels(image, n_channels)  # (H0, W0, 1 or n_channels)
        if image.shape[:2] != (height, width):
            image = _resize(image, height, width)
        x[i] = image.transpose(2, 0, 1)  # (C, H, W); a gray image broadcasts to RGB
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{describe_cell(column, rows[bad], values[bad])}: image has non-finite "
                        f"pixel values (NaN or inf); fix or drop it")
    return x


def _to_channels(image: np.ndarray, n_channels: int) -> np.ndarray:
    """(H, W, C0) → (H, W, 1) or (H, W, n_channels); gray stays 1 channel (broadcast later)."""
    if image.shape[2] == 4:
        image = image[..., :3]  # RGBA → RGB: alpha dropped
    if n_channels == 1 and image.shape[2] == 3:
        image = (image.astype(np.float32) @ _LUMA.astype(np.float32))[..., None]
    return image


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of each channel as a float32 Pillow image (mode F): (h, w, C) → (H, W, C)."""
    from PIL import Image

    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
                   .resize((width, height), Image.Resampling.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)
