"""Sampled logging of requests and their predictions to a JSON Lines file.

One line per sampled request: ``{"time", "model", "version", "rows", "predictions"}`` with
the raw rows as received (images as their byte count, not their bytes) and, per row, the
label and class probabilities (or the value). The file is opened for appending and each
batch's lines are written with one `write` and flushed, so a reader (or `tail -f`) sees whole
lines; a log is an append-only stream, not a file replaced atomically.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["RequestLog"]


class RequestLog:
    """Append a `sample_rate` share of requests to `path` (JSON Lines).

    Example:
        >>> log = RequestLog("requests.jsonl", sample_rate=0.1, seed=0)
        >>> log.write(("tiny", "1"), rows, output)
    """

    def __init__(self, path: str | Path, *, sample_rate: float = 1.0,
                 seed: int | None = None) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._random = random.Random(seed)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, labels: tuple[str, str], rows: list[dict[str, Any]] | None,
              output: Any) -> None:
        """Log one request (when sampled): its rows (None for a tensor request) and output."""
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": labels[0],
            "version": labels[1],
            "rows": [_loggable(r) for r in rows] if rows is not None else None,
            "predictions": _predictions(output),
        }
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _loggable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in row.items()}


def _predictions(output: Any) -> list[dict[str, Any]]:
    if output.probabilities is None:
        return [{"value": v} for v in output.labels]
    return [{"label": label, "probabilities": [round(float(p), 6) for p in probs]}
            for label, probs in zip(output.labels, output.probabilities.tolist(), strict=True)]
