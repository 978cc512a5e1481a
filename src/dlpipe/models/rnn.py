"""Text models over token ids: recurrent (`rnn`: LSTM, GRU, plain RNN) and 1-D convolutional
(`textcnn`) encoders, each followed by an MLP head.

The input is one text column's block of the model matrix: float32 (B, L) token ids, 0 =
padding (right-padded), 1 = out of vocabulary. Padding never reaches the result: a text gives
the same output whatever padding follows it, and a row of padding only counts as one token.

Two ways to run a recurrent encoder, which compute the same function (tested):

- **training, and anything on a GPU**: packed sequences (`pack_padded_sequence`), so each
  direction runs over each text's own tokens only, as PyTorch recommends;
- **export, and evaluation on the CPU**: the recurrent ops over the whole padded block, which
  `torch.export` and ONNX take (packing has data-dependent shapes and does not export). The
  forward direction needs nothing more (its output at a token never sees what follows); the
  backward direction runs forward over each text reversed *within its own length* (a gather),
  and its outputs are gathered back into place.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlpipe.errors import ConfigError, suggest
from dlpipe.models import MODELS
from dlpipe.models.mlp import _ACTIVATIONS, Activation

__all__ = ["RecurrentEncoder", "TextConvEncoder", "load_vectors", "rnn", "text_lengths",
           "textcnn"]

log = logging.getLogger("dlpipe.models")

Cell = Literal["lstm", "gru", "rnn"]
Pooling = Literal["last", "mean", "max", "attention"]
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
POOLINGS = ("last", "mean", "max", "attention")
PAD = 0

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]


def text_lengths(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text's length and the mask of its positions, from right-padded token ids.

    The length is the position of the last non-padding id plus one (at least 1, so a row of
    padding is one padding token); a 0 inside a text counts as a token.

    Args:
        ids: (B, L) token ids, any dtype.

    Returns:
        lengths (B,) int64 in [1, L], and valid (B, L) bool: position < length.
    """
    positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)  # (L,)
    lengths = (ids.ne(PAD) * positions).amax(dim=1).clamp(min=1)  # (B,)
    return lengths, positions.unsqueeze(0) <= lengths.unsqueeze(1)  # (B,), (B, L)


