"""Check a safetensors file's header before anything reads its tensors.

A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON (one
entry per tensor: `dtype`, `shape`, `data_offsets` [begin, end) into the data that follows,
plus an optional `__metadata__` of strings), then the data. `check_safetensors` verifies all
of it with plain Python — no tensor is built — so a truncated or hand-edited file is refused
with a message that names the tensor and the problem, not a crash deep in a reader.

Example:
    >>> check_safetensors(Path("export/weights.safetensors").read_bytes(), "weights")
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from dlpipe.errors import ExportError

__all__ = ["DTYPE_BYTES", "MAX_HEADER_BYTES", "check_safetensors"]

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
               "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
"""Bytes per element of every dtype the format defines."""

MAX_HEADER_BYTES = 100_000_000
"""The format's own limit on the JSON header (the reference reader refuses larger ones)."""


def check_safetensors(data: bytes, where: str) -> dict[str, Any]:
    """Validate the header of serialized safetensors `data`; return the parsed header.

    Checks: the header length fits in the file (and the format's limit), the header is a
    JSON object, every tensor has a known dtype, a shape of non-negative integers and
    offsets inside the data whose span is exactly shape × dtype size, no two tensors
    overlap, the tensors cover the data with nothing left over, and `__metadata__` maps
    strings to strings.

    Args:
        data: the whole file.
        where: the file's name or path, for error messages.

    Raises:
        ExportError: naming `where`, the tensor and what is wrong.
    """
    if len(data) < 8:
        raise ExportError(f"bundle: {where} is not a safetensors file: {len(data)} bytes, "
                          f"shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ExportError(f"bundle: {where} declares a {n}-byte safetensors header but the "
                          f"file has {len(data) - 8} bytes after the length; it is truncated "
                          f"or corrupt")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ExportError(f"bundle: {where} has a safetensors header that is not valid JSON"
                          ) from None
    if not isinstance(header, dict):
        raise ExportError(f"bundle: {where} has a safetensors header that is not a JSON object")
    size = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(entry, where)
            continue
        spans.append((*_span(name, entry, size, where), name))
    spans.sort()
    end_of_previous, previous = 0, None
    for begin, end, name in spans:
        if begin < end_of_previous:
            raise ExportError(f"bundle: {where}: tensor {name!r} (bytes {begin}-{end}) overlaps "
                              f"tensor {previous!r} (ends at {end_of_previous})")
        if begin > end_of_previous:
            raise ExportError(f"bundle: {where}: {begin - end_of_previous} bytes before tensor "
                              f"{name!r} belong to no tensor")
        end_of_previous, previous = end, name
    if end_of_previous != size:
        raise ExportError(f"bundle: {where}: the tensors cover {end_of_previous} of the "
                          f"{size} data bytes; the rest belongs to no tensor")
    return header


def _span(name: str, entry: Any, size: int, where: str) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes in the data, after checking its entry."""
    at = f"bundle: {where}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ExportError(f"{at} must have exactly dtype, shape and data_offsets; got "
                          f"{entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ExportError(f"{at} has unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise ExportError(f"{at} has shape {shape!r}; expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets))
            or offsets[0] > offsets[1]):
        raise ExportError(f"{at} has data_offsets {offsets!r}; expected [begin, end] with "
                          f"0 <= begin <= end")
    begin, end = offsets
    if end > size:
        raise ExportError(f"{at} has data_offsets {offsets!r} past the end of the data "
                          f"({size} bytes)")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise ExportError(f"{at} spans {end - begin} bytes, but shape {shape} of {dtype} "
                          f"needs {expected}")
    return begin, end


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metadata(metadata: Any, where: str) -> None:
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ExportError(f"bundle: {where}: __metadata__ must map strings to strings")
