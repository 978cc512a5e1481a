"""Mixed inputs: one encoder per input block (tabular, each text, each image), concatenated,
then an MLP head.

The model input is features.json's float32 (B, F) matrix; `layout` says which columns
belong to which block, so the model slices its input and no preprocessing lives in the graph
(it exports to ONNX with one input, like every other model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.models import MODELS
from dlpipe.models._tabular import TabularInput
from dlpipe.models.mlp import Activation, mlp

TEXT_ENCODERS = ("rnn", "textcnn", "bag")
IMAGE_ENCODERS = ("cnn", "flatten")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"name": "rnn", "bidirectional": True, "pooling": "mean"},
    "image": {"name": "cnn"},
}


class BagOfEmbeddings(nn.Module):
    """The mean of a text's token embeddings, padding (id 0) left out: order-blind, fast.

    Args:
        vocab_size: Number of token ids, padding included.
        embedding_dim: Width of each embedding and of the output.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.out_features = embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Map float token ids `(B, L)` to `(B, embedding_dim)`."""
        ids = ids.long()
        mask = (ids != 0).unsqueeze(-1).float()  # (B, L, 1)
        total = (self.embedding(ids) * mask).sum(dim=1)
        return total / mask.sum(dim=1).clamp(min=1.0)


class MultiInput(nn.Module):
    """Slice the input by `layout`, encode each block, concatenate, apply the head.

    Args:
        layout: features.json's blocks (``kind``, ``start``, ``width`` and the kind's sizes).
        encoders: one encoder module per block, in layout order, each with `out_features`.
        head: maps the concatenated encodings to the outputs.
    """

    def __init__(self, layout: Sequence[Mapping[str, Any]], encoders: Sequence[nn.Module],
                 head: nn.Module) -> None:
        super().__init__()
        self.slices = [(int(b["start"]), int(b["start"]) + int(b["width"])) for b in layout]
        self.encoders = nn.ModuleList(encoders)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map float32 `(B, F)` to `(B, out_features)`."""
        parts = [encoder(x[:, start:stop])
                 for (start, stop), encoder in zip(self.slices, self.encoders, strict=True)]
        return self.head(torch.cat(parts, dim=1))


@MODELS.register("multi")
def multi(
    layout: Sequence[Mapping[str, Any]],
    out_features: int,
    *,
    encoders: dict[str, dict[str, Any]] | None = None,
    hidden: Sequence[int] = (128,),
    dropout: float = 0.1,
    activation: Activation = "relu",
    embedding_dim: int | None = None,
) -> nn.Module:
    """A model over every input block: tabular columns, texts and images at once.

    Args:
        layout: supplied by dlpipe (features.json `layout`).
        out_features: supplied by dlpipe.
        encoders: per text or image column, ``{name: <encoder>, ...its arguments}``:
            text ``rnn`` (default: a bidirectional LSTM, mean-pooled; arguments as model
            `rnn` without the head), ``textcnn`` or ``bag`` (mean of embeddings); image
            ``cnn`` (default; arguments as model `cnn` without the head) or ``flatten``.
            Tabular columns always go through embeddings for indices and pass numbers as they
            are.
        hidden: widths of the head's hidden layers, over the concatenated encodings.
        dropout: dropout of the head.
        activation: activation of the head.
        embedding_dim: width of the embeddings of categorical columns (default by
            cardinality).

    Example (YAML)::

        model:
          name: multi
          encoders: {review: {name: rnn, hidden: 64, bidirectional: true}}
          hidden: [64]
    """
    encoders = dict(encoders or {})
    names = {b["name"] for b in layout if b["kind"] != "tabular"}
    unknown = sorted(set(encoders) - names)
    if unknown:
        raise ConfigError([(f"model.encoders.{unknown[0]}",
                            f"no text or image column {unknown[0]!r}; the data has "
                            f"{', '.join(sorted(names)) or 'none'}")])
    modules = [_encoder(block, encoders.get(block["name"]), embedding_dim) for block in layout]
    width = sum(m.out_features for m in modules)
    head = mlp(width, out_features, hidden=list(hidden), dropout=dropout, activation=activation)
    return MultiInput(layout, modules, head)


def _encoder(block: Mapping[str, Any], spec: Mapping[str, Any] | None,
             embedding_dim: int | None) -> nn.Module:
    kind = block["kind"]
    if kind == "tabular":
        return TabularInput(block["n_numeric"], block["cardinalities"], embedding_dim)
    settings = dict(_DEFAULTS[kind] if spec is None else spec)
    name = settings.pop("name", _DEFAULTS[kind]["name"])
    path = f"model.encoders.{block['name']}"
    known = TEXT_ENCODERS if kind == "text" else IMAGE_ENCODERS
    if name not in known:
        raise ConfigError([(f"{path}.name", f"{name!r} is not a {kind} encoder; use one of: "
                                            f"{', '.join(known)}")])
    try:
        if name == "rnn":
            from dlpipe.models.rnn import RecurrentEncoder

            return RecurrentEncoder(block["vocab_size"], **settings, path=path)
        if name == "textcnn":
            from dlpipe.models.rnn import TextConvEncoder

            return TextConvEncoder(block["vocab_size"], **settings, path=path)
        if name == "bag":
            return BagOfEmbeddings(block["vocab_size"], **settings)
        if name == "cnn":
            from dlpipe.models.cnn import ConvEncoder

            return ConvEncoder(tuple(block["shape"]), **settings, path=path)
        return _Flatten(block["width"])
    except TypeError as exc:  # an argument the encoder does not take
        raise ConfigError([(path, f"encoder {name!r}: {exc}")]) from None


class _Flatten(nn.Module):
    """An image's pixels as plain features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
