"""Prometheus metrics of the server (prometheus-client), one registry per app.

Every metric is named ``dlpipe_*``; model metrics carry ``model`` and ``version`` labels::

    dlpipe_requests_total{route, method, status}        requests answered
    dlpipe_request_duration_seconds{route}               latency histogram
    dlpipe_batch_size{model, version}                    rows per ONNX Runtime call
    dlpipe_batch_requests{model, version}                requests per call
    dlpipe_batches_total{model, version, reason}         why each batch was released:
                                                         full | timeout | idle | drain
    dlpipe_queue_depth{model, version}                   requests waiting for a batch
    dlpipe_preprocess_seconds / dlpipe_inference_seconds preprocessing / ONNX Runtime time
    dlpipe_model_load_seconds{model, version, precision} load + warm-up time
    dlpipe_model_ready{model, version}                   1 once loaded and warmed up
    dlpipe_batch_max_size / dlpipe_batch_max_delay_seconds   the batching in force
    dlpipe_predictions_total{model, version, class}      predictions by class
    dlpipe_drift_psi{model, version, feature}            PSI against the training data
    dlpipe_drift_unseen_rate / dlpipe_drift_missing_rate  per feature, over the window
    dlpipe_drift_rows{model, version}                    live rows the drift covers
    dlpipe_prediction_psi{model, version}                drift of the predictions

With several worker processes (`--workers`), counters and histograms are summed over the
workers through prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``); the
drift gauges are those of the worker that answers the scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_MODEL = ("model", "version")


class Metrics:
    """The server's metrics, registered in their own registry (so apps never collide)."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `_created` series next to every counter
        self.in_flight = 0
        """HTTP requests being handled now (kept by `RequestMetrics`; read by the batchers)."""
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dlpipe_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("dlpipe_request_duration_seconds",
                                 "Time from request to response.", ["route"],
                                 buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("dlpipe_batch_size", "Rows per ONNX Runtime call.", _MODEL,
                                    buckets=_SIZES, registry=r)
        self.batch_requests = Histogram("dlpipe_batch_requests", "Requests per batch.", _MODEL,
                                        buckets=_SIZES, registry=r)
        self.batches = Counter("dlpipe_batches", "Batches released, by reason: full (reached "
                               "max_batch_size), timeout (max_delay_ms passed), idle (no other "
                               "request in the server), drain (shutdown).", [*_MODEL, "reason"],
                               registry=r)
        self.queue_depth = Gauge("dlpipe_queue_depth", "Requests waiting for a batch.", _MODEL,
                                 multiprocess_mode="livesum", registry=r)
        self.preprocess = Histogram("dlpipe_preprocess_seconds",
                                    "Preprocessing time of a batch.", _MODEL,
                                    buckets=_LATENCY, registry=r)
        self.inference = Histogram("dlpipe_inference_seconds", "ONNX Runtime time of a batch.",
                                   _MODEL, buckets=_LATENCY, registry=r)
        self.load_seconds = Gauge("dlpipe_model_load_seconds",
                                  "Time to load and warm up the model.",
                                  [*_MODEL, "precision"], multiprocess_mode="max", registry=r)
        self.ready = Gauge("dlpipe_model_ready", "1 once the model is loaded and warmed up.",
                           _MODEL, multiprocess_mode="min", registry=r)
        self.max_batch = Gauge("dlpipe_batch_max_size", "max_batch_size in force.", _MODEL,
                               multiprocess_mode="max", registry=r)
        self.max_delay = Gauge("dlpipe_batch_max_delay_seconds", "max_delay_ms in force.",
                               _MODEL, multiprocess_mode="max", registry=r)
        self.predictions = Counter("dlpipe_predictions", "Predictions by class (empty for "
                                   "regression).", [*_MODEL, "class"], registry=r)
        self._drift: list[Callable[[], Iterable[tuple[tuple[str, str], dict[str, Any]]]]] = []
        self.registry.register(_DriftCollector(self._drift))

    def add_drift_source(self, source: Callable[[], Iterable[tuple[tuple[str, str],
                                                                    dict[str, Any]]]]) -> None:
        """Register a callable yielding ((model, version), drift snapshot) pairs."""
        self._drift.append(source)

    def exposition(self) -> bytes:
        """The text exposition format of every metric (all workers' in multiprocess mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_DriftCollector(self._drift))
        return generate_latest(registry)


class _DriftCollector(Collector):
    """Drift gauges, computed from the monitors when scraped."""

    def __init__(self, sources: list[Callable[[], Iterable[tuple[tuple[str, str],
                                                                 dict[str, Any]]]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily("dlpipe_drift_psi", "Population stability index of a feature "
                                "against the training data.", labels=labels)
        unseen = GaugeMetricFamily("dlpipe_drift_unseen_rate", "Share of live values of a "
                                   "categorical feature never seen in training.", labels=labels)
        missing = GaugeMetricFamily("dlpipe_drift_missing_rate", "Share of missing live values "
                                    "of a feature.", labels=labels)
        rows = GaugeMetricFamily("dlpipe_drift_rows", "Live rows the drift statistics cover.",
                                 labels=["model", "version"])
        prediction = GaugeMetricFamily("dlpipe_prediction_psi", "Population stability index "
                                       "of the predictions against the training target.",
                                       labels=["model", "version"])
        for source in self.sources:
            for (model, version), report in source():
                rows.add_metric([model, version], report["rows"])
                for feature, entry in report["features"].items():
                    key = [model, version, feature]
                    if entry["psi"] is not None:
                        psi.add_metric(key, entry["psi"])
                    if entry["unseen_rate"] is not None:
                        unseen.add_metric(key, entry["unseen_rate"])
                    if entry["missing_rate"] is not None:
                        missing.add_metric(key, entry["missing_rate"])
                if report["prediction"] and report["prediction"]["psi"] is not None:
                    prediction.add_metric([model, version], report["prediction"]["psi"])
        yield from (psi, unseen, missing, rows, prediction)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
