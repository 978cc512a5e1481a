"""The prepared rows of a streaming run: each split transformed once, on disk, as `.npy`.

With `data.stream: true` the features stage does not stop at features.json: it transforms
every split chunk by chunk into prepared/<split>.x.npy (float32 (N, F), the model input) and
prepared/<split>.y.npy (int64 class indices or float32 targets), so that training reads
ready rows every epoch instead of redoing the preprocessing. Plain `.npy` files: a header,
then the rows, readable with `numpy.load(path, mmap_mode="r")` and holding no code.

`PreparedArray` reads row ranges with ordinary file reads into a buffer, not a memory map:
pages of a memory map count towards the process's resident memory while they stay mapped,
reads through the page cache do not, so memory stays bounded by the block size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dlpipe import runs
from dlpipe.errors import RunDirError

__all__ = ["PreparedArray", "NpyWriter", "prepare"]


def prepare(rundir: runs.RunDir, fitted: Any, chunk_rows: int) -> dict[str, int]:
    """Transform data/<split>.parquet into prepared/<split>.{x,y}.npy; return rows per split.

    Each split is read and written `chunk_rows` rows at a time; a split's files are renamed
    into place only when complete.
    """
    width = sum(block["width"] for block in fitted.layout)
    y_dtype = np.float32 if fitted.task in ("binary", "regression") else np.int64
    rows = {}
    for split in runs.SPLITS:
        n = rundir.split_rows(split)
        folder = runs.PREPARED.filename
        with rundir.writing(f"{folder}/{split}.x.npy") as x_tmp, \
                rundir.writing(f"{folder}/{split}.y.npy") as y_tmp, \
                NpyWriter(x_tmp, (n, width), np.float32) as xs, \
                NpyWriter(y_tmp, (n,), y_dtype) as ys:
            for frame in rundir.iter_split(split, chunk_rows):
                x, y = fitted.arrays(frame)
                xs.write(x)
                ys.write(y)
        rows[split] = n
    return rows


class NpyWriter:
    """Write an `.npy` file of a known shape block by block (rows along axis 0).

    Example:
        >>> with NpyWriter(path, (3, 2), np.float32) as out:
        ...     out.write(np.zeros((2, 2))); out.write(np.ones((1, 2)))
        >>> np.load(path).tolist()
        [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...],
                 dtype: Any) -> None:
        self.path, self.shape, self.dtype = Path(path), shape, np.dtype(dtype)
        self.rows = 0
        self._handle: Any = None

    def __enter__(self) -> NpyWriter:
        self._handle = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._handle, header)
        return self

    def write(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: block of shape {block.shape}, rows of "
                             f"{self.shape[1:]} expected")
        if self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path.name}: more than {self.shape[0]} rows written")
        self._handle.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._handle.close()
        if error is None and self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} rows written, "
                             f"{self.shape[0]} declared")


class PreparedArray:
    """Rows of one prepared `.npy` file, read by range without loading the file.

    Example:
        >>> xs = PreparedArray(rundir.prepared_file("train", "x"))
        >>> len(xs), xs.shape, xs.read(0, 1024).shape
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RunDirError(f"{self.path} is missing; run `dlpipe features RUN_DIR` on the "
                              f"streaming run first")
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or dtype.hasobject:
            raise RunDirError(f"{self.path}: not a prepared array (Fortran order or objects)")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.shape[0] * self.row_bytes
        if self.path.stat().st_size != expected:
            raise RunDirError(f"{self.path}: {self.path.stat().st_size} bytes, {expected} "
                              f"expected for shape {self.shape}; the file is truncated")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as an array (written into `out` when given, sized to fit)."""
        stop = min(stop, self.shape[0])
        rows = max(stop - start, 0)
        out = np.empty((rows, *self.shape[1:]), dtype=self.dtype) if out is None else out[:rows]
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.offset + start * self.row_bytes)
            view = memoryview(out.reshape(-1).view(np.uint8))
            done = 0
            while done < len(view):
                got = handle.readinto(view[done:])
                if not got:
                    raise RunDirError(f"{self.path}: ended early at row {start}")
                done += got
        return out

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        """The whole array in consecutive blocks of `rows` rows."""
        for start in range(0, self.shape[0], rows):
            yield self.read(start, start + rows)
