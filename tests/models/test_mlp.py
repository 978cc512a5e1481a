"""The mlp builder and the tabular input layer it shares with linear."""

from __future__ import annotations

import itertools
import typing

import pytest
import torch

from dlpipe.models import TabularInput
from dlpipe.models.mlp import Activation, Norm, mlp


@pytest.mark.parametrize(
    ("activation", "norm"),
    list(itertools.product(typing.get_args(Activation), typing.get_args(Norm))),
)
def test_every_activation_and_norm_builds_and_trains_a_step(activation, norm):
    torch.manual_seed(0)
    model = mlp(5, 2, hidden=[8, 8], activation=activation, norm=norm, dropout=0.1).train()
    out = model(torch.randn(16, 5))  # (B, out)
    out.sum().backward()
    assert out.shape == (16, 2)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_residual_adds_each_blocks_input_projecting_where_the_width_changes():
    torch.manual_seed(0)
    model = mlp(3, 2, hidden=[6, 6], residual=True).eval()
    x = torch.randn(4, 3)
    block0, block1 = model.block0, model.block1
    h1 = block0.block(x) + x @ block0.skip.weight.T  # 3 → 6: a bias-free projection
    h2 = block1.block(h1) + h1  # 6 → 6: the identity
    torch.testing.assert_close(model(x), model.head(h2), rtol=0, atol=0)
    # ... and the skips change the output compared with the same blocks without them.
    plain = model.head(block1.block(block0.block(x)))
    assert not torch.allclose(model(x), plain)


def test_dropout_is_the_identity_in_eval_mode():
    torch.manual_seed(0)
    with_dropout = mlp(5, 3, hidden=[32, 32], dropout=0.5)
    torch.manual_seed(0)
    without = mlp(5, 3, hidden=[32, 32], dropout=0.0)  # dropout has no parameters: same weights
    x = torch.randn(64, 5)
    torch.testing.assert_close(with_dropout.eval()(x), without.eval()(x), rtol=0, atol=0)
    assert not torch.equal(with_dropout.train()(x), without(x))  # it does drop in training


def test_no_hidden_layers_is_a_linear_model():
    model = mlp(4, 2, hidden=[])
    assert [type(m).__name__ for m in model] == ["TabularInput", "Linear"]


def test_embedding_widths_default_to_half_the_cardinality_capped_at_50():
    assert TabularInput(2, [1, 3, 8, 500]).out_features == 2 + 1 + 2 + 4 + 50
    assert TabularInput(2, [3, 500], embedding_dim=7).out_features == 2 + 7 + 7


def test_tabular_input_looks_up_each_index_column_in_its_own_embedding():
    layer = TabularInput(2, [3, 5], embedding_dim=4)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 3.0, 0.0, 4.0]])  # (B=2, 2 numeric + 2 index)
    expected = torch.cat(
        [x[:, :2], layer.embeddings[0].weight[[2, 0]], layer.embeddings[1].weight[[0, 4]]], dim=1
    )  # (2, 2 + 4 + 4)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_tabular_input_without_categoricals_is_the_identity():
    x = torch.randn(3, 4)
    assert TabularInput(4)(x) is x


def test_tabular_input_refuses_a_cardinality_without_the_unseen_bucket():
    with pytest.raises(ValueError, match=r"cardinalities\[1\] must be at least 1 .*; got 0"):
        TabularInput(2, [3, 0])


def test_tabular_input_refuses_a_model_with_no_input_columns():
    with pytest.raises(ValueError, match="the model has no input"):
        TabularInput(0, [])
