"""Linear (and, under a sigmoid or softmax loss, logistic) regression: the baseline model."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field
from torch import nn

from dlpipe.models import MODELS
from dlpipe.models._tabular import TabularInput


@MODELS.register("linear")
def linear(
    in_features: int,
    out_features: int,
    *,
    cardinalities: Sequence[int] = (),
    embedding_dim: Annotated[int, Field(ge=1)] | None = None,
) -> nn.Sequential:
    """Build one affine map from the inputs (numeric columns and embeddings) to the outputs.

    The loss makes it linear regression (MSE) or logistic regression (cross-entropy).

    Args:
        in_features: Number of numeric input columns.
        out_features: Number of outputs (1 for regression and binary, classes for multiclass).
        cardinalities: Index count of each embedded categorical column (see `TabularInput`).
        embedding_dim: Width of every embedding; default `min(50, (cardinality + 1) // 2)`.

    Returns:
        A module mapping float32 `(B, in_features + len(cardinalities))` to
        `(B, out_features)`.

    Example:
        >>> model = linear(4, 1)
    """
    features = TabularInput(in_features, cardinalities, embedding_dim)
    head = nn.Linear(features.out_features, out_features)
    return nn.Sequential(OrderedDict(input=features, head=head))
