"""The convolutional network for image inputs: a stack of conv blocks, then an MLP head.

The model input is the flat float32 ``(B, C*H*W)`` image block the features stage writes
(channel-first, see docs/CONTRACTS.md); `ConvEncoder` views it as ``(B, C, H, W)``. Each block
is a dict in the config; a block is either plain (conv, batch norm, activation, pooling,
dropout) or residual (a ResNet basic block). The encoder is shared with the mixed-input model.

Example (YAML: the classic Keras MNIST network, which is the default)::

    model:
      name: cnn
      blocks: [{channels: 32, pool: max}, {channels: 64, pool: max}]
      hidden: [64]
      dropout: 0.5
"""

from __future__ import annotations

import typing
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from dlpipe._signature import describe
from dlpipe.errors import ConfigError, suggest
from dlpipe.models import MODELS
from dlpipe.models.mlp import _ACTIVATIONS, Activation

__all__ = ["TUTORIAL", "ConvBlock", "ConvEncoder", "cnn", "parse_blocks"]

Pool = Literal["flatten", "avg"]

TUTORIAL: tuple[dict[str, Any], ...] = (
    {"channels": 32, "kernel": 3, "pool": "max"},
    {"channels": 64, "kernel": 3, "pool": "max"},
)
"""The default blocks: Conv(32, 3) · MaxPool(2) · Conv(64, 3) · MaxPool(2)."""

# pydantic error types where the value has the right type but breaks a bound.
_CONSTRAINTS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


class ConvBlock(BaseModel):
    """One block of a `ConvEncoder`, as written in the config."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    channels: int = Field(ge=1)
    """Output channels of the block's convolutions."""

    kernel: int = Field(default=3, ge=1)
    """Side of the square convolution kernel."""

    stride: int = Field(default=1, ge=1)
    """Stride of the (first) convolution."""

    padding: Annotated[int, Field(ge=0)] | Literal["same"] = 0
    """Zero padding on each side, or `same` (kernel // 2, odd kernels: the size is kept at
    stride 1). Residual blocks always use `same`."""

    batch_norm: bool | None = None
    """Batch norm after each convolution; default on for residual blocks, off otherwise."""

    activation: Activation | None = None
    """Nonlinearity; default the model's `activation`."""

    pool: Literal["max", "avg"] | None = None
    """Pooling after the block (window and stride `pool_size`); none when absent."""

    pool_size: int = Field(default=2, ge=1)
    """Window and stride of the pooling."""

    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Probability of zeroing each value at the end of the block (training only)."""

    residual: bool | None = None
    """A ResNet basic block: two convolutions with a skip connection (a 1x1 projection where
    the shape changes); default the model's `residual`."""


def parse_blocks(blocks: Sequence[Mapping[str, Any] | ConvBlock],
                 path: str = "model") -> list[ConvBlock]:
    """Validate the config's block dicts; every problem is named at ``{path}.blocks[i].key``.

    Raises:
        ConfigError: listing every problem of every block.

    Example:
        >>> parse_blocks([{"channels": 32, "pool": "max"}])[0].kernel
        3
    """
    if isinstance(blocks, str | bytes | Mapping) or not isinstance(blocks, Sequence):
        raise ConfigError([(f"{path}.blocks", f"expected a list of blocks such as "
                                              f"[{{channels: 32}}]; got {blocks!r}")])
    if not blocks:
        raise ConfigError([(f"{path}.blocks", "needs at least one block; without convolutions "
                                              "use model.name: mlp")])
    parsed, problems = [], []
    for i, raw in enumerate(blocks):
        where = f"{path}.blocks[{i}]"
        if isinstance(raw, ConvBlock):
            parsed.append(raw)
        elif not isinstance(raw, Mapping):
            problems.append((where, f"expected a mapping such as {{channels: 32}}; got {raw!r}"))
        else:
            try:
                parsed.append(ConvBlock.model_validate(dict(raw)))
            except ValidationError as exc:
                problems += _block_problems(where, raw, exc)
    if problems:
        raise ConfigError(problems)
    return parsed


def _block_problems(where: str, raw: Mapping[str, Any],
                    exc: ValidationError) -> list[tuple[str, str]]:
    """One problem per bad key; a bound broken beats a union's other members' complaints."""
    by_key: dict[str, list[Any]] = {}
    for err in exc.errors():
        by_key.setdefault(str(err["loc"][0]) if err["loc"] else "", []).append(err)
    problems = []
    for key, errors in by_key.items():
        at = f"{where}.{key}" if key else where
        kinds = {err["type"] for err in errors}
        field = ConvBlock.model_fields.get(key)
        if "extra_forbidden" in kinds:
            problems.append((at, f"unknown key {key!r}. {suggest(key, ConvBlock.model_fields)}"))
        elif "missing" in kinds:
            problems.append((at, "required key is missing"))
        elif bound := next((e for e in errors if e["type"] in _CONSTRAINTS), None):
            problems.append((at, f"{bound['msg']}; got {bound['input']!r}"))
        elif (choices := _choices(field.annotation if field else None)) and isinstance(
                raw.get(key), str):
            problems.append((at, f"unknown value {raw[key]!r}. {suggest(raw[key], choices)}"))
        else:
            expected = describe(field.annotation) if field else "a valid value"
            problems.append((at, f"expected {expected}; got {raw.get(key)!r}"))
    return problems


