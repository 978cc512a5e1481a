"""Text data for the data stage: a folder of `.txt` files per class, and the check every text
column passes (a non-empty string in every row) before the features stage tokenizes it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from dlpipe.errors import DataError

__all__ = ["check_text", "load_text_folder"]

_SUFFIX = ".txt"


def load_text_folder(
    path: str | os.PathLike[str], *, column: str = "text", target: str = "target"
) -> pd.DataFrame:
    """Read one sub-folder per class of UTF-8 `.txt` files into a (text, target) table.

    The layout is the one of Keras' `text_dataset_from_directory`::

        reviews/
          neg/  001.txt  002.txt ...
          pos/  001.txt ...

    Classes are the sub-folder names, sorted; files are read in sorted order within each
    class, so the same folder always gives the same table. Hidden entries (names starting
    with ``.``) and files that do not end in ``.txt`` are ignored.

    Args:
        path: The folder holding one sub-folder per class.
        column: Name of the text column.
        target: Name of the label column (the sub-folder name).

    Returns:
        A DataFrame with columns `column` (str) and `target` (str) and a RangeIndex.

    Raises:
        DataError: naming the path: the folder is missing or not a folder, it has fewer than
            two class folders, a class folder holds no `.txt` file, a file is not valid
            UTF-8, or a file holds only whitespace.

    Example:
        >>> frame = load_text_folder("data/reviews")
        >>> frame.columns.tolist()
        ['text', 'target']
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"text folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"text folder {str(root)!r} is a file; give a folder holding one "
                        f"sub-folder of {_SUFFIX} files per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = ", ".join(p.name for p in classes) or "none"
        raise DataError(f"text folder {str(root)!r} needs one sub-folder per class, at least "
                        f"two; found {len(classes)} ({found})")
    texts: list[str] = []
    labels: list[str] = []
    for folder in classes:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() == _SUFFIX
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"class folder {str(folder)!r} holds no {_SUFFIX} file; every "
                            f"class needs at least one example (or remove the folder)")
        for file in files:
            texts.append(_read_text(file))
            labels.append(folder.name)
    return pd.DataFrame({column: texts, target: labels})


def check_text(series: pd.Series, column: str) -> pd.Series:
    """Check that every value of the text column `column` is a non-empty string.

    Args:
        series: The column's values; its index labels name the rows in the error.
        column: The column's name, for the error.

    Returns:
        `series`, unchanged, so the check can be chained.

    Raises:
        DataError: naming the column, the first bad row (its index label), what it holds,
            and how many rows are bad in all.

    Example:
        >>> check_text(pd.Series(["fine", "  "], index=[10, 11]), "review")
        Traceback (most recent call last):
        ...
        dlpipe.errors.DataError: column 'review', row 11: empty text ...
    """
    values = series.to_numpy(dtype=object)
    is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    bad = ~is_text
    if is_text.any():
        bad[is_text] = np.fromiter((not v.strip() for v in values[is_text]), dtype=bool)
    positions = np.flatnonzero(bad)
    if len(positions) == 0:
        return series
    first = int(positions[0])
    value = values[first]
    if isinstance(value, str):
        what = "empty text" if not value else f"empty text (only whitespace: {value!r})"
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        what = "missing value"
    else:
        what = f"expected a string, got {type(value).__name__} {value!r}"
    count = (f"; {len(positions)} rows in all are empty, missing or not strings"
             if len(positions) > 1 else "")
    label = series.index[first]
    label = label.item() if isinstance(label, np.generic) else label  # 11, not np.int64(11)
    raise DataError(f"column {column!r}, row {label!r}: {what}{count}; a text "
                    f"column needs a non-empty string in every row (drop or fill those rows)")


def _read_text(file: Path) -> str:
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {str(file)!r} is not valid UTF-8 (byte {exc.start}: "
                        f"{exc.reason}); re-save it as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a BOM is an encoding marker, not text
    if not text.strip():
        raise DataError(f"text file {str(file)!r} is empty; remove it or give it text")
    return text
