"""Write scikit-learn's digits as a folder of PNG images, one sub-folder per class.

    python examples/make_digits_folder.py OUT_DIR [--size 16]

gives ``OUT_DIR/0/0000.png .. OUT_DIR/9/1796.png``: 1,797 grayscale uint8 PNGs (pixel values
0..16 mapped to 0..255, each 8x8 digit upscaled by pixel repetition to SIZE x SIZE), the
input `data.source.path: OUT_DIR` of an image pipeline. Offline (the digits ship inside
scikit-learn), deterministic (the same bytes on every run) and atomic: the folder is built
under a temporary name and renamed into place, so OUT_DIR is either complete or untouched.
Running it again replaces a digits folder it wrote; a folder with anything else in it is
refused.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CLASSES = [str(digit) for digit in range(10)]


def make_digits_folder(out_dir: str | os.PathLike[str], *, size: int = 16) -> Path:
    """Write the digits as ``out_dir/<class>/<index>.png`` and return the folder's path.

    Args:
        out_dir: the folder to create (or replace, if it holds a digits folder).
        size: side of each square PNG; a multiple of 8 (8 keeps the original pixels).

    Raises:
        ValueError: `size` is not a positive multiple of 8, or `out_dir` exists and holds
            something other than a digits folder.

    Example:
        >>> make_digits_folder("/tmp/digits").joinpath("3").is_dir()
        True
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if size < 8 or size % 8:
        raise ValueError(f"--size must be a positive multiple of 8; got {size}")
    out = Path(out_dir).absolute()
    if out.exists() and not _is_digits_folder(out):
        raise ValueError(f"{str(out)!r} exists and is not a digits folder; choose a new path")
    bunch = load_digits()
    factor = size // 8
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8), 0..16 → 0..255
    pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)  # (N, size, size)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name in CLASSES:
            (tmp / name).mkdir(parents=True)
        for index, (image, label) in enumerate(zip(pixels, bunch.target, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")  # mode L from a 2-D uint8
            (tmp / str(label) / f"{index:04d}.png").write_bytes(buffer.getvalue())
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an old `out` is moved aside first and removed after."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_digits_folder(path: Path) -> bool:
    """True for an empty folder or one holding only class folders 0..9 of PNG files."""
    if not path.is_dir():
        return False
    for folder in path.iterdir():
        if folder.name not in CLASSES or not folder.is_dir():
            return False
        if any(f.suffix != ".png" or not f.is_file() for f in folder.iterdir()):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0, or 2 with a message)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write (created, or replaced if it holds "
                                        "digits written by this script)")
    parser.add_argument("--size", type=int, default=16, help="side of each PNG (multiple of 8)")
    args = parser.parse_args(argv)
    try:
        out = make_digits_folder(args.out_dir, size=args.size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the digits as {args.size}x{args.size} PNGs to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
