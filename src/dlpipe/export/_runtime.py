"""ONNX Runtime helpers shared by export, compress and the bundle loader; no torch here.

The optional packages are imported inside the functions, so `import dlpipe.export` stays light
and a missing one is a `DlpipeError` naming the install command.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlpipe.errors import DlpipeError

INSTALL = "pip install 'dlpipe[onnx]'"


def require_onnx(what: str = "ONNX export") -> None:
    """Raise a `DlpipeError` naming the install command when onnx/onnxruntime are missing."""
    missing = []
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise DlpipeError(f"{what} needs {' and '.join(missing)}, which are not installed; "
                          f"run `{INSTALL}`")


def session(model: bytes | str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for a model file or serialized model.

    Args:
        threads: intra-op threads; default ONNX Runtime's choice (the physical cores).
    """
    require_onnx("running an ONNX model")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no "unused initializer" chatter
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray) -> np.ndarray:
    """The first output of `sess` for the float32 (B, F) input `x`."""
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def run_batched(sess: Any, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """`run` over slices of `x`, concatenated; (N, out)."""
    parts = [run(sess, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if not parts:
        width = sess.get_outputs()[0].shape[-1]
        return np.zeros((0, width if isinstance(width, int) else 1), dtype=np.float32)
    return np.concatenate(parts)


def latency_p50_ms(sess: Any, x: np.ndarray, *, runs: int = 100, warmup: int = 10) -> float:
    """Median wall time of one `sess.run` on `x`, in milliseconds (after `warmup` runs)."""
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x, dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def rows_of(x: np.ndarray, n: int) -> np.ndarray:
    """`n` rows of `x`, repeating it when it has fewer (for latency at a fixed batch size)."""
    if len(x) == 0:
        raise ValueError("no rows to take a batch from")
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:n], dtype=np.float32)