class RecurrentEncoder(nn.Module):
    """Embed token ids, run a recurrent network over them, pool its outputs to one vector.

    Args:
        vocab_size: Number of token ids (id 0 is padding).
        embedding_dim: Width of each token embedding.
        cell: ``lstm``, ``gru`` or ``rnn`` (tanh).
        hidden: Units of each direction of each layer.
        layers: Stacked recurrent layers.
        bidirectional: Add a direction that reads each text backwards.
        dropout: Probability of zeroing an embedding unit, and between stacked layers.
        pooling: ``last`` (final state; both directions' when bidirectional, like Keras'
            `Bidirectional(LSTM)`), ``mean`` / ``max`` over the text's positions, or
            ``attention`` (a learned score per position, softmax over the text).
        path: The config section, for error messages (``model``, ``model.encoders.review``).

    Attributes:
        out_features: Width of the output, `hidden` times the number of directions.

    Example:
        >>> encoder = RecurrentEncoder(1000, cell="gru", bidirectional=True, pooling="max")
        >>> encoder(torch.tensor([[5.0, 9.0, 0.0]])).shape
        torch.Size([1, 128])
    """

    def __init__(self, vocab_size: int, *, embedding_dim: int = 64, cell: str = "lstm",
                 hidden: int = 64, layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, pooling: str = "last", path: str = "model") -> None:
        super().__init__()
        problems = _check_sizes(path, vocab_size=vocab_size, embedding_dim=embedding_dim,
                                hidden=hidden, layers=layers)
        problems += _check_choice(path, "cell", cell, CELLS)
        problems += _check_choice(path, "pooling", pooling, POOLINGS)
        problems += _check_probability(path, "dropout", dropout)
        if problems:
            raise ConfigError(problems)
        self.cell, self.pooling, self.hidden = cell, pooling, hidden
        self.layers, self.bidirectional = layers, bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.rnn = CELLS[cell](embedding_dim, hidden, num_layers=layers, batch_first=True,
                               bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)  # PyTorch warns at 1
        self.out_features = hidden * (2 if bidirectional else 1)
        self.attention = nn.Linear(self.out_features, 1) if pooling == "attention" else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Map float32 token ids (B, L) to (B, out_features).

        Packed sequences when training and on a GPU (cuDNN's packed kernels; its
        one-direction calls would copy the weights on every call); the exportable ops under
        `torch.export` and when evaluating on the CPU, so that CPU evaluation runs the very
        ops of the ONNX graph.
        """
        exporting = torch.compiler.is_exporting()
        return self.encode(ids, packed=(self.training or ids.is_cuda) and not exporting)

    def encode(self, ids: torch.Tensor, *, packed: bool) -> torch.Tensor:
        """`forward` with the way to run chosen: `packed` sequences, or the exportable ops."""
        lengths, valid = text_lengths(ids)
        x = self.dropout(_embed(self.embedding, ids))  # (B, L, E)
        run = self._packed if packed else self._padded
        outputs, last = run(x, lengths)  # (B, L, D*H) or None, (B, D*H)
        if self.pooling == "last":
            return last
        assert outputs is not None  # noqa: S101 (only `last` pooling skips the outputs)
        if self.pooling == "mean":
            total = (outputs * valid.unsqueeze(-1)).sum(dim=1)  # (B, D*H)
            return total / lengths.unsqueeze(1).to(outputs.dtype)
        if self.pooling == "max":
            return _masked_max(outputs, valid.unsqueeze(-1), dim=1)
        scores = self.attention(outputs).squeeze(-1)  # (B, L)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1)  # exactly 0 past the text
        return (weights.unsqueeze(-1) * outputs).sum(dim=1)

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # (layers*D, B, H), batch order
        directions = 2 if self.bidirectional else 1
        last = torch.cat(list(h_n[-directions:]), dim=1)  # (B, D*H): forward, then backward
        if self.pooling == "last":
            return None, last
        outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return outputs, last  # outputs are 0 past each text

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        order = _reversal(lengths, x.shape[1]) if self.bidirectional else None  # (B, L)
        for layer in range(self.layers):
            if layer:
                x = F.dropout(x, self.rnn.dropout, self.training)
            # Forward: the output at a token has seen tokens 0..t only, never the padding.
            outputs = [self._direction(x, layer, reverse=False)]  # (B, L, H)
            if order is not None:
                backward = self._direction(_gather_time(x, order), layer, reverse=True)
                outputs.append(_gather_time(backward, order))  # (B, L, H), back in place
            x = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # (B, L, D*H)
        h = self.hidden
        end = (lengths - 1).view(-1, 1, 1).expand(-1, 1, h)  # (B, 1, H): the last token
        last = x[..., :h].gather(1, end).squeeze(1)  # (B, H)
        if order is not None:  # the backward pass ends at the first token
            last = torch.cat([last, x[:, 0, h:]], dim=1)  # (B, 2H)
        return x, last

    def _direction(self, x: torch.Tensor, layer: int, *, reverse: bool) -> torch.Tensor:
        """One layer, one direction of `self.rnn`, run forward over `x` (B, L, in).

        Calling the module itself under `torch.export` would work too, but only for whole
        (both-direction) layers, and it warns about its cached `_flat_weights`."""
        suffix = "_reverse" if reverse else ""
        weights = [getattr(self.rnn, f"{name}_l{layer}{suffix}")
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, x.shape[0], self.hidden)  # (1, B, H)
        # The functional forms of nn.LSTM / GRU / RNN, one layer, one direction, no dropout:
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
        # batch_first). They export to ONNX LSTM / GRU ops (the tanh RNN is unrolled).
        if self.cell == "lstm":
            return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
        function = torch.gru if self.cell == "gru" else torch.rnn_tanh
        return function(x, h0, weights, True, 1, 0.0, self.training, False, True)[0]


class TextConvEncoder(nn.Module):
    """Embed token ids, convolve them with several window widths, max-pool over the text.

    Kim (2014)'s text CNN. Each width `k` has `filters` Conv1d filters; a window starts at
    every token of the text (the embeddings are right-padded with k - 1 zeros), and windows
    starting past the text are masked out of the max, so padding never wins.

    Args:
        vocab_size: Number of token ids (id 0 is padding).
        embedding_dim: Width of each token embedding.
        filters: Filters per window width.
        kernel_sizes: Window widths, in tokens.
        activation: Nonlinearity after each convolution, before the max.
        dropout: Probability of zeroing an embedding unit.
        path: The config section, for error messages.

    Attributes:
        out_features: ``filters * len(kernel_sizes)``.

    Example:
        >>> encoder = TextConvEncoder(1000, filters=32, kernel_sizes=(2, 3))
        >>> encoder(torch.tensor([[5.0, 9.0, 0.0]])).shape
        torch.Size([1, 64])
    """

    def __init__(self, vocab_size: int, *, embedding_dim: int = 64, filters: int = 64,
                 kernel_sizes: Sequence[int] = (3, 4, 5), activation: str = "relu",
                 dropout: float = 0.0, path: str = "model") -> None:
        super().__init__()
        problems = _check_sizes(path, vocab_size=vocab_size, embedding_dim=embedding_dim,
                                filters=filters)
        if not kernel_sizes:
            problems.append((f"{path}.kernel_sizes", "needs at least one window width"))
        for i, k in enumerate(kernel_sizes):
            problems += _check_sizes(path, **{f"kernel_sizes.{i}": k})
        problems += _check_choice(path, "activation", activation, _ACTIVATIONS)
        problems += _check_probability(path, "dropout", dropout)
        if problems:
            raise ConfigError(problems)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, filters, k) for k in kernel_sizes)
        self.activation = _ACTIVATIONS[activation]()
        self.out_features = filters * len(kernel_sizes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Map float32 token ids (B, L) to (B, out_features)."""
        _, valid = text_lengths(ids)
        x = _embed(self.embedding, ids)  # (B, L, E)
        x = self.dropout(x).transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in self.convs:
            k = conv.kernel_size[0]
            h = self.activation(conv(F.pad(x, (0, k - 1))))  # (B, filters, L)
            pooled.append(_masked_max(h, valid.unsqueeze(1), dim=2))  # (B, filters)
        return torch.cat(pooled, dim=1)


