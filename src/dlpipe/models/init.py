"""Weight initialisation schemes (`model.init`), applied after a model is built."""

from __future__ import annotations

import torch
from torch import nn

from dlpipe.registry import Registry

INITS = Registry("init scheme")
"""Scheme name → function that initialises one weight tensor in place."""

# Layers whose weights a scheme sets; embeddings keep PyTorch's N(0, 1), norms their 1s and 0s.
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def apply_init(module: nn.Module, scheme: str, path: str = "model.init") -> None:
    """Initialise the weight of every Linear and Conv layer in `module` by `scheme`; zero biases.

    Args:
        module: The model, changed in place.
        scheme: A key of `INITS` or a `module:function` that initialises a tensor in place.
        path: The config field, for the error message.

    Raises:
        ConfigError: `scheme` is not a known scheme.

    Example:
        >>> apply_init(nn.Linear(4, 2), "xavier_uniform")
    """
    init = INITS.get(scheme, path=path)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, _LAYERS):
                init(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


@INITS.register("zeros")
def zeros(weight: torch.Tensor) -> None:
    """All zeros (every unit starts the same: only sensible for a linear model)."""
    nn.init.zeros_(weight)


@INITS.register("normal")
def normal(weight: torch.Tensor) -> None:
    """N(0, 0.05²), Keras' `RandomNormal` default."""
    nn.init.normal_(weight, mean=0.0, std=0.05)


@INITS.register("uniform")
def uniform(weight: torch.Tensor) -> None:
    """U(-0.05, 0.05), Keras' `RandomUniform` default."""
    nn.init.uniform_(weight, -0.05, 0.05)


@INITS.register("xavier_uniform")
def xavier_uniform(weight: torch.Tensor) -> None:
    """Glorot uniform: variance 2 / (fan_in + fan_out); suits tanh and sigmoid."""
    nn.init.xavier_uniform_(weight)


@INITS.register("xavier_normal")
def xavier_normal(weight: torch.Tensor) -> None:
    """Glorot normal: variance 2 / (fan_in + fan_out); suits tanh and sigmoid."""
    nn.init.xavier_normal_(weight)


@INITS.register("kaiming_uniform")
def kaiming_uniform(weight: torch.Tensor) -> None:
    """He uniform for ReLU: variance 2 / fan_in."""
    nn.init.kaiming_uniform_(weight, mode="fan_in", nonlinearity="relu")


@INITS.register("kaiming_normal")
def kaiming_normal(weight: torch.Tensor) -> None:
    """He normal for ReLU: variance 2 / fan_in."""
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")


@INITS.register("orthogonal")
def orthogonal(weight: torch.Tensor) -> None:
    """A (semi-)orthogonal matrix: W Wᵀ = I when W has no more rows than columns."""
    nn.init.orthogonal_(weight)