def _choices(annotation: Any) -> list[str]:
    """The strings a Literal (possibly in a union or Annotated) allows."""
    if typing.get_origin(annotation) is Literal:
        return [a for a in typing.get_args(annotation) if isinstance(a, str)]
    return [c for a in typing.get_args(annotation) for c in _choices(a)]


class ConvEncoder(nn.Module):
    """A stack of conv blocks, then global average pooling or flattening.

    The input is the flat ``(B, C*H*W)`` image block (or already ``(B, C, H, W)``). When the
    first convolution's weight is in channels_last memory format (``model.to(
    memory_format=torch.channels_last)``, which dlpipe does on CUDA), the image is converted
    to channels_last as well, so the convolutions run on NHWC kernels.

    Args:
        in_shape: ``(C, H, W)`` of the images.
        blocks: The blocks, as config dicts (see `ConvBlock`) or `ConvBlock`s; default
            `TUTORIAL`.
        pool: ``avg`` (global average pooling: ``out_features`` = last channels) or
            ``flatten`` (``out_features`` = C' * H' * W').
        activation: Default nonlinearity of the blocks.
        residual: Default of the blocks' `residual`.
        path: The config section, for error messages.

    Attributes:
        out_shape: ``(C', H', W')`` after the last block.
        out_features: Width of the output.

    Raises:
        ConfigError: a bad block, or a stack that shrinks the image below 1x1 (naming the
            block and the layer).

    Example:
        >>> encoder = ConvEncoder((1, 28, 28), [{"channels": 8, "pool": "max"}], pool="avg")
        >>> encoder(torch.zeros(4, 784)).shape
        torch.Size([4, 8])
    """

    def __init__(self, in_shape: Sequence[int],
                 blocks: Sequence[Mapping[str, Any] | ConvBlock] = TUTORIAL,
                 pool: Pool = "flatten", *, activation: Activation = "relu",
                 residual: bool = False, path: str = "model") -> None:
        super().__init__()
        if len(in_shape) != 3 or any(int(d) < 1 for d in in_shape):
            raise ValueError(f"in_shape must be (C, H, W) with positive sizes; got "
                             f"{tuple(in_shape)}")
        if pool not in typing.get_args(Pool):
            raise ConfigError([(f"{path}.pool", f"unknown value {pool!r}. "
                                                f"{suggest(str(pool), typing.get_args(Pool))}")])
        if activation not in _ACTIVATIONS:
            raise ConfigError([(f"{path}.activation", f"unknown value {activation!r}. "
                                                      f"{suggest(activation, _ACTIVATIONS)}")])
        self.in_shape = tuple(int(d) for d in in_shape)
        self.pool = pool
        shape = self.in_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, spec in enumerate(parse_blocks(blocks, path)):
            block, shape, problem = _block(spec, shape, activation, residual)
            if problem:  # the shapes after a broken block mean nothing: stop at the first
                raise ConfigError([(f"{path}.blocks[{i}]", problem)])
            layers[f"block{i}"] = block
        self.blocks = nn.Sequential(layers)
        self.out_shape = shape
        self.out_features = shape[0] if pool == "avg" else shape[0] * shape[1] * shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C*H*W)`` (or ``(B, C, H, W)``) to ``(B, out_features)``."""
        if x.ndim == 2:
            x = x.reshape(-1, *self.in_shape)  # (B, C, H, W)
        weight = self._first_conv_weight()
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.blocks(x)  # (B, C', H', W')
        if self.pool == "avg":
            return x.mean(dim=(2, 3))  # (B, C')
        return x.flatten(1)  # (B, C' * H' * W'), in (C', H', W') order whatever the layout

    def _first_conv_weight(self) -> torch.Tensor:
        return next(m for m in self.blocks.modules() if isinstance(m, nn.Conv2d)).weight


@MODELS.register("cnn")
def cnn(
    in_shape: Sequence[int],
    out_features: int,
    *,
    blocks: Sequence[Mapping[str, Any]] = TUTORIAL,
    pool: Pool = "flatten",
    hidden: Sequence[Annotated[int, Field(ge=1)]] = (64,),
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
    activation: Activation = "relu",
    residual: bool = False,
) -> nn.Sequential:
    """Build conv blocks, then Linear → activation → dropout blocks and a Linear head.

    Args:
        in_shape: ``(C, H, W)`` of the images (supplied by dlpipe).
        out_features: Number of outputs (1 for regression and binary, classes for multiclass).
        blocks: The conv blocks, each a dict of `ConvBlock`'s keys: ``channels`` (required),
            ``kernel`` (3), ``stride`` (1), ``padding`` (0 or ``same``), ``batch_norm``,
            ``activation``, ``pool`` (``max``/``avg``), ``pool_size`` (2), ``dropout`` (0),
            ``residual``. Default: the Keras MNIST tutorial's two blocks.
        pool: ``flatten`` the last feature maps, or global-``avg``-pool them per channel.
        hidden: Widths of the head's hidden layers; ``[]`` goes straight to the output.
        dropout: Dropout after each hidden layer of the head.
        activation: Nonlinearity of the head, and of every block that sets none.
        residual: Default for the blocks' ``residual`` (ResNet basic blocks).

    Returns:
        A module mapping float32 ``(B, C*H*W)`` to ``(B, out_features)``.

    Raises:
        ConfigError: a bad block, naming it (``model.blocks[1].pool``), or a stack that
            shrinks the image below 1x1 (naming the block).

    Example:
        >>> model = cnn((1, 28, 28), 10)                               # the tutorial network
        >>> resnet = cnn((3, 32, 32), 10, pool="avg", hidden=[], residual=True,
        ...              blocks=[{"channels": 16}, {"channels": 32, "stride": 2}])
    """
    encoder = ConvEncoder(in_shape, blocks, pool, activation=activation, residual=residual)
    layers: OrderedDict[str, nn.Module] = OrderedDict(encoder=encoder)
    width = encoder.out_features
    for i, size in enumerate(hidden):
        layers[f"dense{i}"] = nn.Sequential(
            nn.Linear(width, size),
            _ACTIVATIONS[activation](),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )
        width = size
    layers["head"] = nn.Linear(width, out_features)
    return nn.Sequential(layers)


def _block(spec: ConvBlock, shape: tuple[int, int, int], activation: str,
           residual: bool) -> tuple[nn.Module, tuple[int, int, int], str | None]:
    """The block's module, its output shape, and a problem (None when all is well)."""
    c, h, w = shape
    is_residual = residual if spec.residual is None else spec.residual
    norm = is_residual if spec.batch_norm is None else spec.batch_norm
    act = _ACTIVATIONS[spec.activation or activation]
    k, s = spec.kernel, spec.stride
    if is_residual and "padding" in spec.model_fields_set and spec.padding != "same":
        return nn.Identity(), shape, ("residual blocks pad to keep the size ('same'); remove "
                                      f"padding: {spec.padding}")
    same = is_residual or spec.padding == "same"
    if same and k % 2 == 0:
        return nn.Identity(), shape, f"'same' padding needs an odd kernel; got kernel {k}"
    pad = k // 2 if same else int(spec.padding)
    h2, w2 = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    if h2 < 1 or w2 < 1:
        return nn.Identity(), shape, (
            f"the image shrinks below 1x1 at this block's {k}x{k} convolution (stride {s}, "
            f"padding {pad}): {h}x{w} pixels in, {max(h2, 0)}x{max(w2, 0)} out; use a smaller "
            "kernel or stride, padding: same, or fewer blocks or pooling before it")
    if is_residual:
        layers = [_BasicBlock(c, spec.channels, k, s, norm, act)]
    else:
        layers = [nn.Conv2d(c, spec.channels, k, s, pad, bias=not norm)]
        layers += [nn.BatchNorm2d(spec.channels)] if norm else []
        layers += [act()]
    if spec.pool is not None:
        ps = spec.pool_size
        if h2 // ps < 1 or w2 // ps < 1:
            return nn.Identity(), shape, (
                f"the image shrinks below 1x1 at this block's {ps}x{ps} {spec.pool} pooling: "
                f"{h2}x{w2} pixels in, {h2 // ps}x{w2 // ps} out; use a smaller pool_size, "
                "padding: same, or fewer blocks or pooling before it")
        layers.append(nn.MaxPool2d(ps) if spec.pool == "max" else nn.AvgPool2d(ps))
        h2, w2 = h2 // ps, w2 // ps
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers), (spec.channels, h2, w2), None


class _BasicBlock(nn.Module):
    """ResNet's basic block: ``act(bn(conv(act(bn(conv(x))))) + skip(x))``.

    `skip` is the identity, or a 1x1 convolution (+ batch norm) with the block's stride where
    the channels or the size change (He et al. 2016, option B).
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int, norm: bool,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        pad = kernel // 2

        def normed(conv: nn.Conv2d) -> nn.Module:
            return nn.Sequential(conv, nn.BatchNorm2d(channels)) if norm else conv

        self.conv1 = normed(nn.Conv2d(in_channels, channels, kernel, stride, pad, bias=not norm))
        self.act1 = activation()
        self.conv2 = normed(nn.Conv2d(channels, channels, kernel, 1, pad, bias=not norm))
        self.skip = (
            nn.Identity() if stride == 1 and in_channels == channels
            else normed(nn.Conv2d(in_channels, channels, 1, stride, bias=not norm))
        )
        self.act2 = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act1(self.conv1(x)))  # (B, channels, H', W')
        return self.act2(out + self.skip(x))
