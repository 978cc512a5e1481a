"""Reading CSV text the way every reader of dlpipe does (the data stage, streamed or not, and
the predictors): pyarrow options from `encoding` and `sep`, a clear error, naming the file,
the line and the byte, for bytes that are not text in that encoding, and a hint when a
header read as one column looks separated by another character.

pyarrow reads a UTF-8 cell holding invalid bytes as a `binary` column (which would pass for
image bytes) and a header holding them as a name that fails when read, so a table is checked
right after reading; the file is scanned for the first bad byte only when something is off.
Kept free of the stages so that the bundle predictor can use it.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from typing import Any

from dlpipe.errors import DataError

_SCAN_BLOCK = 1 << 20
SEPARATORS = (";", "\t", "|")
"""Separators a header read with another one is checked for (`separator_hint`)."""
_SEP_NAMES = {"\\t": "\t", "tab": "\t"}  # how a tab can be written in YAML or a shell


def is_utf8(encoding: str) -> bool:
    """Whether `encoding` names UTF-8 (`utf-8`, `UTF8`, ...), which pyarrow reads natively.

    Raises:
        DataError: `encoding` is not an encoding Python knows.
    """
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        raise DataError(f"encoding: unknown encoding {encoding!r}; e.g. utf-8, latin-1, "
                        f"cp1252") from None


def read_options(encoding: str = "utf-8", **kwargs: Any) -> Any:
    """`pyarrow.csv.ReadOptions` for text in `encoding` (transcoded unless it is UTF-8)."""
    import pyarrow.csv as pv

    return pv.ReadOptions(encoding="utf8" if is_utf8(encoding) else encoding, **kwargs)


def separator(sep: str) -> str:
    """The one-character field separator `sep` names (``\\t`` and ``tab`` name a tab).

    Raises:
        ValueError: `sep` is not one character.
    """
    sep = _SEP_NAMES.get(sep, sep)
    if len(sep) != 1 or sep in ('"', "\n", "\r"):
        raise ValueError(f"the separator must be one character other than a quote or a line "
                         f"break (',', ';', '\\t', '|'); got {sep!r}")
    return sep


def parse_options(sep: str = ",") -> Any:
    """`pyarrow.csv.ParseOptions` for fields separated by `sep`."""
    import pyarrow.csv as pv

    return pv.ParseOptions(delimiter=separator(sep))


def separator_hint(columns: Any, hint: Callable[[str, str], str]) -> str:
    """'the header has one column 'a;b': is the file separated by ';'? set ...' when the
    table has a single column whose name holds a `SEPARATORS` character; else ''."""
    names = [str(c) for c in columns]
    found = [s for s in SEPARATORS if len(names) == 1 and s in names[0]]
    if not found:
        return ""
    shown = '"\\t"' if found[0] == "\t" else repr(found[0])
    return (f"the header has one column {names[0]!r}: is the file separated by {shown}? "
            f"{hint('sep', found[0])}")


def first_undecodable(path: str | os.PathLike[str], encoding: str = "utf-8"
                      ) -> tuple[int, int] | None:
    """(1-based line, byte value) of the first byte of `path` that is not `encoding` text, or
    None. A compressed file (.gz, .bz2, ...) is decompressed as pyarrow does."""
    import pyarrow as pa

    decoder = codecs.getincrementaldecoder(encoding)()
    newlines = 0  # in the bytes fed to the decoder before this block
    with pa.input_stream(str(path)) as stream:
        while True:
            block = stream.read(_SCAN_BLOCK)
            final = not block
            pending = decoder.getstate()[0]
            try:
                decoder.decode(block, final=final)
            except UnicodeDecodeError as err:
                data = pending + block  # the decoder's positions count its pending bytes
                line = 1 + newlines - pending.count(b"\n") + data[:err.start].count(b"\n")
                return line, data[err.start]
            if final:
                return None
            newlines += block.count(b"\n")


def not_text_error(path: str | os.PathLike[str], encoding: str, where: str,
                   hint: Callable[[str, str], str]) -> DataError | None:
    """The DataError for a file that is not `encoding` text, or None when it is."""
    found = first_undecodable(path, encoding)
    if found is None:
        return None
    line, byte = found
    if is_utf8(encoding):
        fix = f"re-save it as UTF-8 or {hint('encoding', 'latin-1')}"
    else:
        fix = f"is {encoding!r} its encoding? if it is UTF-8, {hint('encoding', 'utf-8')}"
    name = "UTF-8" if is_utf8(encoding) else encoding
    return DataError(f"{where}: {str(path)!r} is not {name} (line {line}, byte 0x{byte:02x}); "
                     f"{fix}")


def check_decoded(path: str | os.PathLike[str], schema: Any, encoding: str, where: str,
                  hint: Callable[[str, str], str]) -> None:
    """Refuse a CSV whose header or cells were not text in `encoding` (pyarrow left them as
    bytes): a DataError naming the file, the line and the byte."""
    import pyarrow.types as pat

    try:
        names = schema.names
    except UnicodeDecodeError:
        names = None
    binary = names is not None and [f.name for f in schema
                                    if pat.is_binary(f.type) or pat.is_large_binary(f.type)]
    if names is not None and not binary:
        return
    error = not_text_error(path, encoding, where, hint)
    if error is not None:
        raise error
    what = f"column {binary[0]!r} holds" if binary else "the header holds"
    raise DataError(f"{where}: {str(path)!r}: {what} bytes that are not text")


def config_hint(option: str, value: str) -> str:
    """How to set a CSV option of the data stage: 'set data.source.encoding: latin-1'."""
    shown = '"\\t"' if value == "\t" else repr(value) if value in SEPARATORS else value
    return f"set data.source.{option}: {shown}"


def predict_hint(option: str, value: str) -> str:
    """How to set a CSV option of the file to predict."""
    shown = "'\\t'" if value == "\t" else repr(value) if value in SEPARATORS else value
    return f"pass --{option} {shown} to dlpipe predict ({option}={value!r} from Python)"
