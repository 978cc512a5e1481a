"""Half precision: an fp16 ONNX graph, and bf16 safetensors weights.

- **fp16 ONNX**: every float weight and op of the fp32 graph in float16, with the graph's
  input and output kept float32 (a Cast at each end), so callers feed and read the same
  arrays as before. Half the weight bytes; ONNX Runtime on CPU runs it, though rarely
  faster than fp32 (fp16 pays off on GPUs).
- **bf16 weights**: the state dict in bfloat16 (safetensors), for training or serving stacks
  that compute in bf16. ONNX Runtime's CPU kernels have no bf16, so this variant is scored
  in PyTorch with the weights rounded to bf16 and computed in fp32 — exactly what loading
  them into an fp32 model gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dlpipe.export import _runtime

__all__ = ["from_bf16", "to_bf16", "to_fp16_onnx"]


def to_fp16_onnx(fp32: bytes) -> bytes:
    """Convert a serialized fp32 graph to fp16 weights and ops, float32 input and output."""
    _runtime.require_onnx("fp16 conversion")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    for node in proto.graph.node:
        del node.metadata_props[:]
    _sort_nodes(proto.graph)
    return proto.SerializeToString()


def _sort_nodes(graph: Any) -> None:
    """Put the nodes in topological order, in place (`onnx.checker` requires it).

    The converter appends the Cast of the float32 input after the nodes that read it when
    the input is first reshaped (an image model's flat rows); ONNX Runtime runs such a
    graph, but a bundle loader checks it and refuses it.
    """
    known = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle or a value from an outer graph: leave the order alone
            return
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    sorted_nodes = [type(n).FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def to_bf16(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every floating-point tensor in bfloat16 (integer buffers kept)."""
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}


def from_bf16(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bf16 weights widened back to float32 (exactly: every bf16 value is an fp32 value)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
