"""The multilayer perceptron: the default model for tabular features."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from dlpipe.models import MODELS
from dlpipe.models._tabular import TabularInput

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "selu", "tanh", "sigmoid"]
Norm = Literal["none", "batch", "layer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
_NORMS: dict[str, type[nn.Module]] = {
    "none": nn.Identity,
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


@MODELS.register("mlp")
def mlp(
    in_features: int,
    out_features: int,
    *,
    cardinalities: Sequence[int] = (),
    hidden: Sequence[Annotated[int, Field(ge=1)]] = (128, 64),
    activation: Activation = "relu",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    norm: Norm = "none",
    residual: bool = False,
    embedding_dim: Annotated[int, Field(ge=1)] | None = None,
) -> nn.Sequential:
    """Build a stack of Linear → norm → activation → dropout blocks and a Linear head.

    Args:
        in_features: Number of numeric input columns.
        out_features: Number of outputs (1 for regression and binary, classes for multiclass).
        cardinalities: Index count of each embedded categorical column (see `TabularInput`).
        hidden: Width of each hidden block; `[]` makes a linear model.
        activation: Nonlinearity after each block's norm.
        dropout: Probability of zeroing a unit after each block's activation (training only).
        norm: `batch` (BatchNorm1d), `layer` (LayerNorm) or `none`, after each block's Linear.
        residual: Add each block's input to its output. Where the widths differ (always for
            the first block unless its width equals the input's) the input goes through a
            bias-free Linear projection first, as in ResNet.
        embedding_dim: Width of every embedding; default `min(50, (cardinality + 1) // 2)`.

    Returns:
        A module mapping float32 `(B, in_features + len(cardinalities))` to
        `(B, out_features)`.

    Example:
        >>> model = mlp(8, 3, hidden=[64, 64], dropout=0.1, norm="layer", residual=True)
    """
    features = TabularInput(in_features, cardinalities, embedding_dim)
    layers: OrderedDict[str, nn.Module] = OrderedDict(input=features)
    width = features.out_features
    for i, size in enumerate(hidden):
        block = nn.Sequential(
            nn.Linear(width, size),
            _NORMS[norm](size),  # nn.Identity ignores the width
            _ACTIVATIONS[activation](),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )
        layers[f"block{i}"] = _Residual(block, width, size) if residual else block
        width = size
    layers["head"] = nn.Linear(width, out_features)
    return nn.Sequential(layers)


class _Residual(nn.Module):
    """`block(x) + skip(x)`, where `skip` is the identity or a projection to the new width."""

    def __init__(self, block: nn.Module, in_width: int, out_width: int) -> None:
        super().__init__()
        self.block = block
        self.skip = (
            nn.Identity() if in_width == out_width else nn.Linear(in_width, out_width, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.skip(x)  # (B, out_width)
