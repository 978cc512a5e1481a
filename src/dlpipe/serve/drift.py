"""Drift of live inputs and predictions against the training reference, as a PSI per feature.

The reference is the training split's distribution of each column (`export/reference.py`,
stored in the bundle's data_profile.json). Live rows are counted in the same bins plus two
more, *unseen* (a category never seen in training) and *missing*, over a sliding window of
the most recent rows (ten chunks; the oldest chunk is dropped as a new one fills). The
population stability index of a feature is

    PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i)     (shares floored at 1e-4)

read as: < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a large one. Counting is vectorized
(`searchsorted` / `Index.get_indexer` + `bincount`), once per released batch, in the batcher
thread; the PSI is computed when read (`snapshot`) and at most once a second for alerts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DriftMonitor", "psi"]

_FLOOR = 1e-4  # a share of 0 would make ln() infinite; 1e-4 is the usual floor
log = logging.getLogger("dlpipe.serve")


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """The population stability index of the live counts against the reference shares."""
    total = live.sum()
    if total <= 0:
        return 0.0
    ref = np.clip(np.asarray(reference, dtype=np.float64), _FLOOR, None)
    now = np.clip(live / total, _FLOOR, None)
    return float(np.sum((now - ref) * np.log(now / ref)))


class _Binner:
    """Counts one column's values into the reference's bins + unseen + missing."""

    def __init__(self, name: str, entry: Mapping[str, Any]) -> None:
        self.name = name
        self.kind = entry["kind"]
        missing = float(entry.get("missing", 0.0))
        fractions = np.asarray(entry["fractions"], dtype=np.float64) * (1.0 - missing)
        if self.kind in ("categorical", "binary"):
            self.index = pd.Index(list(entry["categories"]), dtype=object)
            self.edges = None
            # [categories..., unseen, missing]
            self.reference = np.concatenate([fractions, [0.0, missing]])
        else:
            self.index = None
            self.edges = np.asarray(entry["edges"], dtype=np.float64)
            # [bins..., unseen (never: a number always has a bin), missing]
            self.reference = np.concatenate([fractions, [0.0, missing]])
        self.size = len(self.reference)

    def count(self, values: pd.Series) -> np.ndarray:
        missing = values.isna().to_numpy()
        slots = np.full(len(values), self.size - 1, dtype=np.int64)
        present = ~missing
        if present.any():
            kept = values[present]
            if self.index is not None:
                codes = self.index.get_indexer(kept.astype(object))
                slots[present] = np.where(codes < 0, self.size - 2, codes)
            else:
                if self.kind == "text":
                    numbers = kept.astype(str).str.len().to_numpy(dtype=np.float64)
                else:
                    numbers = pd.to_numeric(kept, errors="coerce").to_numpy(dtype=np.float64)
                slots[present] = np.searchsorted(self.edges, numbers, side="right")
        return np.bincount(slots, minlength=self.size)


class DriftMonitor:
    """Running distributions of one model's live inputs and predictions, and their PSI.

    Args:
        reference: the bundle's drift reference (``data_profile.json["reference"]``); None
            when the bundle has none (then only prediction counts are kept).
        window: live rows covered (the most recent ones).
        min_rows: rows needed before a PSI is reported or alerted on.
        threshold: PSI above which an alert is logged (once per crossing).

    Example:
        >>> monitor = DriftMonitor(reference, model="tiny")
        >>> monitor.update(frame, labels)
        >>> monitor.snapshot()["features"]["age"]["psi"]
    """

    def __init__(self, reference: Mapping[str, Any] | None, *, model: str = "model",
                 window: int = 10_000, min_rows: int = 200, threshold: float = 0.2) -> None:
        self.model = model
        self.window = window
        self.min_rows = min_rows
        self.threshold = threshold
        self.available = reference is not None
        columns = (reference or {}).get("columns", {})
        self._binners = [_Binner(name, entry) for name, entry in columns.items()
                         if entry.get("kind") != "image" and "fractions" in entry]
        target = (reference or {}).get("target")
        self._target = _Binner("prediction", target) if target else None
        self._chunk_rows = max(window // 10, 1)
        self._chunks: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._alerting: set[str] = set()
        self._checked = 0.0

    def update(self, frame: pd.DataFrame | None, predictions: Sequence[Any] | None) -> None:
        """Count a batch: raw input rows (None for tensor requests) and their predictions."""
        counts: dict[str, np.ndarray] = {}
        n = 0
        if frame is not None and len(frame):
            n = len(frame)
            for binner in self._binners:
                if binner.name in frame.columns:
                    counts[binner.name] = binner.count(frame[binner.name])
        if self._target is not None and predictions is not None and len(predictions):
            counts["prediction"] = self._target.count(pd.Series(list(predictions), dtype=object)
                                                      if self._target.index is not None
                                                      else pd.Series(predictions))
        if not counts:
            return
        with self._lock:
            if not self._chunks or self._chunks[-1]["rows"] >= self._chunk_rows:
                self._chunks.append({"rows": 0, "predicted": 0, "counts": {}})
                # Old chunks plus the new one's rows stay within the window.
                while sum(c["rows"] for c in self._chunks) > self.window - self._chunk_rows:
                    self._chunks.popleft()
            chunk = self._chunks[-1]
            chunk["rows"] += n
            chunk["predicted"] += len(predictions) if predictions is not None else 0
            for name, value in counts.items():
                old = chunk["counts"].get(name)
                chunk["counts"][name] = value if old is None else old + value
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self._alert()

    def totals(self) -> tuple[int, dict[str, np.ndarray]]:
        """(live rows, name → counts) over the window."""
        with self._lock:
            chunks = list(self._chunks)
            rows = sum(c["rows"] for c in chunks)
            summed: dict[str, np.ndarray] = {}
            for chunk in chunks:
                for name, value in chunk["counts"].items():
                    summed[name] = summed[name] + value if name in summed else value.copy()
        return rows, summed

    def snapshot(self) -> dict[str, Any]:
        """The drift report: per feature PSI, unseen and missing rates; prediction PSI."""
        rows, counts = self.totals()
        enough = rows >= self.min_rows
        features: dict[str, Any] = {}
        for binner in self._binners:
            live = counts.get(binner.name)
            seen = int(live.sum()) if live is not None else 0
            value = psi(binner.reference, live) if live is not None and enough else None
            features[binner.name] = {
                "kind": binner.kind,
                "psi": value,
                "alert": value is not None and value > self.threshold,
                "unseen_rate": (float(live[-2] / seen) if seen else None)
                if binner.index is not None else None,
                "missing_rate": float(live[-1] / seen) if seen else None,
                "reference_missing_rate": float(binner.reference[-1]),
            }
        prediction = None
        if self._target is not None:
            live = counts.get("prediction")
            seen = int(live.sum()) if live is not None else 0
            prediction = {"psi": psi(self._target.reference, live)
                          if live is not None and seen >= self.min_rows else None,
                          "rows": seen}
            if self._target.index is not None and live is not None and seen:
                prediction["distribution"] = {
                    str(c): float(live[i] / seen) for i, c in enumerate(self._target.index)}
                prediction["reference"] = {
                    str(c): float(self._target.reference[i])
                    for i, c in enumerate(self._target.index)}
        return {"available": self.available, "rows": rows, "window": self.window,
                "min_rows": self.min_rows, "threshold": self.threshold,
                "features": features, "prediction": prediction}

    def _alert(self) -> None:
        report = self.snapshot()
        for name, entry in report["features"].items():
            if entry["alert"] and name not in self._alerting:
                self._alerting.add(name)
                log.warning("drift alert: model %s, feature %r: PSI %.3f > %.3g over the last "
                            "%d rows (unseen %s, missing %s)", self.model, name, entry["psi"],
                            self.threshold, report["rows"], _rate(entry["unseen_rate"]),
                            _rate(entry["missing_rate"]))
            elif not entry["alert"] and name in self._alerting and entry["psi"] is not None:
                self._alerting.discard(name)
                log.info("drift back under the threshold: model %s, feature %r: PSI %.3f",
                         self.model, name, entry["psi"])


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"
