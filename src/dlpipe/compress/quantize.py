"""int8 quantization of an fp32 ONNX graph with ONNX Runtime's quantization tools.

The scheme follows the layer type:

- **dynamic** for Linear (and LSTM): weights are stored as int8, activations are quantized
  on the fly per batch, so no calibration is needed and accuracy barely moves. ONNX
  Runtime's dynamic (integer-ops) path quantizes MatMul, not Gemm, so each Gemm is first
  rewritten as the MatMul + Add it computes, and constant subgraphs are folded first (the
  exporter computes an LSTM's gate-reordered weights with Slice/Concat ops; the LSTM
  quantizer needs them as initializers). GRU and RNN have no int8 kernel and stay fp32;
  the compress report says so in the int8 row's reason. An embedding table (a Gather on a
  float weight) is stored as int8 too: the gathered rows are dequantized after the lookup, so
  a text model's vocabulary costs a quarter of its fp32 bytes.
- **static** for convolutions: activation ranges are calibrated on training batches, weights
  get one scale per output channel, and the graph carries QuantizeLinear/DequantizeLinear
  pairs that ONNX Runtime fuses into int8 kernels. Dynamic quantization barely shrinks or
  speeds a CNN, whose cost is in activations.

Accuracy must be measured where the graph runs: int8 kernels differ between CPUs.

Example:
    >>> int8 = quantize_int8(Path("model.onnx").read_bytes(), mode="auto", calibration=x_train)
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dlpipe.errors import ExportError
from dlpipe.export import _runtime

__all__ = ["fold_constants", "gemm_to_matmul", "has_convolution", "quantize_int8", "scheme_for",
           "unquantized_recurrent"]

_CONV = ("Conv", "ConvTranspose")


def quantize_int8(fp32: bytes, *, mode: str = "auto", calibration: np.ndarray | None = None,
                  per_channel: bool | None = None, batch_size: int = 64) -> bytes:
    """Quantize a serialized fp32 graph to int8; return the serialized int8 graph.

    Args:
        mode: ``dynamic``, ``static`` or ``auto`` (static when the graph has a convolution).
        calibration: float32 (N, F) training rows, required by the static scheme.
        per_channel: one scale per output channel of each weight; default yes for static,
            no for dynamic.
        batch_size: rows per calibration batch.

    Raises:
        ExportError: static quantization without calibration rows.
    """
    _runtime.require_onnx("int8 quantization")
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_from_string(fp32)
    scheme = scheme_for(proto, mode)
    if per_channel is None:
        per_channel = scheme == "static"
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        src, pre, dst = (Path(tmp) / f"{n}.onnx" for n in ("src", "pre", "dst"))
        if scheme == "dynamic":
            # Fold constants first: the exporter computes an LSTM's W and R (gates reordered)
            # with Slice/Concat ops, and the LSTM quantizer only takes initializer weights.
            onnx.save(gemm_to_matmul(fold_constants(proto)), src)
            # No graph optimization here: it would fuse MatMul + Add back into Gemm.
            quant_pre_process(src, pre, skip_optimization=True, skip_symbolic_shape=True)
            quantize_dynamic(pre, dst, weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=["MatMul", "LSTM", "Gather"])
        else:
            if calibration is None or len(calibration) == 0:
                raise ExportError("compress: static int8 quantization needs calibration rows "
                                  "from the training split; none were given")
            onnx.save(proto, src)
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, dst, _Batches(calibration, batch_size, proto),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        out = onnx.load(dst)
    return _strip(out).SerializeToString()


def fold_constants(proto: Any) -> Any:
    """A copy of `proto` with every subgraph of constants computed into an initializer.

    Uses ONNX Runtime's basic graph optimizations (constant folding and redundant-node
    elimination; no contrib ops), which run every node whose inputs are all initializers.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(proto.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(out)


def unquantized_recurrent(proto: Any) -> list[str]:
    """The recurrent ops (LSTM, GRU, RNN) an int8 graph still runs in float, one per node.

    ONNX Runtime has an int8 kernel for LSTM only (DynamicQuantizeLSTM); GRU and RNN stay
    float, and an LSTM whose weights are not constants cannot be quantized either.
    """
    return [node.op_type for node in proto.graph.node if node.op_type in ("LSTM", "GRU", "RNN")]


def scheme_for(proto: Any, mode: str) -> str:
    """The scheme `mode` means for this graph: ``auto`` → static with convolutions, else dynamic."""
    if mode not in ("auto", "dynamic", "static"):
        raise ExportError(f"compress.quantization: unknown mode {mode!r}; use auto, dynamic or "
                          f"static")
    if mode != "auto":
        return mode
    return "static" if has_convolution(proto) else "dynamic"


def has_convolution(proto: Any) -> bool:
    return any(node.op_type in _CONV for node in proto.graph.node)


def gemm_to_matmul(proto: Any) -> Any:
    """A copy of `proto` with every Gemm (alpha = beta = 1, A not transposed, B a weight)
    rewritten as MatMul(A, Bᵀ) + C, which ONNX Runtime's dynamic quantization handles."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {init.name: init for init in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = (node.op_type == "Gemm" and attrs.get("alpha", 1.0) == 1.0
                  and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
                  and len(node.input) >= 2 and node.input[1] in inits)
        if not simple:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])  # (out, in) with transB
        if attrs.get("transB", 0):
            weight = weight.T  # (in, out)
        name = f"{node.input[1]}_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight),
                                                               name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product],
                                      name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_add"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {name for node in proto.graph.node for name in node.input}
    kept = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over float32 rows."""

    def __init__(self, x: np.ndarray, batch_size: int, proto: Any) -> None:
        name = proto.graph.input[0].name
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._feeds = iter([{name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the protocol; one pass is all MinMax calibration needs
        pass


def _strip(proto: Any) -> Any:
    """Keep the int8 graph lean: it is shipped, not debugged. Drop per-node metadata, doc
    strings and node names, and give intermediate values short names (the quantizer's run to
    40 characters, twice per value); on a small MLP that is a third of the file. Weights keep
    their names, and the graph's input and output theirs."""
    keep = {v.name for v in [*proto.graph.input, *proto.graph.output]}
    keep |= {init.name for init in proto.graph.initializer}
    if any(a.g.node or a.graphs for node in proto.graph.node for a in node.attribute):
        keep |= {out for node in proto.graph.node for out in node.output}  # If/Loop bodies
    short: dict[str, str] = {}
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        node.name = ""
        for i, name in enumerate(node.input):
            node.input[i] = short.get(name, name)
        for i, name in enumerate(node.output):
            if name and name not in keep:
                short[name] = node.output[i] = f"t{len(short)}"
    for info in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del info.metadata_props[:]
    del proto.graph.value_info[:]
    return proto


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger; keep it out of our output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
