"""Read the data stage's table from a file or a bundled data set into a pandas DataFrame.

CSV, Parquet and JSON Lines are read with pyarrow; ``.npz`` holds arrays `X` (or `x`) and
`y`, optionally `feature_names` (an `X` of shape (N, H, W) or (N, H, W, C) is a stack of
images). A folder with one sub-folder per class holds images or `.txt` files. Every error
names the config field `data.source.path`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlpipe._csv import (
    check_decoded,
    config_hint,
    is_utf8,
    not_text_error,
    parse_options,
    read_options,
)
from dlpipe.config import SourceConfig
from dlpipe.errors import DataError

FORMATS = ("csv", "parquet", "jsonl", "npz", "images", "text")
FOLDER_FORMATS = ("images", "text")
IMAGE_COLUMN, TEXT_COLUMN = "image", "text"
"""Input column of a table built from images (folder, arrays) or from a folder of texts."""
_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".npz": "npz",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")  # pyarrow decompresses CSV/JSON by extension
_FIELD = "data.source.path"


def load_table(
    source: SourceConfig | str | os.PathLike[str], format: str = "auto", *,
    encoding: str = "utf-8", sep: str = ",", hint: Callable[[str, str], str] = config_hint,
) -> pd.DataFrame:
    """Read a table from a `SourceConfig` (file or builtin) or straight from a file path.

    Args:
        source: the `data.source` section, or a path.
        format: `auto` (by extension), `csv`, `parquet`, `jsonl` or `npz`; used for paths only.
        encoding: text encoding of a CSV path (a `SourceConfig` carries its own).
        sep: field separator of a CSV path (a `SourceConfig` carries its own).
        hint: how an error says to set a CSV option (`hint('encoding', 'latin-1')`).

    Returns:
        The table with a fresh RangeIndex, so index labels are 0-based row numbers in the file.

    Raises:
        DataError: the file is missing, empty, unreadable, not text in its encoding (naming
            the line and the byte) or of an unknown format.
        ConfigError: bad `params` for a builtin generator.

    Example:
        >>> frame = load_table("data/houses.csv")
    """
    if isinstance(source, SourceConfig):
        if source.builtin is not None:
            from dlpipe.data.builtin import load_builtin

            return load_builtin(source.builtin, source.params)
        path, format, encoding, sep = source.path, source.format, source.encoding, source.sep
    else:
        path = source
    return read_file(Path(str(path)), format, encoding=encoding, sep=sep, hint=hint)


def resolve_format(path: Path, format: str = "auto") -> str:
    """The format of `path`: `format` itself unless `auto`, else from the file's extension."""
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"data.source.format: unknown format {format!r}; known: "
                            f"{', '.join(FORMATS)}")
        return format
    if path.is_dir():
        return _folder_format(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    found = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise DataError(
            f"{_FIELD}: cannot tell the format of {str(path)!r} from its extension; use one of "
            f"{', '.join(sorted(_EXTENSIONS))} or set data.source.format"
        )
    return found


def read_file(path: Path, format: str = "auto", *, encoding: str = "utf-8", sep: str = ",",
              hint: Callable[[str, str], str] = config_hint) -> pd.DataFrame:
    """Read one CSV, Parquet, JSON Lines or .npz file; see `load_table`."""
    if not path.exists():
        raise DataError(f"{_FIELD}: file {str(path)!r} does not exist")
    fmt = resolve_format(path, format)
    if fmt in FOLDER_FORMATS:
        return _read_folder(path, fmt)
    if not path.is_file():
        raise DataError(f"{_FIELD}: {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{_FIELD}: file {str(path)!r} is empty")
    if fmt != "csv" and not is_utf8(encoding):
        raise DataError(f"data.source.encoding: {encoding!r} applies to CSV files; "
                        f"{str(path)!r} is {fmt}")
    if fmt != "csv" and sep != ",":
        raise DataError(f"data.source.sep: {sep!r} applies to CSV files; {str(path)!r} is {fmt}")
    frame = _read_npz(path) if fmt == "npz" else _table_to_frame(
        _read_arrow(path, fmt, encoding, hint, sep), path)
    if frame.shape[1] == 0:
        raise DataError(f"{_FIELD}: file {str(path)!r} has no columns")
    if len(frame) == 0:
        raise DataError(f"{_FIELD}: file {str(path)!r} has no rows (columns: "
                        f"{', '.join(map(str, frame.columns))})")
    return frame


def frame_from_arrays(
    X: Any,
    y: Any,
    feature_names: Sequence[str] | None = None,
    target: str = "target",
) -> pd.DataFrame:
    """Build the stage's table from NumPy arrays handed in from Python.

    Args:
        X: features, shape (N, F); (N,) is one feature. (N, H, W) or (N, H, W, C) is a stack
            of images: the table gets one `image` column (NPY bytes per row); other shapes
            (N, ...) are flattened to (N, F).
        y: targets, shape (N,) or (N, 1).
        feature_names: F column names; default ``x0 .. x{F-1}``.
        target: name of the target column.

    Raises:
        DataError: the shapes or the names do not fit together.

    Example:
        >>> frame = frame_from_arrays(np.random.rand(100, 3), np.arange(100) % 2)
        >>> list(frame.columns)
        ['x0', 'x1', 'x2', 'target']
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 0 or X.shape[0] == 0:
        raise DataError(f"X: expected an array of shape (N, F) with N > 0; got shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"y: expected shape ({len(X)},) to match X's {len(X)} rows; "
                        f"got shape {y.shape}")
    if X.ndim in (3, 4) and feature_names is None:  # (N, H, W[, C]): one image per row
        from dlpipe.data.images import arrays_to_cells

        if target == IMAGE_COLUMN:
            raise DataError(f"target: {target!r} is the image column's name; choose another")
        return pd.DataFrame({IMAGE_COLUMN: arrays_to_cells(X), target: y})
    X = X.reshape(len(X), -1)  # (N, ...) -> (N, F)
    if feature_names is None:
        names = [f"x{i}" for i in range(X.shape[1])]
    else:
        names = [str(n) for n in feature_names]
        if len(names) != X.shape[1]:
            raise DataError(f"feature_names: expected {X.shape[1]} names, one per column of X; "
                            f"got {len(names)}")
        if len(set(names)) != len(names):
            raise DataError(f"feature_names: names must be distinct; got {names}")
    if target in names:
        raise DataError(f"target: {target!r} is also a feature name; choose another target name")
    frame = pd.DataFrame(X, columns=names)
    frame[target] = y
    return frame


def _read_arrow(path: Path, fmt: str, encoding: str = "utf-8",
                hint: Callable[[str, str], str] = config_hint, sep: str = ",") -> Any:
    import pyarrow as pa

    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            # Empty cells in text columns are missing values, as in pandas.read_csv.
            options = pacsv.ConvertOptions(strings_can_be_null=True)
            table = pacsv.read_csv(path, read_options=read_options(encoding),
                                   parse_options=parse_options(sep), convert_options=options)
            check_decoded(path, table.schema, encoding, _FIELD, hint)
            return table
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.json as pajson

        return pajson.read_json(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        if "Empty CSV file" in str(exc):
            raise DataError(f"{_FIELD}: file {str(path)!r} is empty") from None
        if fmt == "csv" and (error := not_text_error(path, encoding, _FIELD, hint)):
            raise error from None
        raise DataError(f"{_FIELD}: cannot read {str(path)!r} as {fmt}: {exc}") from None


def _table_to_frame(table: Any, path: Path) -> pd.DataFrame:
    import pyarrow.types as pat

    for field in table.schema:
        if pat.is_nested(field.type):
            raise DataError(
                f"{_FIELD}: column {field.name!r} of {str(path)!r} holds nested values "
                f"({field.type}); flatten it into plain columns first"
            )
    # Dates become datetime64 so a time column sorts and compares as time.
    return table.to_pandas(date_as_object=False)


def _read_npz(path: Path) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            contents = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{_FIELD}: cannot read {str(path)!r} as npz: {exc}") from None
    x_name = next((n for n in ("X", "x") if n in contents), None)
    if x_name is None or "y" not in contents:
        missing = "array 'X' (or 'x')" if x_name is None else "array 'y'"
        raise DataError(f"{_FIELD}: {str(path)!r} has no {missing}; found: "
                        f"{', '.join(sorted(contents)) or 'nothing'}")
    if contents[x_name].ndim == 0 or len(contents[x_name]) == 0:
        raise DataError(f"{_FIELD}: file {str(path)!r} has no rows (array {x_name!r} is empty)")
    names = contents.get("feature_names")
    try:
        return frame_from_arrays(contents[x_name], contents["y"],
                                 feature_names=None if names is None else names.tolist())
    except DataError as exc:
        raise DataError(f"{_FIELD}: arrays in {str(path)!r} do not fit together: {exc}") from None


def _folder_format(path: Path) -> str:
    """`images` or `text`: what the class sub-folders of `path` hold."""
    from dlpipe.data.images import IMAGE_EXTENSIONS

    suffixes = {f.suffix.lower() for f in path.glob("*/*")
                if f.is_file() and not f.name.startswith(".")}
    if suffixes & set(IMAGE_EXTENSIONS):
        return "images"
    if ".txt" in suffixes:
        return "text"
    raise DataError(
        f"{_FIELD}: {str(path)!r} is a folder, but its sub-folders hold no images "
        f"({', '.join(IMAGE_EXTENSIONS)}) or .txt files; a folder source needs one sub-folder "
        f"per class"
    )


def _read_folder(path: Path, fmt: str) -> pd.DataFrame:
    if not path.is_dir():
        raise DataError(f"{_FIELD}: format {fmt!r} reads a folder with one sub-folder per "
                        f"class; {str(path)!r} is a file")
    if fmt == "images":
        from dlpipe.data.images import load_image_folder

        return load_image_folder(path, column=IMAGE_COLUMN)
    from dlpipe.data.text import load_text_folder

    return load_text_folder(path, column=TEXT_COLUMN)
