"""Keep benchmarks/RESULTS.md as one section per benchmark script, rewritten in place."""

from __future__ import annotations

import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = "# Benchmark results\n\nEach section is rewritten by the script it names.\n"


def write_section(key: str, title: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    stamp = time.strftime("%Y-%m-%d")
    section = f"<!-- {key} -->\n## {title}\n\nMeasured {stamp}; {body}<!-- /{key} -->\n"
    pattern = re.compile(rf"<!-- {key} -->.*?<!-- /{key} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section)
    tmp = RESULTS.with_name(".RESULTS.md.tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)
