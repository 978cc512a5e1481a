"""What the server holds for each model, and its start-up: load, warm up, tune, then ready.

The server binds its port first and loads afterwards, in the background, so liveness is true
at once and readiness only once every model is loaded, warmed up (a batch of one row and a
full batch through the real path) and, with `--target-p99-ms`, its batching tuned.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from typing import Any

from dlpipe.errors import DlpipeError
from dlpipe.serve.batching import MicroBatcher
from dlpipe.serve.drift import DriftMonitor
from dlpipe.serve.monitoring import Metrics
from dlpipe.serve.repository import BundleSource, LoadedModel, load_model
from dlpipe.serve.requestlog import RequestLog
from dlpipe.serve.schema import ModelSchemas, build_schemas
from dlpipe.serve.settings import ServeSettings

__all__ = ["ModelNotFound", "NotReady", "Served", "ServerState"]

log = logging.getLogger("dlpipe.serve")


class ModelNotFound(DlpipeError, LookupError):
    """No served model has that name (or version): 404."""


class NotReady(DlpipeError, RuntimeError):
    """The model is still loading (or failed to load): 503."""


@dataclass
class Served:
    """One served bundle: its request models, and once loaded its batcher and drift."""

    source: BundleSource
    schemas: ModelSchemas
    drift: DriftMonitor | None = None
    model: LoadedModel | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    error: str | None = None
    tuning: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> str:
        return self.source.version

    def require_ready(self) -> MicroBatcher:
        if not self.ready or self.batcher is None:
            why = f"failed to load: {self.error}" if self.error else "is loading"
            raise NotReady(f"model {self.name} version {self.version} {why}")
        return self.batcher


class ServerState:
    """Every served model, by name and version, and the shared metrics and request log."""

    def __init__(self, settings: ServeSettings, sources: list[BundleSource]) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.request_log = (RequestLog(settings.log_requests,
                                       sample_rate=settings.log_sample_rate)
                            if settings.log_requests else None)
        self.models: list[Served] = []
        for source in sources:
            title = _title(source.name, source.version, len(sources) > 1)
            self.models.append(Served(source, build_schemas(
                source.signature, title=title, max_rows=settings.max_rows)))
        self.metrics.add_drift_source(self._drift_reports)
        self._loading: asyncio.Task[None] | None = None
        self.freeze_gc = False
        """Freeze the GC's view of the heap once loaded (set by `dlpipe serve`, not in tests)."""

    @property
    def names(self) -> list[str]:
        return sorted({m.name for m in self.models})

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models)

    def find(self, name: str, version: str | None = None) -> Served:
        """The model `name` at `version` (default: the newest).

        Raises:
            ModelNotFound: naming the models (or versions) served.
        """
        matches = [m for m in self.models if m.name == name]
        if not matches:
            raise ModelNotFound(f"no model named {name!r}; serving {', '.join(self.names)}")
        if version is None:
            return matches[0]
        for served in matches:
            if served.version == version:
                return served
        raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: "
                            f"{', '.join(m.version for m in matches)}")

    def versions(self, name: str) -> list[str]:
        return [m.version for m in self.models if m.name == name]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading every model in the background (call from the running loop)."""
        self._loading = asyncio.get_running_loop().create_task(self._load_all())

    async def stop(self) -> None:
        """Stop loading, drain every batcher, close the request log."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        for served in self.models:
            served.ready = False
            if served.batcher is not None:
                await asyncio.to_thread(served.batcher.stop, self.settings.graceful_timeout_s)
        if self.request_log is not None:
            self.request_log.close()

    async def wait_loaded(self) -> None:
        """Wait for the background loading to finish (tests, the CLI's report)."""
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def _load_all(self) -> None:
        for served in self.models:
            try:
                await self._load(served)
            except Exception as exc:  # keep serving the others; readiness stays false
                served.error = str(exc)
                log.error("model %s version %s failed to load: %s", served.name, served.version,
                          exc, exc_info=not isinstance(exc, DlpipeError))
        if self.freeze_gc:
            # Everything loaded so far lives as long as the server: out of the cyclic GC's
            # sight, a full collection no longer walks it (pauses of tens of ms under load).
            gc.collect()
            gc.freeze()

    async def _load(self, served: Served) -> None:
        s, labels = self.settings, (served.name, served.version)
        model = await asyncio.to_thread(load_model, served.source, precision=s.precision,
                                        threads=s.threads)
        served.model, served.notes = model, list(model.notes)
        served.drift = DriftMonitor(model.reference, model=served.name, window=s.drift_window,
                                    min_rows=s.drift_min_rows, threshold=s.drift_threshold)
        batcher = MicroBatcher(model, max_batch_size=s.max_batch_size,
                               max_delay_ms=s.max_delay_ms, max_queue=s.max_queue,
                               labels=labels)
        batcher.start(asyncio.get_running_loop())
        served.batcher = batcher
        loop = asyncio.get_running_loop()
        start = loop.time()
        rows = await warm_up(batcher, served.schemas, s.max_batch_size)
        if s.target_p99_ms is not None:
            from dlpipe.serve.autotune import tune_batching

            served.tuning = await tune_batching(
                batcher, rows, target_p99_ms=s.target_p99_ms, clients=s.tune_clients,
                seconds=s.tune_seconds, timeout_s=s.timeout_s)
        # Warm-up and tuning traffic stays out of the metrics, the drift and the log.
        batcher.attach(metrics=self.metrics, drift=served.drift, request_log=self.request_log)
        batcher.in_flight = lambda: self.metrics.in_flight
        seconds = model.load_seconds + (loop.time() - start)
        self.metrics.load_seconds.labels(*labels, model.variant).set(seconds)
        self.metrics.ready.labels(*labels).set(1)
        served.ready = True
        log.info("model %s version %s ready: %s graph, loaded and warmed up in %.2f s, "
                 "max_batch_size %d, max_delay_ms %g", served.name, served.version,
                 model.variant, seconds, batcher.max_batch_size, batcher.max_delay_ms)

    def _drift_reports(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        return [((m.name, m.version), m.drift.snapshot()) for m in self.models
                if m.drift is not None and m.drift.available]


async def warm_up(batcher: MicroBatcher, schemas: ModelSchemas, size: int
                  ) -> list[dict[str, Any]] | None:
    """Run one row and one full batch through the batcher; return the example row used
    (None when the signature's example cannot be preprocessed: then zeros tensors)."""
    example = schemas.request.model_json_schema().get("examples", [{}])[0]
    try:
        rows = schemas.request.model_validate(example).rows  # type: ignore[attr-defined]
        await batcher.submit(rows=rows, timeout_s=60)
        await batcher.submit(rows=rows * size, timeout_s=60)
        return rows
    except Exception as exc:
        log.info("warm-up with an example row failed (%s); warming up with zeros", exc)
    import numpy as np

    width = batcher.model.predictor.signature["input"]["shape"][1]
    for n in (1, size):
        await batcher.submit(x=np.zeros((n, width), dtype=np.float32), timeout_s=60)
    return None


def _title(name: str, version: str, versioned: bool) -> str:
    """A name for the generated models in OpenAPI: `Tiny`, or `Tiny_10e4...` for several."""
    words = "".join(part[:1].upper() + part[1:] for part in name.replace(".", "_").split("_")
                    if part)
    title = f"{words}_{version}" if versioned else words
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in title) or "Model"
