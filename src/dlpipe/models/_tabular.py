"""The input layer shared by tabular models: numeric columns pass through, categorical index
columns are looked up in embeddings (layout in docs/CONTRACTS.md, features.json)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TabularInput(nn.Module):
    """Split the model input into numeric and index columns; embed the indices.

    The input is float32 `(B, n_numeric + len(cardinalities))`: `n_numeric` numeric columns,
    then one column per embedded categorical holding an integer index stored as a float
    (0 = the unseen bucket). With no cardinalities this layer is the identity.

    Only slicing, a cast and lookups, so it traces and exports to ONNX as is.

    Args:
        n_numeric: Number of leading numeric columns.
        cardinalities: Number of indices of each categorical column, the unseen bucket included.
        embedding_dim: Width of every embedding; default `min(50, (cardinality + 1) // 2)`
            per column.

    Attributes:
        in_features: Width of the input, `n_numeric + len(cardinalities)`.
        out_features: Width of the output, `n_numeric` plus the embedding widths.

    Example:
        >>> layer = TabularInput(3, [5, 10])             # 3 numeric, 2 categorical columns
        >>> layer(torch.tensor([[0.1, 0.2, 0.3, 4.0, 0.0]])).shape
        torch.Size([1, 11])
    """

    def __init__(
        self, n_numeric: int, cardinalities: Sequence[int] = (), embedding_dim: int | None = None
    ) -> None:
        super().__init__()
        if n_numeric < 0:
            raise ValueError(f"n_numeric must be at least 0; got {n_numeric}")
        for i, card in enumerate(cardinalities):
            if card < 1:
                raise ValueError(
                    f"cardinalities[{i}] must be at least 1 (the unseen bucket); got {card}"
                )
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be at least 1 or None; got {embedding_dim}")
        if n_numeric + len(cardinalities) == 0:
            raise ValueError("the model has no input: n_numeric is 0 and cardinalities is empty")
        self.n_numeric = n_numeric
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_dim or min(50, (card + 1) // 2)) for card in cardinalities
        )
        self.in_features = n_numeric + len(cardinalities)
        self.out_features = n_numeric + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map `(B, in_features)` float32 to `(B, out_features)`."""
        if not self.embeddings:
            return x
        numeric = x[:, : self.n_numeric]  # (B, n_numeric)
        index = x[:, self.n_numeric :].long()  # (B, n_categorical)
        embedded = [emb(index[:, i]) for i, emb in enumerate(self.embeddings)]  # each (B, d_i)
        return torch.cat([numeric, *embedded], dim=1)  # (B, out_features)
