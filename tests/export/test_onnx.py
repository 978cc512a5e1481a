"""ONNX export: every registered model computes the same in ONNX Runtime as in PyTorch, and the
parity gate fails naming the layer when it does not."""

from __future__ import annotations

import inspect
from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from dlpipe.errors import ExportError
from dlpipe.export import _runtime
from dlpipe.export.onnx import ATOL, RTOL, check_parity, export_onnx
from dlpipe.models import MODELS, build
from helpers import input_kind, tiny_input, tiny_layout

N_NUMERIC = 4
CARDINALITIES = (3, 7)  # two embedded categoricals; index 0 is the unseen bucket


def batch(n: int, cardinalities=(), seed: int = 0) -> torch.Tensor:
    """A float32 (n, N_NUMERIC + len(cardinalities)) input in the features' layout."""
    gen = torch.Generator().manual_seed(seed)
    numeric = torch.randn(n, N_NUMERIC, generator=gen)  # (n, N_NUMERIC)
    index = [torch.randint(0, c, (n, 1), generator=gen).float() for c in cardinalities]
    return torch.cat([numeric, *index], dim=1)  # (n, F)


def takes_cardinalities(name: str) -> bool:
    params = inspect.signature(MODELS.get(name)).parameters
    return "cardinalities" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


CASES = [pytest.param(name, cards, id=f"{name}-{'categorical' if cards else 'numeric'}")
         for name in MODELS.names() for cards in ((), CARDINALITIES)
         if not cards or (takes_cardinalities(name) and input_kind(name) == "tabular")]


@pytest.mark.parametrize(("name", "cardinalities"), CASES)
def test_every_model_exports_to_onnx_with_pytorch_outputs_at_two_batch_sizes(
    name, cardinalities, tmp_path
):
    torch.manual_seed(0)
    layout = tiny_layout(input_kind(name), cardinalities)
    model = build(name, N_NUMERIC, 3, cardinalities=cardinalities, layout=layout).eval()
    small, large = tiny_input(layout, 1, seed=1), tiny_input(layout, 37, seed=2)
    path = export_onnx(model, tiny_input(layout, 2), tmp_path / "model.onnx",
                       check=[small, large])
    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = _runtime.session(path)
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # a symbolic, dynamic batch axis
    for x in (small, large):  # 1 and 37 rows, neither the example's 2
        got = torch.from_numpy(_runtime.run(sess, x.numpy()))
        # Same fp32 math in both runtimes; only summation order differs (see onnx.RTOL).
        torch.testing.assert_close(got, model(x).detach(), rtol=RTOL, atol=ATOL)


class ShiftWhenExporting(nn.Module):
    """Adds 0.5 under torch.export only: the ONNX graph computes something eager never does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 if torch.compiler.is_exporting() else x


def test_the_parity_gate_names_the_layer_that_computes_differently_under_export(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        body=nn.Linear(N_NUMERIC, 8), act=nn.ReLU(), shift=ShiftWhenExporting(),
        head=nn.Linear(8, 2))).eval()
    with pytest.raises(ExportError, match=r"the first layer whose outputs diverge is 'shift' "
                                          r"\(ShiftWhenExporting, largest absolute difference "
                                          r"0\.5"):
        export_onnx(model, batch(2), tmp_path / "model.onnx", check=[batch(1), batch(9)])
    assert not (tmp_path / "model.onnx").exists()  # the gate runs before anything is written


def test_a_corrupted_weight_in_a_saved_model_fails_the_check_naming_its_layer(tmp_path):
    torch.manual_seed(0)
    model = build("mlp", N_NUMERIC, 3, kwargs={"hidden": [8, 8]}).eval()
    path = export_onnx(model, batch(2), tmp_path / "model.onnx", check=[batch(1), batch(9)])
    assert b"stack_trace" not in path.read_bytes()  # no debugging records (with local paths)
    assert check_parity(model, path, [batch(5)]) <= ATOL  # intact, it passes
    proto = onnx.load(path)
    for init in proto.graph.initializer:
        if init.name == "block1.0.weight":
            weight = numpy_helper.to_array(init) + np.float32(0.25)  # every entry of it
            init.CopyFrom(numpy_helper.from_array(weight, init.name))
    with pytest.raises(ExportError, match=r"differ from PyTorch's on a batch of 5 rows .*the "
                                          r"first layer whose outputs diverge is 'block1\.0' "
                                          r"\(Linear"):
        check_parity(model, proto, [batch(5)])


def test_a_model_left_in_training_mode_is_exported_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = build("mlp", N_NUMERIC, 1, kwargs={"hidden": [16], "dropout": 0.5}).train()
    path = export_onnx(model, batch(2), tmp_path / "model.onnx", check=[batch(1), batch(20)])
    x = batch(20, seed=3)
    got = _runtime.run(_runtime.session(path), x.numpy())
    np.testing.assert_allclose(got, model.eval()(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_the_example_batch_needs_two_rows(tmp_path):
    model = build("linear", N_NUMERIC, 1).eval()
    with pytest.raises(ExportError, match=r"the example batch needs at least 2 rows"):
        export_onnx(model, batch(1), tmp_path / "model.onnx")
