"""HTML building blocks of the report: one self-contained page, inline CSS, images embedded as
base64 PNG, no script and no network access.

Every value is escaped unless it is already `Html`. Metric cells carry their exact value in
``data-value`` (and their name in ``data-metric``), so tools and tests can read the numbers
behind the rounded text.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "Html", "cell", "details", "escape", "fmt", "heading", "image", "kv_table", "page",
    "paragraph", "pre", "row", "table",
]


class Html(str):
    """Text that is already HTML (escaped or built here); `escape` leaves it alone."""


def escape(value: Any) -> Html:
    """`value` as HTML text: `Html` unchanged, numbers formatted by `fmt`, the rest escaped."""
    if isinstance(value, Html):
        return value
    if value is None or isinstance(value, bool | int | float):
        return Html(html.escape(fmt(value)))
    return Html(html.escape(str(value)))


def fmt(value: Any) -> str:
    """A number as a person reads it: 4 decimals, or 4 significant digits when very large or
    small; None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4f}"
        return f"{value:.4g}"
    return str(value)


def cell(value: Any, **attrs: Any) -> Html:
    """A table cell with attributes (``data_value=0.97`` → ``data-value="0.97"``)."""
    rendered = "".join(f' {k.replace("_", "-")}="{html.escape(_attr(v))}"'
                       for k, v in attrs.items())
    return Html(f"<td{rendered}>{escape(value)}</td>")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          css: str | None = None) -> Html:
    """A table; a row item that is a `cell(...)` is used as is, any other value escaped."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        items = [v if isinstance(v, Html) and v.startswith("<td") else
                 Html(f"<td>{escape(v)}</td>") for v in row]
        body.append(f"<tr>{''.join(items)}</tr>")
    klass = f' class="{css}"' if css else ""
    return Html(f"<table{klass}><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")


def kv_table(items: Mapping[str, Any]) -> Html:
    """A two-column table of names and values."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                   for k, v in items.items())
    return Html(f'<table class="kv"><tbody>{rows}</tbody></table>')


def image(png: bytes, alt: str, caption: str | None = None) -> Html:
    """A PNG embedded in the page as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    figcaption = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Html(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                f"{figcaption}</figure>")


def details(summary: str, body: Any) -> Html:
    """A collapsed block (config file, long tables)."""
    return Html(f"<details><summary>{escape(summary)}</summary>{escape(body)}</details>")


def row(*parts: str) -> Html:
    """Blocks side by side (wrapping on narrow screens)."""
    return Html(f'<div class="row">{"".join(parts)}</div>')


def pre(text: str) -> Html:
    return Html(f"<pre>{html.escape(text)}</pre>")


def paragraph(text: Any) -> Html:
    return Html(f"<p>{escape(text)}</p>")


def heading(text: str, level: int = 3) -> Html:
    return Html(f"<h{level}>{escape(text)}</h{level}>")


def page(title: str, sections: Sequence[tuple[str, str, Sequence[str]]],
         subtitle: str = "") -> str:
    """The whole document: a title, a table of contents, and `(id, heading, parts)` sections."""
    nav = "".join(f'<a href="#{html.escape(sid)}">{escape(name)}</a>'
                  for sid, name, _ in sections)
    body = "".join(
        f'<section id="{html.escape(sid)}"><h2>{escape(name)}</h2>{"".join(parts)}</section>'
        for sid, name, parts in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><p class=\"sub\">{escape(subtitle)}</p>"
        f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n"
    )


def _attr(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


_CSS = """
:root { --fg: #1d2430; --muted: #5b6473; --line: #d9dee6; --accent: #2b6cb0; --bg: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 18px 32px 10px; background: #fff; border-bottom: 1px solid var(--line);
         position: sticky; top: 0; z-index: 1; }
h1 { margin: 0; font-size: 22px; }
.sub { margin: 2px 0 8px; color: var(--muted); }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 600; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 6px 20px 16px; margin: 18px 0; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
thead th { background: #eef1f5; }
td { font-variant-numeric: tabular-nums; }
table.kv th { background: #f3f5f8; font-weight: 600; }
table.metrics td:not(:first-child) { text-align: right; }
.wide { display: block; overflow-x: auto; max-width: 100%; }
.wide td, .wide th { white-space: nowrap; }
.wide td.text { white-space: normal; min-width: 16em; max-width: 36em; }
td.thumb img { height: 64px; width: auto; image-rendering: pixelated; display: block; }
figure { margin: 8px 0 14px; }
.row { display: flex; flex-wrap: wrap; gap: 0 16px; align-items: flex-start; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12px; }
pre { background: #f3f5f8; padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
code { background: #f3f5f8; padding: 1px 4px; border-radius: 3px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.note { color: var(--muted); }
"""
