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
    return proto.SerializeToString()


def to_bf16(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every floating-point tensor in bfloat16 (integer buffers kept)."""
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}


def from_bf16(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bf16 weights widened back to float32 (exactly: every bf16 value is an fp32 value)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
