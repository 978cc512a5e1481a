"""Model builders: plain functions `(in_features, out_features, **kwargs) -> nn.Module`.

`MODELS` maps the names users type (`mlp`, `linear`) to builders; a config may also name any
`module:function` returning an `nn.Module`. `build` resolves a name, calls it and initialises
the weights. Shapes arrive as ints: this package imports no other stage.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from dlpipe._signature import bind_kwargs
from dlpipe.errors import ConfigError
from dlpipe.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
"""Model name → builder `(in_features, out_features, *, cardinalities=(), **kwargs)`."""

SUPPLIED = ("in_features", "out_features", "cardinalities")
"""Builder arguments dlpipe fills from the data; a config may not set them."""

# The builder modules register themselves on import, so they come after MODELS.
from dlpipe.models import linear as _linear  # noqa: E402, F401
from dlpipe.models import mlp as _mlp  # noqa: E402, F401
from dlpipe.models._tabular import TabularInput  # noqa: E402
from dlpipe.models.init import INITS, apply_init  # noqa: E402

__all__ = ["INITS", "MODELS", "SUPPLIED", "TabularInput", "apply_init", "build"]


def build(
    name: str,
    in_features: int,
    out_features: int,
    *,
    cardinalities: Sequence[int] = (),
    init: str | None = None,
    kwargs: dict[str, Any] | None = None,
    path: str = "model",
) -> nn.Module:
    """Build the model `name` for inputs of this layout and initialise its weights.

    Args:
        name: A key of `MODELS` or a `module:function` builder, called as
            `builder(in_features, out_features, **kwargs)` (plus `cardinalities=` when there
            are any or the builder takes them).
        in_features: Number of numeric input columns (features.json `n_numeric_`).
        out_features: Number of outputs (1 for regression and binary, classes for multiclass).
        cardinalities: Index count of each embedded categorical column, after the numeric ones.
        init: A key of `INITS`; default PyTorch's initialisation.
        kwargs: The builder's keyword arguments from the config.
        path: The config section, for error messages (`model.name`, `model.hidden`).

    Returns:
        The model, mapping float32 `(B, in_features + len(cardinalities))` to
        `(B, out_features)`.

    Raises:
        ConfigError: listing every problem: an unknown name or init scheme, a bad kwarg, a
            builder that cannot take the categorical columns or returns no `nn.Module`.

    Example:
        >>> model = build("mlp", 8, 3, init="kaiming_normal", kwargs={"hidden": [32]})
    """
    builder = MODELS.get(name, path=f"{path}.name")
    problems: list[tuple[str, str]] = []
    if init is not None:
        try:
            INITS.get(init, path=f"{path}.init")
        except ConfigError as exc:
            problems += exc.problems
    params, shape_args, shape_problems = _shape_params(builder, name, cardinalities)
    problems += [(f"{path}.name", message) for message in shape_problems]
    values, bad = bind_kwargs(builder, kwargs or {}, path, skip={*SUPPLIED, *shape_args})
    problems += bad
    if problems:
        raise ConfigError(problems)
    if cardinalities or "cardinalities" in params:
        values["cardinalities"] = tuple(cardinalities)
    model = builder(in_features, out_features, **values)
    if not isinstance(model, nn.Module):
        message = (f"builder {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
                   "a model builder must return an nn.Module")
        raise ConfigError([(f"{path}.name", message)])
    if init is not None:
        apply_init(model, init, path=f"{path}.init")
    return model


def _shape_params(
    builder: Callable[..., Any], name: str, cardinalities: Sequence[int]
) -> tuple[Mapping[str, inspect.Parameter], list[str], list[str]]:
    """The builder's parameters, the names of the two that get the shapes, and problems."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # no signature to read: trust the builder
        return {}, [], []
    kinds = [p.kind for p in params.values()]
    # The first two positional parameters get the shapes, whatever the builder calls them.
    shape_args = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY,
                                                              p.POSITIONAL_OR_KEYWORD)][:2]
    problems = []
    if len(shape_args) < 2 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        problems.append(f"builder {name!r} must take (in_features, out_features) as its first "
                        "two arguments")
    if (cardinalities and "cardinalities" not in params
            and inspect.Parameter.VAR_KEYWORD not in kinds):
        problems.append(
            f"model {name!r} takes no `cardinalities`, but the features have "
            f"{len(cardinalities)} embedded categorical column(s); set features.categorical: "
            "onehot, or give the builder a `cardinalities` keyword argument"
        )
    return params, shape_args, problems
