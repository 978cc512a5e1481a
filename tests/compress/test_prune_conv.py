"""Structured pruning of a cnn's conv channels: exact when the removed channels are dead."""

from __future__ import annotations

import pytest
import torch

from dlpipe.compress.prune import shrink, structured_support
from dlpipe.compress.prune_conv import cnn_support, shrink_cnn
from dlpipe.models.spec import build_from_spec


def cnn_spec(blocks, pool="flatten", **kwargs):
    return {"name": "cnn", "kwargs": {"blocks": blocks, "pool": pool, "hidden": [16],
                                      "dropout": 0.0, **kwargs},
            "init": None, "in_features": 0, "out_features": 3, "cardinalities": [],
            "layout": [{"name": "image", "kind": "image", "start": 0, "width": 256,
                        "shape": [1, 16, 16]}]}


def _kill(conv, norm, channels):
    """Make `channels` of a conv (+ batch norm) output exactly zero."""
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        if norm is not None:
            norm.bias[channels] = 0
            norm.running_mean[channels] = 0


@pytest.mark.parametrize("pool", ["flatten", "avg"])
def test_removing_dead_channels_keeps_the_output_exactly(pool):
    torch.manual_seed(0)
    spec = cnn_spec([{"channels": 8, "pool": "max", "batch_norm": True},
                     {"channels": 6, "pool": "max"}], pool=pool)
    model = build_from_spec(spec).eval()
    block0, block1 = model.encoder.blocks
    with torch.no_grad():  # make the batch norm's statistics not the identity
        block0[1].running_var.uniform_(0.5, 2.0)
        block0[1].weight.uniform_(0.5, 2.0)
    _kill(block0[0], block0[1], [0, 2, 4, 6])
    _kill(block1[0], None, [1, 3, 5])
    x = torch.randn(5, 256)
    small, small_spec = shrink_cnn(model, spec, 0.5)
    assert [b["channels"] for b in small_spec["kwargs"]["blocks"]] == [4, 3]
    assert small.encoder.blocks[0][0].weight.shape == (4, 1, 3, 3)
    assert small.encoder.blocks[1][0].weight.shape == (3, 4, 3, 3)
    assert small.dense0[0].in_features == (3 if pool == "avg" else 3 * 2 * 2)
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    # The spec rebuilds the same network (what model.json + weights.safetensors rely on).
    rebuilt = build_from_spec(small_spec).eval()
    rebuilt.load_state_dict(small.state_dict())
    torch.testing.assert_close(rebuilt(x), small(x))


def test_live_channels_with_the_largest_norm_are_kept():
    torch.manual_seed(0)
    spec = cnn_spec([{"channels": 4}])
    model = build_from_spec(spec).eval()
    with torch.no_grad():
        model.encoder.blocks[0][0].weight[[1, 3]] *= 10
    small, _ = shrink(model, spec, 0.5)
    torch.testing.assert_close(small.encoder.blocks[0][0].weight,
                               model.encoder.blocks[0][0].weight[[1, 3]])


def test_residual_blocks_and_the_block_they_read_keep_their_widths():
    spec = cnn_spec([{"channels": 8}, {"channels": 8, "residual": True},
                     {"channels": 6, "pool": "max"}])
    model = build_from_spec(spec).eval()
    small, small_spec = shrink_cnn(model, spec, 0.5)
    assert [b["channels"] for b in small_spec["kwargs"]["blocks"]] == [8, 8, 3]
    assert small(torch.randn(2, 256)).shape == (2, 3)


def test_a_cnn_of_residual_blocks_only_is_refused_with_the_reason():
    spec = cnn_spec([{"channels": 8}, {"channels": 8}], residual=True)
    assert "none can shrink" in cnn_support(spec)
    assert structured_support(spec) == cnn_support(spec)
    assert structured_support(cnn_spec([{"channels": 8}])) is None
    with pytest.raises(ValueError, match="none can shrink"):
        shrink(build_from_spec(spec), spec, 0.5)
    rnn = {"name": "rnn", "kwargs": {}}
    assert "model 'rnn' is neither" in structured_support(rnn)
