"""`--target-p99-ms`: choose max_batch_size and max_delay_ms with a short load test at start-up.

Each candidate setting gets `seconds` of closed-loop load from `clients` concurrent in-process
clients (one row per request, the model's example row) through the real batcher:
queueing, preprocessing, ONNX Runtime and post-processing, but not HTTP. Because HTTP parsing
and the response add to every request's latency and queue, a setting qualifies when its p99
is within half the target (`HTTP_SHARE` kept for the HTTP layer); the qualifying setting
with the highest throughput wins, or, when none qualifies, the one with the lowest p99.
The choice, and every measurement behind it, is logged and returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

__all__ = ["CANDIDATES", "HTTP_SHARE", "load_test", "tune_batching"]

log = logging.getLogger("dlpipe.serve")

# (max_batch_size, max_delay_ms), from no batching to large batches with a long wait.
CANDIDATES = ((1, 0.0), (8, 0.5), (16, 1.0), (32, 1.0), (32, 2.0), (64, 2.0), (64, 5.0),
              (128, 5.0), (128, 10.0))
HTTP_SHARE = 0.5  # the share of the target p99 left for HTTP parsing and responses


async def load_test(batcher: Any, rows: list[dict[str, Any]] | None, *, clients: int,
                    seconds: float, timeout_s: float = 10.0) -> dict[str, Any]:
    """Closed-loop load on `batcher`: throughput, p50 / p99 latency, errors."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    latencies: list[float] = []
    errors = 0
    x = None
    if rows is None:
        x = np.zeros((1, batcher.model.predictor.signature["input"]["shape"][1]), np.float32)

    async def client() -> None:
        nonlocal errors
        while loop.time() < stop_at:
            start = time.perf_counter()
            try:
                await batcher.submit(rows=rows, x=x, timeout_s=timeout_s)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "errors": errors}


async def tune_batching(batcher: Any, rows: list[dict[str, Any]] | None, *,
                        target_p99_ms: float, clients: int = 64, seconds: float = 0.4,
                        timeout_s: float = 10.0) -> dict[str, Any]:
    """Try `CANDIDATES` on `batcher`, configure it with the best, and report.

    Returns:
        ``{"target_p99_ms", "clients", "met", "chosen": {"max_batch_size", "max_delay_ms"},
        "trials": [{"max_batch_size", "max_delay_ms", "rps", "p50_ms", "p99_ms",
        "errors"}, ...]}``.
    """
    trials = []
    for size, delay in CANDIDATES:
        if size > max(clients, 1) * 2 and trials:
            break  # batches this large cannot fill with so few clients
        batcher.configure(max_batch_size=size, max_delay_ms=delay)
        result = await load_test(batcher, rows, clients=clients, seconds=seconds,
                                 timeout_s=timeout_s)
        trials.append({"max_batch_size": size, "max_delay_ms": delay, **result})
    budget = target_p99_ms * HTTP_SHARE
    qualified = [t for t in trials if t["p99_ms"] is not None and not t["errors"]
                 and t["p99_ms"] <= budget]
    measured = [t for t in trials if t["p99_ms"] is not None]
    best = (max(qualified, key=lambda t: t["rps"]) if qualified
            else min(measured, key=lambda t: t["p99_ms"]) if measured else trials[0])
    batcher.configure(max_batch_size=best["max_batch_size"], max_delay_ms=best["max_delay_ms"])
    report = {"target_p99_ms": target_p99_ms, "clients": clients, "met": bool(qualified),
              "chosen": {"max_batch_size": best["max_batch_size"],
                         "max_delay_ms": best["max_delay_ms"]}, "trials": trials}
    log.info("batching tuned for p99 <= %g ms with %d clients: max_batch_size %d, "
             "max_delay_ms %g (in-process %.0f req/s, p99 %.2f ms%s)", target_p99_ms, clients,
             best["max_batch_size"], best["max_delay_ms"], best["rps"], best["p99_ms"] or 0,
             "" if qualified else f"; no setting met {budget:g} ms in-process, lowest p99 kept")
    for t in trials:
        log.debug("  tried %s", t)
    return report
