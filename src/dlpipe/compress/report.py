"""What compress measured: one `Variant` per model tried, compress/report.json, and its table.

Every variant is measured the same way on this machine: the ONNX file's size and the bytes
of its weights (initializers), the parameters and non-zero parameters of the fp32 weights it
comes from (quantization keeps zeros exact), the median ONNX Runtime latency of one call at
batch 1 and batch 256, and the guarded metric on validation (and on test for the kept ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dlpipe.export import _runtime

__all__ = ["Variant", "measure_onnx", "table"]


@dataclass
class Variant:
    """One model compress tried, and how it compares with the original."""

    name: str
    """`original`, `structured-0.5`, `prune-0.8`, `int8`, `fp16`, `bf16`."""
    method: str
    setting: float | str | None = None
    file_bytes: int | None = None
    weight_bytes: int | None = None
    parameters: int = 0
    nonzero: int = 0
    latency_ms_b1: float | None = None
    latency_ms_b256: float | None = None
    val: float | None = None
    delta: float | None = None
    """Guarded metric minus the original's (negative: worse, for a higher-is-better metric)."""
    test: float | None = None
    accepted: bool = True
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_onnx(variant: Variant, data: bytes, x: np.ndarray, *, runs: int) -> Any:
    """Fill `variant`'s size and latency columns from the serialized graph; return a session.

    Args:
        x: float32 (N, F) rows; batches of 1 and 256 are cut from them (repeated if needed).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    variant.file_bytes = len(data)
    variant.weight_bytes = int(sum(numpy_helper.to_array(init).nbytes
                                   for init in proto.graph.initializer))
    sess = _runtime.session(data)
    variant.latency_ms_b1 = _runtime.latency_p50_ms(sess, _runtime.rows_of(x, 1), runs=runs)
    variant.latency_ms_b256 = _runtime.latency_p50_ms(sess, _runtime.rows_of(x, 256),
                                                      runs=max(runs // 4, 5))
    return sess


def table(report: dict[str, Any]) -> Any:
    """A rich Table of report.json: one row per variant."""
    from rich import box
    from rich.table import Table

    metric = report["metric"]
    out = Table(title=f"compression: {metric} (val may drop ≤ {report['max_metric_drop']:g})",
                caption="★ chosen · ✗ rejected by the guard; KB: ONNX file (bf16: safetensors); "
                        "ms: ONNX Runtime p50 at batch 1 and 256",
                box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    chosen = {v for v in (report.get("chosen") or {}).values() if v}
    rows = []
    for v in report["variants"]:
        mark = " ★" if v["name"] in chosen else ("" if v["accepted"] else " ✗")
        rows.append((v["name"] + mark, _kb(v["file_bytes"]), f"{v['parameters']:,}",
                     f"{v['nonzero']:,}", _num(v["latency_ms_b1"], 3),
                     _num(v["latency_ms_b256"], 3), _num(v["val"], 4), _signed(v["delta"]),
                     _num(v["test"], 4)))
    headers = ("variant", "KB", "params", "non-zero", "ms@1", "ms@256", "val", "Δ", "test")
    for i, column in enumerate(headers):
        widest = max([len(column), *(len(row[i]) for row in rows)])
        out.add_column(column, justify="left" if i == 0 else "right", no_wrap=True,
                       min_width=widest)
    for row in rows:
        out.add_row(*row)
    return out


def _kb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1024:.1f}"


def _num(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.4f}"