@MODELS.register("rnn")
def rnn(
    vocab_size: int,
    out_features: int,
    *,
    embedding_dim: PositiveInt = 64,
    cell: Cell = "lstm",
    hidden: PositiveInt = 64,
    layers: PositiveInt = 1,
    bidirectional: bool = False,
    dropout: Probability = 0.0,
    pooling: Pooling = "last",
    head: Sequence[PositiveInt] = (64,),
    head_dropout: Probability = 0.2,
    activation: Activation = "relu",
    vectors: str | None = None,
    freeze_embedding: bool = False,
    vocabulary: Sequence[str] | None = None,
) -> nn.Sequential:
    """Build a recurrent text classifier/regressor: `RecurrentEncoder`, then an MLP head.

    The Keras tutorial network ``Embedding(V, 64) → Bidirectional(LSTM(64)) → Dense(64,
    relu) → Dropout(0.2) → Dense(1)`` is ``rnn(V, 1, bidirectional=True)``. (PyTorch's LSTM
    has two bias vectors per gate where Keras has one: 4 * 64 more parameters per
    direction.)

    Args:
        vocab_size: Supplied by dlpipe: the text column's number of token ids.
        out_features: Supplied by dlpipe: 1 for regression and binary, classes otherwise.
        embedding_dim, cell, hidden, layers, bidirectional, dropout, pooling: as in
            `RecurrentEncoder`.
        head: Width of each hidden layer of the head (Linear → activation → dropout);
            ``[]`` puts a single Linear on the encoding.
        head_dropout: Dropout after each hidden layer of the head.
        activation: Nonlinearity of the head.
        vectors: Path of a text file of pretrained vectors, one ``word v1 v2 ...`` per line
            (GloVe; a word2vec header line is skipped), copied into the embedding rows of the
            vocabulary's tokens; its dimension must be `embedding_dim`.
        freeze_embedding: Keep the embedding fixed during training.
        vocabulary: Supplied by dlpipe on a fresh build: the tokens, index = id. Without it
            (a rebuild to load trained weights) `vectors` is not read.

    Returns:
        A module mapping float32 (B, L) token ids to (B, out_features): ``encoder``, ``head``.

    Raises:
        ConfigError: a bad setting, a vectors file that is missing, malformed or of another
            dimension (``model.vectors``).

    Example:
        >>> model = rnn(5000, 1, bidirectional=True, cell="gru", pooling="attention")
    """
    encoder = RecurrentEncoder(vocab_size, embedding_dim=embedding_dim, cell=cell,
                               hidden=hidden, layers=layers, bidirectional=bidirectional,
                               dropout=dropout, pooling=pooling)
    _prepare_embedding(encoder.embedding, vectors, vocabulary, freeze_embedding)
    return _with_head(encoder, out_features, head, head_dropout, activation)


