"""Half precision: the fp16 ONNX graph runs with float32 input and output; bf16 weights."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from dlpipe.compress.cast import from_bf16, to_bf16, to_fp16_onnx
from dlpipe.export import _runtime
from dlpipe.export.onnx import to_onnx
from dlpipe.models import build


def test_an_fp16_graph_runs_on_float32_rows_with_half_the_weight_bytes():
    torch.manual_seed(0)
    model = build("mlp", 10, 3, kwargs={"hidden": [32, 16], "norm": "layer"}).eval()
    fp32 = to_onnx(model, torch.randn(2, 10)).SerializeToString()
    fp16 = to_fp16_onnx(fp32)
    graph = onnx.load_from_string(fp16)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [numpy_helper.to_array(i) for i in graph.graph.initializer]
    assert {w.dtype for w in weights if w.dtype.kind == "f"} == {np.dtype(np.float16)}
    x = torch.randn(40, 10)
    got = _runtime.run(_runtime.session(fp16), x.numpy())
    assert got.dtype == np.float32
    # fp16 keeps 11 significant bits (~5e-4 relative per rounding), through three layers.
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-2, atol=1e-2)


def test_bf16_weights_round_trip_to_the_rounded_fp32_values():
    torch.manual_seed(0)
    state = build("mlp", 4, 1, kwargs={"hidden": [8], "norm": "batch"}).state_dict()
    bf16 = to_bf16(state)
    assert bf16["block0.0.weight"].dtype == torch.bfloat16
    assert bf16["block0.1.num_batches_tracked"].dtype == torch.int64  # integer buffers kept
    back = from_bf16(bf16)
    assert back["block0.0.weight"].dtype == torch.float32
    # Every bf16 value is an fp32 value: widening is exact, and rounding again changes nothing.
    assert torch.equal(back["block0.0.weight"].bfloat16(), bf16["block0.0.weight"])
    error = (back["block0.0.weight"] - state["block0.0.weight"]).abs()
    assert (error <= state["block0.0.weight"].abs() * 2**-8).all()  # 8 significant bits
