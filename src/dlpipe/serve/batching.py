"""The micro-batcher: concurrent requests coalesced into one ONNX Runtime call.

Requests wait in a bounded queue; one thread per model takes them out, oldest first, and
releases a batch when it holds `max_batch_size` rows (*full*), `max_delay_ms` after its
first request arrived (*timeout*), or at once when every request the server is handling is
in the batch already, so that no other could join it (*idle*: a lone client waits for
nobody); at shutdown the rest are released at once (*drain*). The thread preprocesses the
whole batch with the bundle's fitted features (one DataFrame, one `transform`), runs ONNX
Runtime (which releases the GIL), turns outputs into labels and probabilities, and hands
every request its own rows back on the event loop in one callback. The event loop only
parses, validates, enqueues and awaits: it never runs inference.

A batch whose preprocessing fails (a row the schema let through, e.g. an unseen category
with ``features.unseen: error``) is preprocessed again request by request, so only the
request at fault gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dlpipe._prediction import prediction_from_scores, scores_from_outputs
from dlpipe.errors import DataError, DlpipeError
from dlpipe.serve.schema import BadRequest, rewrite_data_error

__all__ = ["BatchOutput", "MicroBatcher", "QueueFull"]

log = logging.getLogger("dlpipe.serve")


class QueueFull(DlpipeError, RuntimeError):
    """The model's queue holds `max_queue` requests: answer 503 with Retry-After."""


@dataclass
class BatchOutput:
    """One request's share of a batch."""

    labels: list[Any]
    """(n,) predicted labels, or values for regression."""
    probabilities: np.ndarray | None
    """(n, K) class probabilities; None for regression."""
    raw: np.ndarray
    """(n, out) the graph's raw outputs."""


class _Job:
    __slots__ = ("deadline", "enqueued", "error", "future", "n", "output", "rows", "x")

    def __init__(self, rows: list[dict[str, Any]] | None, x: np.ndarray | None,
                 future: asyncio.Future[BatchOutput], timeout_s: float) -> None:
        self.rows = rows
        self.x = x
        self.n = len(rows) if rows is not None else len(x)  # type: ignore[arg-type]
        self.future = future
        self.enqueued = time.monotonic()
        self.deadline = self.enqueued + timeout_s
        self.error: BaseException | None = None
        self.output: BatchOutput | None = None