@MODELS.register("textcnn")
def textcnn(
    vocab_size: int,
    out_features: int,
    *,
    embedding_dim: PositiveInt = 64,
    filters: PositiveInt = 64,
    kernel_sizes: Sequence[PositiveInt] = (3, 4, 5),
    dropout: Probability = 0.0,
    head: Sequence[PositiveInt] = (64,),
    head_dropout: Probability = 0.2,
    activation: Activation = "relu",
    vectors: str | None = None,
    freeze_embedding: bool = False,
    vocabulary: Sequence[str] | None = None,
) -> nn.Sequential:
    """Build a convolutional text model: `TextConvEncoder`, then an MLP head.

    Args:
        vocab_size, out_features, vocabulary: Supplied by dlpipe (see `rnn`).
        embedding_dim, filters, kernel_sizes, dropout: as in `TextConvEncoder`.
        head, head_dropout, activation, vectors, freeze_embedding: as in `rnn`; `activation`
            is also the convolutions'.

    Returns:
        A module mapping float32 (B, L) token ids to (B, out_features): ``encoder``, ``head``.

    Example:
        >>> model = textcnn(5000, 3, filters=100, kernel_sizes=[3, 4, 5], head=[])
    """
    encoder = TextConvEncoder(vocab_size, embedding_dim=embedding_dim, filters=filters,
                              kernel_sizes=tuple(kernel_sizes), activation=activation,
                              dropout=dropout)
    _prepare_embedding(encoder.embedding, vectors, vocabulary, freeze_embedding)
    return _with_head(encoder, out_features, head, head_dropout, activation)


def load_vectors(embedding: nn.Embedding, path: str | Path, vocabulary: Sequence[str], *,
                 field: str = "model.vectors") -> int:
    """Copy pretrained vectors into the rows of `embedding` whose token has one, in place.

    The padding and out-of-vocabulary rows (ids 0 and 1) are left alone, as are tokens
    without a vector (they keep their random initialisation).

    Args:
        embedding: The (V, E) embedding; `vocabulary` has V tokens, index = id.
        path: A text file, one ``word v1 ... vE`` per line (GloVe); a first line of two
            integers (word2vec's header) is skipped.
        field: The config field, for error messages.

    Returns:
        The number of rows set.

    Raises:
        ConfigError: naming `field`: the file is missing or unreadable, a line is malformed,
            the vectors are not E-dimensional, or no token of the vocabulary has a vector.
    """
    rows, dim = embedding.weight.shape
    if len(vocabulary) != rows:
        raise ConfigError([(field, f"the vocabulary has {len(vocabulary)} tokens but the "
                                   f"embedding has {rows} rows")])
    index = {token: i for i, token in enumerate(vocabulary) if i > 1}
    found: dict[int, list[float]] = {}
    for number, word, values in _vector_lines(Path(path), field):
        if len(values) != dim:
            raise ConfigError([(field, f"{str(path)!r} line {number}: {len(values)}-dimensional "
                                       f"vector, but the embedding is {dim}-dimensional "
                                       f"(model.embedding_dim); set embedding_dim: "
                                       f"{len(values)} or use other vectors")])
        i = index.get(word)
        if i is not None and i not in found:
            try:
                found[i] = [float(v) for v in values]
            except ValueError:
                raise ConfigError([(field, f"{str(path)!r} line {number}: the vector of "
                                           f"{word!r} holds a value that is not a number")]
                                  ) from None
    if not found:
        raise ConfigError([(field, f"none of the {len(index)} tokens of the vocabulary has a "
                                   f"vector in {str(path)!r}; check that the file's words are "
                                   f"cased like the vocabulary (features.text.lowercase)")])
    with torch.no_grad():
        ids = torch.tensor(list(found))
        embedding.weight[ids] = torch.tensor(list(found.values()), dtype=embedding.weight.dtype)
    log.info("model.vectors: %d of %d tokens got a pretrained vector", len(found), len(index))
    return len(found)


