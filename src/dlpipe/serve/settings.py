"""`ServeSettings`: every knob of `dlpipe serve`, one typed object (the CLI's options)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServeSettings"]


class ServeSettings(BaseModel):
    """How to serve: where, which graph, batching, limits, monitoring.

    Example:
        >>> settings = ServeSettings(path="runs/quickstart", port=8080, max_batch_size=64)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    path: Path
    """A run directory, an export bundle, or a folder of either."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port; 0 picks a free one."""

    name: str | None = None
    """The model's name in URLs; default the bundle's name (the run's). One bundle only."""

    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    """Which graph to run; a bundle without it falls back to fp32 with a warning."""

    threads: int = Field(default=1, ge=1)
    """ONNX Runtime intra-op threads per model: 1 keeps tail latency low under batching."""

    max_batch_size: int = Field(default=64, ge=1)
    """Most rows in one ONNX Runtime call; a batch this full is released at once."""

    max_delay_ms: float = Field(default=2.0, ge=0)
    """Longest wait, from the first queued request, for a batch to fill."""

    max_queue: int = Field(default=1024, ge=1)
    """Requests waiting per model; one more is refused with 503 and Retry-After."""

    max_rows: int = Field(default=1024, ge=1)
    """Rows in one request (and tensor batch dimension)."""

    max_body_bytes: int = Field(default=1 << 20, ge=1)
    """Request body limit, after decompression; enforced before parsing (413)."""

    timeout_s: float = Field(default=10.0, gt=0)
    """Per-request deadline for queueing plus inference (504 past it)."""

    graceful_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM, how long in-flight requests may take to finish."""

    workers: int = Field(default=1, ge=1)
    """Server processes sharing the port; each loads the models."""

    target_p99_ms: float | None = Field(default=None, gt=0)
    """Tune max_batch_size and max_delay_ms at start-up for this p99 latency."""

    tune_clients: int = Field(default=64, ge=1)
    """Concurrent clients of the start-up load test."""

    tune_seconds: float = Field(default=0.4, gt=0)
    """Duration of each setting's start-up load test."""

    drift_threshold: float = Field(default=0.2, gt=0)
    """PSI above which a feature's drift is logged as an alert (0.1 small, 0.25 large)."""

    drift_window: int = Field(default=10_000, ge=100)
    """Live rows the drift statistics cover (the most recent ones)."""

    drift_min_rows: int = Field(default=200, ge=1)
    """Live rows needed before drift is reported or alerted on."""

    log_requests: Path | None = None
    """JSON Lines file to append sampled requests and their predictions to."""

    log_sample_rate: float = Field(default=1.0, ge=0, le=1)
    """Share of requests written to `log_requests`."""
