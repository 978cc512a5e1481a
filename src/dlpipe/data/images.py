"""Image cells of the data stage: decode them, load a folder of images, check they open.

A table column of kind ``image`` holds one cell per row (docs/CONTRACTS.md): a ``str`` path to
an image file (PNG, JPEG, BMP, GIF, TIFF; read with Pillow), or ``bytes``: an encoded image
file, or NPY bytes (`np.save` format, loaded with ``allow_pickle=False``) holding an (H, W) or
(H, W, C) array. Arrays handed in from Python become NPY bytes at load time (`arrays_to_cells`)
so cells stay hashable for duplicate detection and the leakage guard.

Every error is a `DataError` that names where the image comes from (column, row, path) and
what is wrong with it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "POLICIES",
    "arrays_to_cells",
    "check_images",
    "decode_image",
    "describe_cell",
    "is_missing",
    "load_image_folder",
    "resolve_paths",
    "to_npy_bytes",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
"""File endings (lowercase) read as images; matched case-insensitively."""
POLICIES = ("error", "skip")
"""What `check_images` does with an unreadable image (``data.clean.bad_images``)."""

NPY_MAGIC = b"\x93NUMPY"
_CHANNELS = (1, 3, 4)
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a pixel may be
# Pillow modes turned into the nearest mode numpy reads as (H, W) or (H, W, C) with C in 1, 3, 4.
# Alpha next to gray (LA, La) is dropped, as the features stage drops RGBA's alpha.
_CONVERT = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGBA", "RGBa": "RGBA",
            "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_KEEP = {"L", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


# -- arrays → cells ------------------------------------------------------------------------------


def to_npy_bytes(array: Any) -> bytes:
    """Encode one image array as NPY bytes (the `np.save` format), a hashable table cell.

    Args:
        array: shape (H, W) or (H, W, C) with C in 1, 3, 4, of a bool, integer or float dtype.

    Raises:
        DataError: another shape or dtype.

    Example:
        >>> cell = to_npy_bytes(np.zeros((8, 8), dtype=np.uint8))
        >>> decode_image(cell, where="example").shape
        (8, 8, 1)
    """
    array = np.ascontiguousarray(array)
    _check_array(array.shape, array.dtype, "image array")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def arrays_to_cells(X: Any) -> list[bytes]:
    """Encode a stack of images, one NPY-bytes cell per image.

    The same bytes as `to_npy_bytes` on each image, made by writing the shared NPY header
    once instead of calling `np.save` N times.

    Args:
        X: shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4.

    Raises:
        DataError: another shape or a non-numeric dtype.

    Example:
        >>> cells = arrays_to_cells(np.zeros((5, 8, 8)))
        >>> len(cells), cells[0] == to_npy_bytes(np.zeros((8, 8)))
        (5, True)
    """
    X = np.ascontiguousarray(X)
    if X.ndim not in (3, 4):
        raise DataError(f"image arrays: expected shape (N, H, W) or (N, H, W, C); got shape "
                        f"{X.shape}")
    _check_array(X.shape[1:], X.dtype, "image arrays")
    if len(X) == 0:
        return []
    first = to_npy_bytes(X[0])
    header = first[: len(first) - X[0].nbytes]
    return [header + image.tobytes() for image in X]


def _check_array(shape: Sequence[int], dtype: np.dtype, what: str) -> None:
    """Raise a DataError unless `shape` is (H, W) or (H, W, C) of a numeric `dtype`."""
    shape = tuple(int(n) for n in shape)
    if dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"{what}: pixels must be numbers (bool, integer or float); got dtype "
                        f"{dtype}")
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in _CHANNELS):
        if 0 in shape:
            raise DataError(f"{what}: an image needs at least one pixel; got shape {shape}")
        return
    raise DataError(f"{what}: unsupported shape {shape}; expected (H, W) or (H, W, C) with C "
                    f"in 1, 3, 4 (grayscale, RGB, RGBA)")


# -- decoding ------------------------------------------------------------------------------------


def describe_cell(column: str, row: Any, value: Any) -> str:
    """Where an image comes from, for messages: ``column 'image', row 12 ('/data/x.png')``."""
    if isinstance(value, str):
        return f"column {column!r}, row {row} ({value!r})"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"column {column!r}, row {row} ({len(value)} bytes)"
    return f"column {column!r}, row {row}"


def decode_image(value: Any, *, where: str) -> np.ndarray:
    """Read one image cell into an (H, W, C) array, C = 1, 3 or 4.

    Files and encoded bytes are read with Pillow (uint8 for 8-bit images; 16-bit and float
    TIFFs keep their dtype); palette images become RGB(A), gray with alpha becomes gray; a
    multi-frame GIF/TIFF gives its first frame. NPY bytes keep their stored dtype.

    Args:
        value: a path (``str`` or `os.PathLike`), or ``bytes`` of an image file or of NPY.
        where: prefix of every error message, e.g. from `describe_cell`.

    Raises:
        DataError: a missing file, something that is not an image, a truncated or corrupt
            image, or an unsupported array shape or dtype; the message starts with `where`.

    Example:
        >>> decode_image("/data/cats/1.png", where="column 'image', row 0").shape
        (32, 32, 3)
    """
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        if value.startswith(NPY_MAGIC):
            return _decode_npy(value, where)
        return _decode_encoded(io.BytesIO(value), where, "bytes")
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.exists():
            raise DataError(f"{where}: image file not found")
        if not path.is_file():
            raise DataError(f"{where}: not a file, so not an image")
        return _decode_encoded(path, where, "file")
    raise DataError(f"{where}: expected a path to an image file (str) or image bytes; got "
                    f"{type(value).__name__} {value!r:.60}; turn arrays into cells with "
                    f"dlpipe.data.images.to_npy_bytes")


def _decode_encoded(source: Path | io.BytesIO, where: str, what: str) -> np.ndarray:
    def pixels(image: Any) -> np.ndarray:
        image.load()
        mode = _CONVERT.get(image.mode, image.mode)
        if mode not in _KEEP:
            raise DataError(f"{where}: unsupported image mode {image.mode!r}; save it as 8-bit "
                            f"grayscale, RGB or RGBA")
        return np.array(image.convert(mode) if mode != image.mode else image)

    array = _read_image(source, where, what, pixels)
    return array[..., None] if array.ndim == 2 else array  # (H, W, C)


def _read_image(source: Path | io.BytesIO, where: str, what: str,
                read: Callable[[Any], Any]) -> Any:
    """Open with Pillow and return `read(image)`; Pillow's errors become DataErrors."""
    from PIL import Image, UnidentifiedImageError

    formats = "PNG, JPEG, BMP, GIF, TIFF"
    unknown = (f"not an image file Pillow can read ({formats})" if what == "file" else
               f"neither an encoded image ({formats}) nor NPY bytes")
    try:
        with Image.open(source) as image:
            return read(image)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{where}: {unknown}") from None
    except PermissionError as exc:
        raise DataError(f"{where}: cannot open the file ({exc.strerror})") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image too large to read safely: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports a cut-off file as OSError("image file is truncated") on load and as
        # OSError("Truncated File Read") or SyntaxError (bad chunk CRC) on verify.
        raise DataError(f"{where}: the image is truncated or corrupt ({exc})") from None