# -- helpers -------------------------------------------------------------------------------------


def _prepare_embedding(embedding: nn.Embedding, vectors: str | None,
                       vocabulary: Sequence[str] | None, freeze: bool) -> None:
    if vectors is not None and vocabulary is not None:
        load_vectors(embedding, vectors, vocabulary)
    if freeze:
        embedding.weight.requires_grad_(False)


def _with_head(encoder: nn.Module, out_features: int, hidden: Sequence[int], dropout: float,
               activation: str) -> nn.Sequential:
    """``encoder`` then ``head``: (Linear → activation → dropout) per width, then a Linear."""
    layers: list[nn.Module] = []
    width = encoder.out_features
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(OrderedDict(encoder=encoder, head=nn.Sequential(*layers)))


def _embed(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, E) embeddings of float ids, exactly 0 for padding whatever its row holds (a
    custom init, loaded vectors)."""
    return embedding(ids.long()) * ids.ne(PAD).unsqueeze(-1)


def _reversal(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) positions that reverse each text within its own length and keep the padding in
    place; applying it twice is the identity."""
    t = torch.arange(length, device=lengths.device)  # (L,)
    mirrored = lengths.unsqueeze(1) - 1 - t  # (B, L)
    return torch.where(mirrored >= 0, mirrored, t)


def _gather_time(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`x[b, order[b, t]]` for (B, L, F) `x` and (B, L) `order`."""
    return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _masked_max(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """The max of `x` over `dim`, among the positions where the (broadcast) `valid` is True."""
    return x.masked_fill(~valid, torch.finfo(x.dtype).min).amax(dim=dim)


def _check_sizes(path: str, **values: object) -> list[tuple[str, str]]:
    return [(f"{path}.{name}", f"must be an integer of at least 1; got {value!r}")
            for name, value in values.items()
            if not isinstance(value, int) or isinstance(value, bool) or value < 1]


def _check_choice(path: str, name: str, value: object, allowed: Sequence[str] | dict
                  ) -> list[tuple[str, str]]:
    if value in allowed:
        return []
    return [(f"{path}.{name}", f"unknown value {value!r}. {suggest(str(value), allowed)}")]


def _check_probability(path: str, name: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1:
        return []
    return [(f"{path}.{name}", f"must be a number in [0, 1); got {value!r}")]


def _vector_lines(path: Path, field: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, word, value strings) for each vector line of a GloVe/word2vec file."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(field, f"cannot read the vectors file {str(path)!r}: "
                                   f"{exc.strerror or exc}")]) from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if len(parts) < 2:
                    if line.strip():
                        raise ConfigError([(field, f"{str(path)!r} line {number}: expected "
                                                   f"'word v1 v2 ...'; got {line.strip()!r}")])
                    continue
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec's "<count> <dimension>" header
                yield number, parts[0], parts[1:]
        except UnicodeDecodeError:
            raise ConfigError([(field, f"the vectors file {str(path)!r} is not UTF-8 text")]
                              ) from None