class MicroBatcher:
    """Coalesce one model's requests into batches, run them in a thread of its own.

    Args:
        model: a `LoadedModel` (its predictor's session, fitted features, signature).
        labels: (name, version) for the metrics.
        metrics: the app's `Metrics`, or None.
        in_flight: how many requests the server is handling now (None: always wait).
        drift: the model's `DriftMonitor`, or None.
        request_log: a `RequestLog`, or None.

    Example:
        >>> batcher = MicroBatcher(model, max_batch_size=64, max_delay_ms=2)
        >>> batcher.start(asyncio.get_running_loop())
        >>> output = await batcher.submit(rows=[{"age": 41, "color": "red"}])
        >>> batcher.stop()
    """

    def __init__(self, model: Any, *, max_batch_size: int = 64, max_delay_ms: float = 2.0,
                 max_queue: int = 1024, labels: tuple[str, str] = ("model", "1"),
                 metrics: Any = None, drift: Any = None, request_log: Any = None,
                 in_flight: Callable[[], int] | None = None) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay_ms = max_delay_ms
        self.max_queue = max_queue
        self.labels = labels
        self.metrics = metrics
        self.drift = drift
        self.request_log = request_log
        # Requests the server is handling now (HTTP), or None: when the batch holds them all,
        # waiting max_delay_ms could only add latency, so the batch goes (*idle*).
        self.in_flight = in_flight
        predictor = model.predictor
        self.session = predictor.session  # ONNX Runtime; anything with run() and get_inputs()
        self._input = self.session.get_inputs()[0].name
        self._fitted = predictor.fitted
        self._task = predictor.task
        self._threshold = predictor.threshold
        self._target = predictor.signature.get("target")
        self._columns = [c["name"] for c in predictor.signature["columns"]]
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0

    # -- the event loop's side ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the batching thread; results are delivered on `loop`."""
        self._loop = loop
        self._stopping = False
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=f"dlpipe-batcher-{self.labels[0]}")
        self._thread.start()
        self._set_gauges()

    def configure(self, *, max_batch_size: int, max_delay_ms: float) -> None:
        """Change the batching in force (the start-up tuner does)."""
        with self._cond:
            self.max_batch_size, self.max_delay_ms = max_batch_size, max_delay_ms
        self._set_gauges()

    def attach(self, *, metrics: Any = None, drift: Any = None, request_log: Any = None) -> None:
        """Start recording batches in `metrics`, `drift` and `request_log` (after warm-up)."""
        self.metrics, self.drift, self.request_log = metrics, drift, request_log
        self._set_gauges()

    @property
    def depth(self) -> int:
        """Requests waiting."""
        return len(self._queue)

    async def submit(self, *, rows: list[dict[str, Any]] | None = None,
                     x: np.ndarray | None = None, timeout_s: float = 10.0) -> BatchOutput:
        """Queue raw rows (dicts in column order) or a float32 (n, F) model input; await the
        predictions.

        Raises:
            QueueFull: `max_queue` requests are already waiting.
            BadRequest: preprocessing refused the rows (naming the row and column).
            TimeoutError: no answer within `timeout_s`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchOutput] = loop.create_future()
        job = _Job(rows, x, future, timeout_s)
        with self._cond:
            if self._stopping or self._thread is None:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are queued for model "
                                f"{self.labels[0]} (max_queue {self.max_queue})")
            self._queue.append(job)
            self._cond.notify()
        # A timer that cancels the future: cheaper than asyncio.wait_for.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            future.cancel()

        timer = loop.call_later(timeout_s, expire)
        try:
            return await future
        except asyncio.CancelledError:
            if not expired:
                raise  # the request itself was cancelled (client gone, shutdown)
            raise TimeoutError(f"no answer within {timeout_s:g} s ({self.depth} requests "
                               f"queued); retry later") from None
        finally:
            timer.cancel()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Release what is queued (reason *drain*), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # -- the batching thread -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request waiting and no batch running or being recorded."""
        return not self._queue and not self._busy

    def _work(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                self._busy = True
            jobs, reason = self._collect()
            if jobs:
                self._run(jobs, reason)

    def _collect(self) -> tuple[list[_Job], str]:
        """Take jobs until the batch is full, the first job has waited max_delay_ms, or no
        other request is in the server that could join it."""
        jobs: list[_Job] = []
        rows = 0
        with self._cond:
            limit = self.max_batch_size
            release_at = self._queue[0].enqueued + self.max_delay_ms / 1e3
            while True:
                while self._queue and (not jobs or rows + self._queue[0].n <= limit):
                    job = self._queue.popleft()
                    if job.future.cancelled() or time.monotonic() > job.deadline:
                        continue  # its client has been answered 504 already
                    jobs.append(job)
                    rows += job.n
                if rows >= limit or (self._queue and jobs):
                    reason = "full"
                    break
                if self._stopping:
                    reason = "drain"
                    break
                if self.in_flight is not None and len(jobs) >= self.in_flight():
                    reason = "idle"  # every request in the server is in this batch already
                    break
                remaining = release_at - time.monotonic()
                if remaining <= 0:
                    reason = "timeout"
                    break
                self._cond.wait(remaining)
            if self.metrics is not None:
                self.metrics.queue_depth.labels(*self.labels).set(len(self._queue))
        return jobs, reason

    def _run(self, jobs: list[_Job], reason: str) -> None:
        # Where this batch is recorded, fixed now: `attach` may run while it is delivered.
        sinks = (self.metrics, self.drift, self.request_log)
        start = time.perf_counter()
        try:
            frame = self._prepare(jobs)
            ready = [j for j in jobs if j.error is None]
            if ready:
                x = np.concatenate([j.x for j in ready]) if len(ready) > 1 else ready[0].x
                done = time.perf_counter()
                raw = self.session.run(None, {self._input: x})[0].astype(np.float32)  # (B, out)
                end = time.perf_counter()
                prediction = self._predict(raw)
                self._split(ready, raw, prediction)
        except Exception as exc:  # a bug, not the client's fault: every request gets a 500
            log.exception("batch of %d requests failed", len(jobs))
            for job in jobs:
                if job.error is None:
                    job.error = exc
            ready = []
        self._deliver(jobs)
        self.batches += 1
        if ready:
            self._record(sinks, jobs, ready, reason, frame, prediction,
                         (done - start, end - done))

    def _prepare(self, jobs: Sequence[_Job]) -> pd.DataFrame | None:
        """Set each job's model input `x` (or its error); return the raw rows' frame."""
        raw = [j for j in jobs if j.rows is not None]
        if not raw:
            return None
        try:
            frame = self._frame([r for j in raw for r in j.rows])  # type: ignore[union-attr]
            x = self._transform(frame)  # (N, F)
        except (DataError, ValueError, TypeError):
            return self._prepare_one_by_one(raw)
        start = 0
        for job in raw:
            job.x = x[start:start + job.n]
            start += job.n
        return frame

    def _prepare_one_by_one(self, jobs: Sequence[_Job]) -> pd.DataFrame | None:
        frames = []
        for job in jobs:
            try:
                frame = self._frame(job.rows)  # type: ignore[arg-type]
                job.x = self._transform(frame)
                frames.append(frame)
            except (DataError, ValueError, TypeError) as exc:
                job.error = BadRequest(rewrite_data_error(str(exc)))
        return pd.concat(frames, ignore_index=True) if frames else None

    def _frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame(rows, columns=self._columns)
        return self._fitted.validate_input(frame, target=self._target)

    def _transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The model input of validated rows; a row whose input is not finite (a number too
        large for float32 once scaled) is the client's error."""
        with np.errstate(over="ignore", invalid="ignore"):
            x = self._fitted.transform(frame)  # (N, F) float32
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            values = frame.iloc[row]
            large = [c for c in frame.columns if isinstance(values[c], int | float)
                     and not isinstance(values[c], bool) and abs(values[c]) > 1e30]
            where = f"rows[{row}].{large[0]}" if large else f"rows[{row}]"
            raise DataError(f"{where}: too large for the model: its preprocessed value is not "
                            f"a finite float32; send values of a plausible magnitude")
        return x

    def _predict(self, raw: np.ndarray) -> Any:
        """Labels and probabilities of raw outputs (B, out), as `OnnxPredictor.predict`."""
        scores = scores_from_outputs(self._task, raw)
        return prediction_from_scores(self._task, scores, self._fitted.target, self._threshold)

    def _split(self, jobs: Sequence[_Job], raw: np.ndarray, prediction: Any) -> None:
        labels = prediction.labels.tolist()
        start = 0
        for job in jobs:
            end = start + job.n
            probabilities = (prediction.probabilities[start:end]
                             if prediction.probabilities is not None else None)
            job.output = BatchOutput(labels[start:end], probabilities, raw[start:end])
            start = end

    def _deliver(self, jobs: Sequence[_Job]) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            self._loop.call_soon_threadsafe(_settle, [(j.future, j.output, j.error) for j in jobs])

    def _record(self, sinks: tuple[Any, Any, Any], jobs: Sequence[_Job],
                ready: Sequence[_Job], reason: str, frame: pd.DataFrame | None,
                prediction: Any, seconds: tuple[float, float]) -> None:
        """Metrics, drift and the request log: after the answers are on their way."""
        metrics, drift, request_log = sinks
        rows = sum(j.n for j in ready)
        if metrics is not None:
            labels = self.labels
            metrics.batch_size.labels(*labels).observe(rows)
            metrics.batch_requests.labels(*labels).observe(len(jobs))
            metrics.batches.labels(*labels, reason).inc()
            metrics.preprocess.labels(*labels).observe(seconds[0])
            metrics.inference.labels(*labels).observe(seconds[1])
            counts = (Counter(map(str, prediction.labels.tolist()))
                      if self._task != "regression" else {"": rows})
            for value, count in counts.items():
                metrics.predictions.labels(*labels, value).inc(count)
        if drift is not None:
            # Raw rows first, in the frame's order, then the tensor requests' predictions.
            labels_ = [v for j in ready if j.rows is not None for v in j.output.labels]
            labels_ += [v for j in ready if j.rows is None for v in j.output.labels]
            drift.update(frame, labels_)
        if request_log is not None:
            for job in ready:
                request_log.write(self.labels, job.rows, job.output)

    def _set_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.max_batch.labels(*self.labels).set(self.max_batch_size)
            self.metrics.max_delay.labels(*self.labels).set(self.max_delay_ms / 1e3)


def _settle(results: list[tuple[asyncio.Future[BatchOutput], BatchOutput | None,
                                BaseException | None]]) -> None:
    for future, output, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(output)  # type: ignore[arg-type]
