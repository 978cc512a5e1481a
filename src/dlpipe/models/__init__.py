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

SUPPLIED = ("in_features", "out_features", "cardinalities", "in_shape", "vocab_size", "layout",
            "vocabulary")
"""Builder arguments dlpipe fills from the data; a config may not set them."""

INPUT_ARGS = {"in_shape": "image", "vocab_size": "text", "layout": None}
"""A builder's first parameter, by name, says what input it reads: `in_shape` one image
column ((C, H, W)), `vocab_size` one text column, `layout` every block (mixed inputs); any
other name gets the width of the tabular block (or of one image column, flattened)."""

# The builder modules register themselves on import, so they come after MODELS.
from dlpipe.models import cnn as _cnn  # noqa: E402, F401
from dlpipe.models import linear as _linear  # noqa: E402, F401
from dlpipe.models import mlp as _mlp  # noqa: E402, F401
from dlpipe.models import multi as _multi  # noqa: E402, F401
from dlpipe.models import rnn as _rnn  # noqa: E402, F401
from dlpipe.models._tabular import TabularInput  # noqa: E402
from dlpipe.models.init import INITS, apply_init  # noqa: E402

__all__ = ["INITS", "MODELS", "SUPPLIED", "TabularInput", "apply_init", "build", "tabular_layout"]


def tabular_layout(in_features: int, cardinalities: Sequence[int] = ()) -> list[dict[str, Any]]:
    """The layout of a tabular-only input: `in_features` numeric columns, then the indices."""
    return [{"name": "tabular", "kind": "tabular", "start": 0,
             "width": in_features + len(cardinalities), "n_numeric": in_features,
             "cardinalities": list(cardinalities)}]


def build(
    name: str,
    in_features: int,
    out_features: int,
    *,
    cardinalities: Sequence[int] = (),
    layout: Sequence[Mapping[str, Any]] | None = None,
    vocabulary: Sequence[str] | None = None,
    init: str | None = None,
    kwargs: dict[str, Any] | None = None,
    path: str = "model",
) -> nn.Module:
    """Build the model `name` for inputs of this layout and initialise its weights.

    Args:
        name: A key of `MODELS` or a `module:function` builder, called as
            `builder(input, out_features, **kwargs)`. What `input` is depends on the name of
            the builder's first parameter (`INPUT_ARGS`): the image shape `in_shape`, the
            text `vocab_size`, the whole `layout`, or else the number of numeric columns
            (plus `cardinalities=` when there are embedded columns or the builder takes them).
        in_features: Number of numeric input columns (features.json `n_numeric_`); ignored
            when `layout` is given.
        out_features: Number of outputs (1 for regression and binary, classes for multiclass).
        cardinalities: Index count of each embedded categorical column, after the numeric ones.
        layout: The blocks of the input (features.json `layout`); default a tabular block of
            `in_features` and `cardinalities`.
        vocabulary: The tokens of the one text column (index = id), for a builder that takes
            `vocabulary` (pretrained vectors). Given on a fresh build only, never when a
            network is rebuilt to load its weights.
        init: A key of `INITS`; default PyTorch's initialisation.
        kwargs: The builder's keyword arguments from the config.
        path: The config section, for error messages (`model.name`, `model.hidden`).

    Returns:
        The model, mapping the float32 `(B, F)` input to `(B, out_features)`.

    Raises:
        ConfigError: listing every problem: an unknown name or init scheme, a bad kwarg, a
            builder that cannot read this data's inputs or returns no `nn.Module`.

    Example:
        >>> model = build("mlp", 8, 3, init="kaiming_normal", kwargs={"hidden": [32]})
    """
    builder = MODELS.get(name, path=f"{path}.name")
    blocks = [dict(b) for b in layout] if layout is not None else tabular_layout(
        in_features, cardinalities)
    problems: list[tuple[str, str]] = []
    if init is not None:
        try:
            INITS.get(init, path=f"{path}.init")
        except ConfigError as exc:
            problems += exc.problems
    params, shape_args, shape_problems = _shape_params(builder, name)
    first, supplied, input_problems = _input_args(name, params, shape_args, blocks, vocabulary)
    problems += [(f"{path}.name", message) for message in [*shape_problems, *input_problems]]
    values, bad = bind_kwargs(builder, kwargs or {}, path, skip={*SUPPLIED, *shape_args})
    problems += bad
    if problems:
        raise ConfigError(problems)
    model = builder(first, out_features, **supplied, **values)
    if not isinstance(model, nn.Module):
        message = (f"builder {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
                   "a model builder must return an nn.Module")
        raise ConfigError([(f"{path}.name", message)])
    if init is not None:
        apply_init(model, init, path=f"{path}.init")
    return model


def _input_args(name: str, params: Mapping[str, inspect.Parameter], shape_args: list[str],
                blocks: list[dict[str, Any]], vocabulary: Sequence[str] | None
                ) -> tuple[Any, dict[str, Any], list[str]]:
    """What the builder's first argument gets, the supplied keywords, and problems."""
    arg = shape_args[0] if shape_args else "in_features"
    wants = INPUT_ARGS.get(arg, "tabular")
    kinds = [b["kind"] for b in blocks]
    described = ", ".join(f"{b['kind']} {b['name']!r}" if b["kind"] != "tabular" else
                          "tabular columns" for b in blocks)
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    supplied: dict[str, Any] = {}
    if arg == "layout":
        return blocks, supplied, []
    if wants in ("image", "text"):
        if kinds != [wants]:
            hint = "use model 'multi' for several inputs" if len(blocks) > 1 else (
                f"it needs one {wants} column")
            return None, {}, [f"model {name!r} reads one {wants} column; the data has "
                              f"{described}; {hint}"]
        block = blocks[0]
        if wants == "text" and vocabulary is not None and ("vocabulary" in params
                                                           or takes_var_kw):
            supplied["vocabulary"] = list(vocabulary)
        return (tuple(block["shape"]) if wants == "image" else block["vocab_size"]), supplied, []
    # A tabular builder: the tabular block, or one image column's pixels as plain columns.
    if kinds == ["image"]:
        return blocks[0]["width"], supplied, []
    if kinds != ["tabular"]:
        return None, {}, [f"model {name!r} reads tabular columns only; the data has "
                          f"{described}; use model 'multi' (or 'rnn' / 'cnn' for a single "
                          f"text / image column)"]
    cardinalities = blocks[0]["cardinalities"]
    if cardinalities or "cardinalities" in params:
        if cardinalities and "cardinalities" not in params and not takes_var_kw:
            return None, {}, [
                f"model {name!r} takes no `cardinalities`, but the features have "
                f"{len(cardinalities)} embedded categorical column(s); set "
                "features.categorical: onehot, or give the builder a `cardinalities` keyword "
                "argument"]
        supplied["cardinalities"] = tuple(cardinalities)
    return blocks[0]["n_numeric"], supplied, []


def _shape_params(
    builder: Callable[..., Any], name: str
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
    return params, shape_args, problems