def _decode_npy(value: bytes, where: str) -> np.ndarray:
    """Read NPY bytes without np.load's per-call header parsing (the header is cached)."""
    dtype, shape, fortran, offset = _npy_header(value, where)
    array = np.frombuffer(value, dtype=dtype, offset=offset)
    array = array.reshape(shape, order="F" if fortran else "C")
    return array[..., None] if array.ndim == 2 else array  # (H, W, C)


def _npy_header(value: bytes, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) of NPY bytes checked to hold one image."""
    major = value[6] if len(value) > 6 else 0
    size_bytes = {1: 2, 2: 4, 3: 4}.get(major)
    if size_bytes is None or len(value) < 8 + size_bytes:
        raise DataError(f"{where}: NPY bytes are truncated or of an unknown version")
    offset = 8 + size_bytes + int.from_bytes(value[8: 8 + size_bytes], "little")
    header = _parse_npy_header(value[:offset])
    if isinstance(header, str):
        raise DataError(f"{where}: {header}")
    dtype, shape, fortran, nbytes = header
    if len(value) - offset != nbytes:
        raise DataError(f"{where}: NPY bytes are truncated or corrupt: the header announces "
                        f"{nbytes} bytes of pixels for shape {shape}, found "
                        f"{len(value) - offset}")
    return dtype, shape, fortran, offset


@lru_cache(maxsize=64)
def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int] | str:
    """(dtype, shape, fortran_order, data bytes) of an NPY header, or what is wrong with it.

    Cached: the cells of one data set share one header, and numpy's header parser costs
    more than reading the pixels.
    """
    from numpy.lib import format as npy

    stream = io.BytesIO(header)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(stream)
        else:
            return f"NPY bytes of unsupported version {version}; write them with np.save"
    except (ValueError, EOFError, OSError) as exc:
        return f"NPY bytes are truncated or corrupt ({exc})"
    if dtype.hasobject:
        return ("NPY bytes hold Python objects, which are never loaded (allow_pickle=False); "
                "store a numeric array")
    shape = tuple(int(n) for n in shape)
    try:
        _check_array(shape, dtype, "NPY array")
    except DataError as exc:
        return str(exc)
    return dtype, shape, bool(fortran), dtype.itemsize * int(np.prod(shape))


# -- folders and paths ---------------------------------------------------------------------------


def load_image_folder(
    path: str | os.PathLike[str], *, column: str = "image", target: str = "target"
) -> pd.DataFrame:
    """Read a folder with one sub-folder per class into a table of image paths and labels.

    ``path/cat/1.png, path/dog/7.jpg`` → rows ``{column: "/abs/path/cat/1.png", target:
    "cat"}``. Classes and files are sorted by name, so the table is the same on every
    machine. Files directly inside each class folder whose ending is in `IMAGE_EXTENSIONS`
    (any case) are images; hidden files and folders (``.name``) and other files are ignored.

    Returns:
        A DataFrame with a RangeIndex and columns `column` (absolute paths) and `target`.

    Raises:
        DataError: `path` is missing or not a folder, has no class folders or only one, a
            class folder holds no images, or no folder holds any.

    Example:
        >>> load_image_folder("data/pets").head(2)
    """
    root = Path(path)
    if column == target:
        raise DataError(f"image folder: the image column and the target are both {column!r}; "
                        f"give them different names")
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder; an image folder holds one sub-folder "
                        f"per class (cat/1.png, dog/2.png)")
    root = root.resolve()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = len(_images_in(root))
        found = f"; found {loose} image file(s) directly in it" if loose else ""
        raise DataError(f"image folder {str(root)!r} has no class folders{found}; put the "
                        f"images of each class in a sub-folder named after the class "
                        f"(cat/1.png, dog/2.png)")
    if len(classes) == 1:
        raise DataError(f"image folder {str(root)!r}: an image folder needs at least two class "
                        f"folders; found only {classes[0].name!r}")
    files = {folder.name: _images_in(folder) for folder in classes}
    if not any(files.values()):
        raise DataError(f"image folder {str(root)!r} holds no images in its class folders "
                        f"({', '.join(files)}); images end in {', '.join(IMAGE_EXTENSIONS)}")
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(f"class folder {str(root / empty[0])!r} has no images (files ending "
                        f"in {', '.join(IMAGE_EXTENSIONS)}); {len(empty)} class folder(s) are "
                        f"empty ({', '.join(empty)}); add images or remove them")
    paths = [str(f) for found in files.values() for f in found]
    labels = [name for name, found in files.items() for _ in found]
    return pd.DataFrame({column: pd.Series(paths, dtype=object),
                         target: pd.Series(labels, dtype=object)})


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        f for f in folder.iterdir()
        if not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    )


def resolve_paths(series: pd.Series, base_dir: str | os.PathLike[str]) -> pd.Series:
    """Make the relative paths of an image column absolute against `base_dir`.

    A CSV or Parquet file names its images relative to its own folder; pass that folder.
    Absolute paths, bytes and missing values are returned unchanged.

    Example:
        >>> resolve_paths(pd.Series(["img/1.png", "/abs/2.png"]), "/data").tolist()
        ['/data/img/1.png', '/abs/2.png']
    """
    base = Path(base_dir).absolute()

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and not os.path.isabs(value):
            return os.path.normpath(base / value)
        return value

    return series.map(resolve).astype(object)


# -- checking ------------------------------------------------------------------------------------


def check_images(
    frame: pd.DataFrame, column: str, *, policy: str = "error", same_size: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """Open every image of `column` cheaply and fail on, or drop, the unreadable ones.

    Files and encoded bytes are checked with Pillow's `verify()` (no pixel decoding); NPY
    bytes by their header and length. Missing values count as unreadable.

    Args:
        policy: ``error`` raises on the first bad image (with the count of bad ones);
            ``skip`` drops those rows.
        same_size: refuse readable images of different sizes (when nothing resizes them),
            naming a row of each size, before anything is written.

    Returns:
        The frame without the bad rows (the same object when none is bad), and one
        description per dropped row, ``row 3 ('/data/x.png'): not an image file ...``.

    Raises:
        DataError: with ``policy="error"``, naming the first bad row and its path.
        ConfigError: an unknown policy.

    Example:
        >>> table, skipped = check_images(table, "image", policy="skip")
    """
    if policy not in POLICIES:
        raise ConfigError([("data.clean.bad_images",
                            f"must be one of {', '.join(POLICIES)}; got {policy!r}")])
    if column not in frame.columns:
        raise DataError(f"column {column!r} is not in the table; columns: "
                        f"{', '.join(map(str, frame.columns))}")
    keep = np.ones(len(frame), dtype=bool)
    problems: list[str] = []
    sizes: dict[tuple[int, int], Any] = {}  # (H, W) -> the first row of that size
    for position, (row, value) in enumerate(frame[column].items()):
        problem, size = _check_cell(value, describe_cell(column, row, value))
        if problem is not None:
            keep[position] = False
            problems.append(problem)
        elif size is not None:
            sizes.setdefault(size, row)
    if same_size and len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} in row {row}" for (h, w), row in list(sizes.items())[:3])
        raise DataError(f"column {column!r}: images of mixed sizes ({shown}); set "
                        f"features.image.size: [height, width] to resize them to one size")
    if not problems:
        return frame, []
    if policy == "error":
        more = (f" ({len(problems)} of {len(frame)} images are unreadable)"
                if len(problems) > 1 else "")
        raise DataError(f"{problems[0]}{more}; fix or remove them, or set "
                        f"data.clean.bad_images: skip to drop such rows")
    prefix = f"column {column!r}, "
    return frame[keep], [problem.removeprefix(prefix) for problem in problems]


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA: a cell with no image."""
    if value is None:
        return True
    if isinstance(value, str | bytes | bytearray | memoryview):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array or another object: not a missing marker
        return False


def _check_cell(value: Any, where: str) -> tuple[str | None, tuple[int, int] | None]:
    """(the error message for one cell or None when the image opens, its (H, W) size)."""
    if is_missing(value):
        return f"{where}: missing image", None

    def verified(image: Any) -> tuple[int, int]:
        width, height = image.size  # read from the header, before verify() consumes it
        image.verify()
        return height, width

    try:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if isinstance(value, bytes) and value.startswith(NPY_MAGIC):
            return None, tuple(_npy_header(value, where)[1][:2])
        if isinstance(value, bytes):
            return None, _read_image(io.BytesIO(value), where, "bytes", verified)
        if isinstance(value, str | os.PathLike):
            path = Path(value)
            if not path.is_file():
                return (f"{where}: image file not found" if not path.exists() else
                        f"{where}: not a file, so not an image"), None
            return None, _read_image(path, where, "file", verified)
        decode_image(value, where=where)  # raises its type error
    except DataError as exc:
        return str(exc), None
    return None, None
