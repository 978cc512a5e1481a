"""int8 quantization: dynamic for an MLP on breast cancer, static per-channel for a small CNN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from dlpipe import runs
from dlpipe.compress.quantize import gemm_to_matmul, quantize_int8, scheme_for
from dlpipe.errors import ExportError
from dlpipe.export import _runtime
from dlpipe.export.onnx import to_onnx


def test_dynamic_int8_runs_in_onnx_runtime_within_the_guard_on_breast_cancer(
    breast_cancer, compressed
):
    rundir, report = compressed(run=breast_cancer, methods=["int8"], max_metric_drop=0.005)
    original, int8 = report["variants"]
    assert int8["setting"] == "dynamic"  # an MLP: Linear layers only
    assert original["val"] >= 0.9  # a model worth guarding
    assert int8["accepted"] and int8["val"] >= original["val"] - 0.005
    assert report["chosen"] == {"fp32": "original", "int8": "int8"}
    graph = onnx.load(rundir.file(runs.COMPRESSED_INT8))
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in graph.graph.node}
    int8_weights = [numpy_helper.to_array(i) for i in graph.graph.initializer
                    if i.name.endswith("_quantized")]
    assert {w.dtype for w in int8_weights} == {np.dtype(np.int8)}
    assert sum(w.size for w in int8_weights) == 30 * 64 + 64 * 32 + 32 * 1  # every weight
    assert int8["weight_bytes"] < original["weight_bytes"] / 3
    # It runs, and on test it agrees with the fp32 model on nearly every row.
    from dlpipe.features import load as load_features

    x, _ = load_features(rundir).arrays(rundir.read_split("test"))
    q = _runtime.run(_runtime.session(rundir.file(runs.COMPRESSED_INT8)), x).reshape(-1)
    f = _runtime.run(_runtime.session(_fp32(rundir)), x).reshape(-1)
    assert np.mean((q > 0) == (f > 0)) >= 0.98


def _fp32(rundir) -> bytes:
    from dlpipe.models.spec import load_network

    model = load_network(rundir)
    x = torch.zeros(2, model.input.in_features)
    return to_onnx(model, x).SerializeToString()


class TinyCNN(nn.Module):
    """(B, 64) rows seen as 8×8 images → Conv 3×3 (8 channels) → ReLU → pool → 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, 1, 8, 8)  # (B, 1, 8, 8)
        return self.head(self.pool(self.act(self.conv(images))).flatten(1))  # (B, 3)


def test_static_int8_quantizes_a_small_cnn_with_per_channel_weights():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(300, 64)
    fp32 = to_onnx(model, x[:2])
    assert scheme_for(fp32, "auto") == "static"  # a convolution: calibrated activations
    int8 = quantize_int8(fp32.SerializeToString(), mode="auto", calibration=x[:200].numpy())
    graph = onnx.load_from_string(int8)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    conv_weight, conv_scale = inits["conv.weight_quantized"], inits["conv.weight_scale"]
    assert conv_weight.dtype == np.int8
    assert conv_weight.shape == (8, 1, 3, 3) and conv_scale.shape == (8,)  # one per channel
    got = _runtime.run(_runtime.session(int8), x[200:].numpy())
    want = model(x[200:]).detach().numpy()
    # 8-bit steps over calibrated ranges: errors of ~1% of each range per layer, far below
    # the logits' spread, so the predicted class almost never changes.
    assert np.abs(got - want).max() < 0.1
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95


def test_static_int8_without_calibration_rows_is_an_error():
    model = TinyCNN().eval()
    fp32 = to_onnx(model, torch.randn(2, 64)).SerializeToString()
    with pytest.raises(ExportError, match=r"static int8 quantization needs calibration rows"):
        quantize_int8(fp32, mode="static")


def test_gemm_to_matmul_computes_the_same_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)).eval()
    proto = to_onnx(model, torch.randn(2, 5))
    rewritten = gemm_to_matmul(proto)
    assert "Gemm" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    a = _runtime.run(_runtime.session(proto.SerializeToString()), x)
    b = _runtime.run(_runtime.session(rewritten.SerializeToString()), x)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # the same fp32 products
