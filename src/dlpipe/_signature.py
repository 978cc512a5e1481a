"""Check a component's config kwargs against its builder's signature: the signature is the schema.

`pipeline.check` calls `check_kwargs` for every component (model, optimizer, loss, ...) so that
all problems reach the user at once, each with its dotted config path, before any work starts.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dlpipe.errors import suggest

Problem = tuple[str, str]

# Errors where the value has the right type but breaks a bound: pydantic's message is clear.
_CONSTRAINTS = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of",
    "finite_number", "too_short", "too_long", "string_too_short", "string_too_long",
    "string_pattern_mismatch",
}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def check_kwargs(
    builder: Callable[..., Any],
    kwargs: Mapping[str, Any],
    path: str,
    skip: Iterable[str] = (),
) -> list[Problem]:
    """Return every problem with `kwargs` as arguments of `builder`; raise nothing.

    Args:
        builder: The function (or class) the kwargs are for.
        kwargs: The keyword arguments from the config.
        path: The config path of the component (`model`, `train.optimizer`), prefixed to
            each argument name in the problems.
        skip: Arguments dlpipe supplies itself (`in_features`, `params`); setting one in the
            config is a problem.

    Returns:
        `(dotted_path, message)` pairs, e.g.
        `("model.hidden", "expected a list of integers; got '256,128'")`; empty when all is well.

    Example:
        >>> def mlp(in_features: int, *, hidden: tuple[int, ...] = (64,)): ...
        >>> check_kwargs(mlp, {"hiden": [8]}, "model", skip=["in_features"])
        [('model.hiden', "unknown argument 'hiden'. Did you mean 'hidden'? Known: hidden")]
    """
    return bind_kwargs(builder, kwargs, path, skip)[1]


def bind_kwargs(
    builder: Callable[..., Any],
    kwargs: Mapping[str, Any],
    path: str,
    skip: Iterable[str] = (),
) -> tuple[dict[str, Any], list[Problem]]:
    """Like `check_kwargs`, and also return the kwargs as validated (e.g. `"0.1"` → `0.1`).

    Pass the returned values to the builder: a value pydantic accepted by coercion (YAML reads
    `1e-3` as a string) then reaches the builder with the annotated type.
    """
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return dict(kwargs), []
    skip = set(skip)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    keywords = {
        name: p for name, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in skip
    }
    hints = _type_hints(builder, params)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in kwargs.items():
        where = f"{path}.{name}"
        if name in skip:
            problems.append((where, "set by dlpipe, not by the config; remove it"))
        elif name not in keywords:
            if accepts_any:
                values[name] = value
            else:
                problems.append((where, f"unknown argument {name!r}. {suggest(name, keywords)}"))
        elif name in hints:
            value, problem = _validate(hints[name], value, where)
            values[name] = value
            if problem:
                problems.append(problem)
        else:
            values[name] = value
    for name, p in keywords.items():
        # Positional parameters are filled by the caller (in_features, params); keyword-only
        # ones without a default must come from the config.
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and name not in kwargs:
            problems.append((f"{path}.{name}", "required argument is missing"))
    return values, problems


def describe(annotation: Any) -> str:
    """Say in words what `annotation` accepts: `list[int]` → 'a list of integers'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0])
    if annotation is None or annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        named = [describe(a) for a in args if a is not type(None)]
        if len(named) < len(args):
            named.append("null")
        return " or ".join(named)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is bool:
        return "true or false"
    if annotation in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[annotation]
    if annotation is Any:
        return "any value"
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return "a mapping"
    if isinstance(origin, type) and issubclass(origin, Iterable) and origin is not str:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values" if args else "a list"
        item = args[0] if args else Any
        inner = typing.get_args(item)[0] if typing.get_origin(item) is typing.Annotated else item
        return f"a list of {_PLURALS.get(inner, 'values')}"
    name = getattr(annotation, "__name__", None) or str(annotation)
    return f"a {name}"


def _validate(annotation: Any, value: Any, where: str) -> tuple[Any, Problem | None]:
    try:
        adapter = TypeAdapter(annotation)
    except Exception:  # an annotation pydantic cannot build a schema for: accept the value
        return value, None
    try:
        return adapter.validate_python(value), None
    except ValidationError as exc:
        return value, _problem(annotation, value, exc, where)


def _problem(annotation: Any, value: Any, exc: ValidationError, where: str) -> Problem:
    for err in exc.errors():
        if err["type"] in _CONSTRAINTS:
            # List positions join the address as in config.py: model.hidden.1 for [64, 0].
            index = "".join(f".{part}" for part in err["loc"] if isinstance(part, int))
            return f"{where}{index}", f"{err['msg']}; got {err['input']!r}"
    choices = _literal_strings(annotation)
    if choices and isinstance(value, str):
        return where, f"unknown value {value!r}. {suggest(value, choices)}"
    return where, f"expected {describe(annotation)}; got {value!r}"


def _literal_strings(annotation: Any) -> list[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _literal_strings(args[0])
    if origin is typing.Literal:
        return [a for a in args if isinstance(a, str)]
    if origin in (typing.Union, types.UnionType):
        return [c for a in args for c in _literal_strings(a)]
    return []


def _type_hints(builder: Callable[..., Any], params: Mapping[str, inspect.Parameter]) -> dict:
    """Resolved annotations of `builder`'s parameters; unresolvable ones are left out."""
    target = builder.__init__ if isinstance(builder, type) else builder
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # one bad string annotation: resolve the others one by one
        hints = {}
        namespace = getattr(inspect.unwrap(target), "__globals__", {})
        for name, p in params.items():
            if p.annotation is p.empty:
                continue
            holder = types.SimpleNamespace(__annotations__={name: p.annotation})
            try:
                hints.update(typing.get_type_hints(holder, namespace, include_extras=True))
            except Exception:
                continue
    return {name: hint for name, hint in hints.items() if name in params}
