"""Request and response models of `/predict`, generated from a bundle's signature.json.

One row is a JSON object with exactly the model's input columns, each required (``null`` is
a missing value, imputed as in training)::

    numeric       number or null; NaN and infinities refused
    categorical   string, number or boolean (the categories seen in training are listed in
    binary        the field's description), or null; an unseen one follows the bundle's
                  preprocessing policy (the unseen bucket, or an error naming row and field)
    text          a string with at least one non-space character
    image         a base64 string: an encoded image file (PNG, JPEG, ...) or NPY bytes;
                  decoded to bytes before preprocessing

`parse_rows` validates a request body (pydantic-core parses the JSON and checks types in one
pass, in Rust) and turns every problem into one message naming the row and the field, e.g.
``rows[3].age: expected a number or null; got "abc"``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    with_config,
)
from typing_extensions import TypedDict

from dlpipe.errors import DataError

__all__ = ["BadRequest", "ModelSchemas", "build_schemas", "decode_base64", "parse_rows"]

_EXPECTED = {
    "numeric": "a number or null",
    "categorical": "a category (string, number or boolean) or null",
    "binary": "a value (string, number or boolean) or null",
    "text": "a string with at least one non-space character",
    "image": "a base64 string (an encoded image file or NPY bytes)",
}
_SHOWN_PROBLEMS = 10
_SHOWN_CATEGORIES = 20


class BadRequest(DataError):
    """A request the client must fix: malformed JSON (400) or invalid rows (422).

    Attributes:
        status: the HTTP status to answer with.
        problems: ``[{"loc": [...], "msg": ...}]``, one per bad field.
    """

    def __init__(self, message: str, *, status: int = 422,
                 problems: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = [dict(p) for p in problems]


@dataclass(frozen=True)
class ModelSchemas:
    """The generated models of one served bundle.

    Attributes:
        request: ``{"rows": [row, ...]}``; validates a request body.
        response: ``{"model", "version", "predictions": [...]}`` (documentation only: the
            server writes the JSON itself).
        columns: the input columns, in the bundle's order.
        kinds: column → kind.
        images: the image columns (base64-decoded by the request model).
    """

    request: type[BaseModel]
    response: type[BaseModel]
    columns: list[str]
    kinds: dict[str, str]
    images: list[str]


def decode_base64(value: str) -> bytes:
    """Strict base64 (standard alphabet, padding, whitespace ignored) → bytes."""
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if not data:
        raise ValueError("empty image")
    return data


def build_schemas(signature: Mapping[str, Any], *, title: str, max_rows: int) -> ModelSchemas:
    """Generate the request and response models of one bundle from its signature.

    Args:
        signature: signature.json.
        title: prefix of the models' names in OpenAPI (unique per served model).
        max_rows: most rows in one request (the request's ``maxItems``).

    Example:
        >>> schemas = build_schemas(signature, title="Tiny", max_rows=1024)
        >>> schemas.request.model_validate_json(b'{"rows": [{"age": 41, "color": "red"}]}')
    """
    columns = [c["name"] for c in signature["columns"]]
    fields = {c["name"]: _field(c) for c in signature["columns"]}
    row = with_config(ConfigDict(extra="forbid"))(TypedDict(f"{title}Row", fields))  # type: ignore[operator]
    example = {c["name"]: _example(c) for c in signature["columns"]}
    rows = Annotated[list[row], Field(min_length=1, max_length=max_rows,  # type: ignore[valid-type]
                                      description=f"1 to {max_rows} rows of raw input features.")]
    request = create_model(
        f"{title}PredictRequest", __config__=ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"rows": [example]}]}),
        rows=(rows, ...))
    return ModelSchemas(request=request, response=_response_model(signature, title),
                        columns=columns, kinds={c["name"]: c["kind"] for c in signature["columns"]},
                        images=[c["name"] for c in signature["columns"] if c["kind"] == "image"])


def parse_rows(schemas: ModelSchemas, body: bytes) -> list[dict[str, Any]]:
    """Validate a `/predict` body; return its rows (dicts in column order, images as bytes).

    Raises:
        BadRequest: 400 for a body that is not a JSON object, 422 naming every bad row and
            field otherwise (at most 10 listed).
    """
    try:
        return schemas.request.model_validate_json(body).rows  # type: ignore[attr-defined]
    except ValidationError as exc:
        raise rows_error(exc, schemas.kinds) from None


def rows_error(exc: ValidationError, kinds: Mapping[str, str]) -> BadRequest:
    """One `BadRequest` from pydantic's errors: one line per (row, field)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return BadRequest(f"body: malformed JSON: {first['msg'].removeprefix('Invalid JSON: ')}",
                          status=400, problems=[{"loc": ["body"], "msg": first["msg"]}])
    if not first["loc"] and first["type"] in ("model_type", "model_attributes_type"):
        return BadRequest('body: expected a JSON object {"rows": [...]}; got '
                          f"{_shown(first.get('input'))}", status=400,
                          problems=[{"loc": ["body"], "msg": first["msg"]}])
    problems: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"][:3])  # ("rows", i, column); deeper parts are union members
        if loc not in problems:
            problems[loc] = {"loc": list(loc), "msg": _message(err, loc, kinds)}
    lines = [f"{_where(p['loc'])}: {p['msg']}" for p in problems.values()]
    more = len(lines) - _SHOWN_PROBLEMS
    text = "; ".join(lines[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return BadRequest(text, status=422, problems=list(problems.values()))


# -- generation ---------------------------------------------------------------------------------


def _field(column: Mapping[str, Any]) -> Any:
    kind, name = column["kind"], column["name"]
    categories = column.get("categories")
    described = ""
    if categories is not None:
        shown = ", ".join(map(json.dumps, categories[:_SHOWN_CATEGORIES]))
        extra = f", ... ({len(categories)} in all)" if len(categories) > _SHOWN_CATEGORIES else ""
        described = f" Seen in training: {shown}{extra}."
    if kind == "numeric":
        return Annotated[float | None, Field(allow_inf_nan=False, title=name,
                                             description="Numeric; null is a missing value.")]
    if kind in ("categorical", "binary"):
        return Annotated[str | int | float | bool | None, Field(
            title=name, description=f"{kind.capitalize()}; null is a missing value.{described}")]
    if kind == "text":
        return Annotated[str, Field(title=name, pattern=r"\S", description="Text.")]
    if kind == "image":
        return Annotated[str, AfterValidator(decode_base64), Field(
            title=name, json_schema_extra={"contentEncoding": "base64"},
            description="Base64 of an encoded image file (PNG, JPEG, BMP, GIF, TIFF) or of "
                        "NPY bytes of an (H, W) or (H, W, C) array.")]
    raise DataError(f"signature.json: column {name!r} has kind {kind!r}, which the server "
                    f"does not know; upgrade dlpipe")


def _example(column: Mapping[str, Any]) -> Any:
    kind = column["kind"]
    if column.get("categories"):
        return column["categories"][0]
    return {"numeric": 0.0, "text": "an example text",
            # A 1x1 black PNG.
            "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVQI12NgAAAAAgAB4iG8"
                     "MwAAAABJRU5ErkJggg=="}.get(kind)


def _response_model(signature: Mapping[str, Any], title: str) -> type[BaseModel]:
    task, classes = signature["task"], list(signature.get("classes") or [])
    if task == "regression":
        prediction = create_model(f"{title}Prediction",
                                  value=(float, Field(description="The predicted value.")))
    else:
        label = Literal[tuple(classes)] if classes else Any  # type: ignore[valid-type]
        probabilities = TypedDict(f"{title}Probabilities",  # type: ignore[operator]
                                  {str(c): float for c in classes})
        prediction = create_model(
            f"{title}Prediction",
            label=(label, Field(description="The predicted class.")),
            probabilities=(probabilities, Field(
                description="Probability of each class, keyed by the class as text.")))
    return create_model(
        f"{title}PredictResponse",
        model=(str, Field(description="The model's name.")),
        version=(str, Field(description="The model's version (manifest.json).")),
        predictions=(list[prediction], Field(  # type: ignore[valid-type]
            description="One prediction per row, in the order of the rows.")))


# -- messages -----------------------------------------------------------------------------------


def _message(err: Mapping[str, Any], loc: tuple[Any, ...], kinds: Mapping[str, str]) -> str:
    kind = kinds.get(loc[2]) if len(loc) == 3 else None
    value = err.get("input")
    if err["type"] == "missing":
        return f"missing field (expected {_EXPECTED.get(kind or '', 'a value')})"
    if err["type"] == "extra_forbidden":
        known = ", ".join(kinds)
        return f"unexpected field; the model's fields are {known}"
    if err["type"] == "finite_number":
        return f"{_shown(value)} is not allowed; send a finite number, or null for a missing value"
    if loc == ("rows",) and err["type"] in ("too_short", "too_long"):
        return err["msg"].replace("List", "rows").replace(" after validation", "")
    if err["type"] == "value_error" and kind == "image":
        return f"expected a base64 string; {err['msg'].removeprefix('Value error, ')}"
    if kind is not None:
        return f"expected {_EXPECTED[kind]}; got {_shown(value)}"
    return f"{err['msg']}; got {_shown(value)}"


def _where(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _shown(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def rewrite_data_error(message: str) -> str:
    """A preprocessing error about the request's rows, addressed like the schema's errors:
    ``column 'color', row 3: ...`` → ``rows[3].color: ...`` (``row 3 (19 bytes):`` too)."""
    return re.sub(r"column '([^']*)', row (\d+)( \([^)]*\))?:", r"rows[\2].\1\3:", message,
                  count=1)
