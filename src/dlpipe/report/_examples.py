"""The worst-predicted examples of curves.json as a table a person can read: image cells as
small thumbnails decoded from the run's split, text cells as (escaped, shortened) text.

curves.json keeps each row's position in ``data/<split>.parquet`` and, for an image held in
the table, only ``<image, N bytes>``; the thumbnails are decoded from the split itself with
`dlpipe.data.images.decode_image` (a shared module, not a stage). A cell that cannot be read
any more (an image file moved since) shows its stored value instead.

Example:
    >>> parts = worst_examples(rundir, curves)   # [heading, table] or []
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlpipe import runs
from dlpipe.report.html import Html, cell, heading, paragraph, table
from dlpipe.runs import RunDir

__all__ = ["MAX_TEXT", "MAX_THUMBNAILS", "THUMBNAIL_PX", "thumbnail", "worst_examples"]

MAX_THUMBNAILS = 12
"""Most thumbnails in the table (all image columns together); later cells show their value."""

THUMBNAIL_PX = 64
"""Longest side of a thumbnail, in pixels; larger images are shrunk, smaller ones shown
enlarged by the page (pixelated, so an 8x8 digit stays readable)."""

MAX_TEXT = 240
"""Characters of a text cell shown; the rest is cut (and the full text kept in a tooltip)."""


def worst_examples(rundir: RunDir, curves: Mapping[str, Any]) -> list[str]:
    """The heading and table of `curves["worst"]`; [] when curves.json has none."""
    worst = curves.get("worst")
    if not worst or not worst.get("rows"):
        return []
    columns = list(worst.get("columns", []))
    kinds = _kinds(rundir)
    images = [c for c in columns if kinds.get(c) == "image"]
    pictures = _thumbnails(rundir, curves.get("split", "test"), images, worst["rows"])
    loss = "−log p(true)" if worst.get("loss") == "log_loss" else "|error|"
    extra = ["p(true)"] if any("probability_true" in r for r in worst["rows"]) else []
    rows = []
    for r in worst["rows"]:
        values = r.get("values", {})
        rows.append([r["row"], r["true"], r["predicted"], r["loss"],
                     *([r.get("probability_true")] if extra else []),
                     *(_cell(values.get(c), kinds.get(c), pictures.get((r["row"], c)))
                       for c in columns)])
    parts: list[str] = [heading(f"Worst-predicted examples (top {len(rows)} by {loss})"),
                        Html(f'<div class="wide">'
                             f'{table(["row", "true", "predicted", loss, *extra, *columns], rows)}'
                             f"</div>")]
    shown = len(pictures)
    wanted = len(images) * len(worst["rows"])
    if shown < wanted:
        parts.append(paragraph(f"{shown} of {wanted} image cells shown as thumbnails (at most "
                               f"{MAX_THUMBNAILS}, and only images that can still be read)."))
    return parts


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_PX) -> bytes:
    """An (H, W, C) image array (C = 1, 3 or 4, any dtype) as PNG bytes, its longest side at
    most `size` pixels. Integer images other than uint8 and float images are scaled from
    their own min..max to 0..255."""
    from PIL import Image

    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        values = np.nan_to_num(array.astype(np.float64))
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((values - low) * scale).round().astype(np.uint8)
    picture = Image.fromarray(array)
    if max(picture.size) > size:
        picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _kinds(rundir: RunDir) -> dict[str, str]:
    """Column name → kind (numeric, categorical, binary, text, image) from schema.json."""
    if not rundir.has(runs.SCHEMA):
        return {}
    schema = rundir.read_json(runs.SCHEMA)
    return {c["name"]: c.get("kind", "") for c in schema.get("columns", []) if "name" in c}


def _thumbnails(rundir: RunDir, split: str, columns: Sequence[str],
                rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], bytes]:
    """PNG thumbnails of the first `MAX_THUMBNAILS` readable image cells, by (row, column)."""
    path = rundir.split_file(split)
    if not columns or not path.exists():
        return {}
    import pyarrow.parquet as pq

    from dlpipe.data.images import decode_image, describe_cell
    from dlpipe.errors import DlpipeError

    present = [c for c in columns if c in pq.read_schema(path).names]
    if not present:
        return {}
    data = pq.read_table(path, columns=present)
    out: dict[tuple[int, str], bytes] = {}
    for r in rows:
        for name in present:
            if len(out) >= MAX_THUMBNAILS:
                return out
            index = r["row"]
            if not isinstance(index, int) or not 0 <= index < data.num_rows:
                continue
            value = data.column(name)[index].as_py()
            if value is None:
                continue
            try:
                pixels = decode_image(value, where=describe_cell(name, index, value))
                out[(index, name)] = thumbnail(pixels)
            except (DlpipeError, OSError, ValueError, TypeError):
                continue  # moved or unreadable since: the table shows the stored value
    return out


def _cell(value: Any, kind: str | None, png: bytes | None) -> Any:
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(str(value)[:80])
        return Html(f'<td class="thumb"><img src="data:image/png;base64,{data}" '
                    f'alt="{alt}" title="{alt}"></td>')
    if kind == "text" and isinstance(value, str):
        shown = value if len(value) <= MAX_TEXT else value[:MAX_TEXT - 1].rstrip() + "…"
        return cell(shown, **{"class": "text", "title": value[:2000]})
    return value
