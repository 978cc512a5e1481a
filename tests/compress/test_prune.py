"""Pruning: exact sparsities, masks that hold during fine-tuning, and structured pruning that
removes neurons without changing what the rest computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dlpipe import runs
from dlpipe.compress.prune import (
    count_parameters,
    magnitude_prune,
    make_permanent,
    shrink_mlp,
    structured_support,
)
from dlpipe.export import _runtime
from dlpipe.models.spec import build_from_spec, spec_of


def mlp_and_spec(hidden, **kwargs):
    torch.manual_seed(0)
    spec = spec_of("mlp", {"hidden": hidden, **kwargs}, init=None, in_features=6,
                   out_features=3, cardinalities=[], task="multiclass")
    return build_from_spec(spec).eval(), spec


def zeros_in_linear_weights(model) -> tuple[int, int]:
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def test_global_magnitude_pruning_zeroes_exactly_the_asked_fraction_and_keeps_old_zeros():
    model, _ = mlp_and_spec([16, 8])
    magnitude_prune(model, 0.5)
    first = {n: (p == 0) for n, p in make_permanent(model).named_parameters()}
    zeros, total = zeros_in_linear_weights(model)
    assert zeros == round(0.5 * total)
    magnitude_prune(model, 0.8)  # the iterative schedule: prune the pruned model further
    make_permanent(model)
    zeros, total = zeros_in_linear_weights(model)
    assert zeros == round(0.8 * total)
    for name, param in model.named_parameters():
        assert (param[first[name]] == 0).all(), f"{name}: a pruned weight came back"


def test_layer_scope_prunes_every_layer_to_the_same_sparsity():
    model, _ = mlp_and_spec([16, 8])
    make_permanent(magnitude_prune(model, 0.75, scope="layer"))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert int((module.weight == 0).sum()) == round(0.75 * module.weight.numel())


def test_pruned_weights_stay_zero_while_fine_tuning():
    model, _ = mlp_and_spec([16])
    magnitude_prune(model.train(), 0.6)
    before = count_parameters(model)[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(32, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert count_parameters(model)[1] == before  # the masks held: no pruned weight regrew


def make_dead(linear: torch.nn.Linear, rows: list[int]) -> None:
    """Neurons with zero weights and a negative bias: ReLU outputs 0 for them, always."""
    with torch.no_grad():
        linear.weight[rows] = 0.0
        linear.bias[rows] = -1.0


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_structured_pruning_removes_dead_neurons_without_changing_the_outputs(norm):
    model, spec = mlp_and_spec([8, 6], norm=norm)
    if norm == "batch":  # non-trivial running statistics, and BN keeps the dead ones dead
        for block in (model.block0, model.block1):
            bn = block[1]
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
    make_dead(model.block0[0], [1, 3, 4, 6])  # half of block0, the lowest L1 norms
    make_dead(model.block1[0], [0, 2, 5])
    if norm == "batch":
        with torch.no_grad():
            for block, rows in ((model.block0, [1, 3, 4, 6]), (model.block1, [0, 2, 5])):
                block[1].weight[rows] = 0.0
                block[1].bias[rows] = -1.0
    small, small_spec = shrink_mlp(model, spec, 0.5)
    assert small_spec["kwargs"]["hidden"] == [4, 3]
    assert small.block0[0].weight.shape == (4, 6) and small.block1[0].weight.shape == (3, 4)
    assert small.head.weight.shape == (3, 3)
    x = torch.randn(50, 6)
    # The removed neurons contributed exactly zero, so only float summation order differs.
    torch.testing.assert_close(small(x), model(x), rtol=1e-6, atol=1e-6)
    # model.json + weights rebuild it: the spec is an ordinary mlp spec.
    rebuilt = build_from_spec(small_spec)
    rebuilt.load_state_dict(small.state_dict())


def test_residual_blocks_tied_by_an_identity_skip_keep_their_widths():
    model, spec = mlp_and_spec([16, 16, 8], residual=True, norm="layer")
    small, small_spec = shrink_mlp(model, spec, 0.5)
    # block1's skip is the identity (16 → 16): blocks 0 and 1 keep 16; block2 may shrink.
    assert small_spec["kwargs"]["hidden"] == [16, 16, 4]
    assert small(torch.randn(3, 6)).shape == (3, 3)


def test_structured_pruning_says_why_it_cannot_shrink_other_models():
    assert structured_support({"name": "linear", "kwargs": {}}).startswith(
        "structured pruning supports mlp (hidden neurons) and cnn (conv channels); model "
        "'linear' is neither")
    assert structured_support({"name": "mlp", "kwargs": {"hidden": []}}) == (
        "the mlp has no hidden layers (`hidden: []`)")
    assert structured_support({"name": "mlp", "kwargs": {}}) is None


def test_structured_pruning_shrinks_layers_and_the_onnx_file_and_predicts_as_reported(
    compressed,
):
    rundir, report = compressed(methods=["structured"], structured_amounts=[0.5],
                                max_metric_drop=0.05)
    original, pruned = report["variants"]
    assert pruned["name"] == "structured-0.5" and pruned["accepted"]
    assert report["chosen"]["fp32"] == "structured-0.5"
    spec = rundir.read_json(runs.COMPRESSED_MODEL)
    assert spec["kwargs"]["hidden"] == [16, 8]  # from 32-16
    assert pruned["parameters"] < original["parameters"] / 2
    assert pruned["file_bytes"] < original["file_bytes"]
    graph = onnx.load(rundir.file(runs.COMPRESSED_ONNX))
    shapes = {i.name: list(i.dims) for i in graph.graph.initializer}
    assert shapes["block0.0.weight"] == [16, 8] and shapes["block1.0.weight"] == [8, 16]
    # The kept network, rebuilt from compress/, scores on val what the report says.
    model = build_from_spec(spec)
    model.load_state_dict(rundir.read_tensors(runs.COMPRESSED_WEIGHTS))
    from dlpipe.features import load as load_features

    fitted = load_features(rundir)
    x, y = fitted.arrays(rundir.read_split("val"))
    threshold = rundir.read_json(runs.METRICS)["val"]["threshold"]
    with torch.inference_mode():
        p = torch.sigmoid(model.eval()(torch.from_numpy(x))).reshape(-1).numpy()
    assert np.mean((p >= threshold) == y) == pytest.approx(pruned["val"], abs=1e-12)
    onnx_out = _runtime.run(_runtime.session(rundir.file(runs.COMPRESSED_ONNX)), x)
    np.testing.assert_allclose(onnx_out.reshape(-1), model(torch.from_numpy(x)).detach()
                               .numpy().reshape(-1), rtol=1e-5, atol=1e-5)
