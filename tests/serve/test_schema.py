"""Request models generated from a signature: every column kind, including text and image."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from dlpipe.serve.schema import BadRequest, build_schemas, parse_rows

SIGNATURE = {
    "task": "multiclass", "classes": [0, 1, 2], "target": "label",
    "columns": [
        {"name": "age", "kind": "numeric", "dtype": "float64"},
        {"name": "plan", "kind": "categorical", "dtype": "object",
         "categories": ["basic", "pro"]},
        {"name": "smoker", "kind": "binary", "dtype": "bool", "categories": [False, True]},
        {"name": "review", "kind": "text", "dtype": "object"},
        {"name": "photo", "kind": "image", "dtype": "object"},
    ],
    "input": {"name": "input", "dtype": "float32", "shape": ["batch", 10]},
    "outputs": {"raw": {"name": "output", "shape": ["batch", 3]}},
}


@pytest.fixture(scope="module")
def schemas():
    return build_schemas(SIGNATURE, title="Mixed", max_rows=4)


def npy_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def body(**row):
    base = {"age": 41, "plan": "pro", "smoker": False, "review": "great service",
            "photo": npy_base64(np.zeros((8, 8)))}
    return json.dumps({"rows": [{**base, **row}]}).encode()


def test_a_valid_row_comes_back_in_column_order_with_the_image_decoded(schemas):
    rows = parse_rows(schemas, body())
    assert list(rows[0]) == ["age", "plan", "smoker", "review", "photo"]
    assert rows[0]["age"] == 41.0 and rows[0]["smoker"] is False
    photo = rows[0]["photo"]
    assert isinstance(photo, bytes) and photo.startswith(b"\x93NUMPY")
    assert np.load(io.BytesIO(photo), allow_pickle=False).shape == (8, 8)


@pytest.mark.parametrize(("row", "message"), [
    ({"review": "   "}, "rows[0].review: expected a string with at least one non-space "
                        "character"),
    ({"review": 3}, "rows[0].review: expected a string with at least one non-space character; "
                    "got 3"),
    ({"photo": "not base64!"}, "rows[0].photo: expected a base64 string; not valid base64"),
    ({"photo": ""}, "rows[0].photo: expected a base64 string; empty image"),
    ({"photo": None}, "rows[0].photo: expected a base64 string (an encoded image file or NPY "
                      "bytes); got null"),
    ({"plan": ["pro"]}, "rows[0].plan: expected a category (string, number or boolean) or "
                        "null; got [\"pro\"]"),
])
def test_text_and_image_fields_are_checked_with_row_and_field_in_the_message(schemas, row,
                                                                             message):
    with pytest.raises(BadRequest) as caught:
        parse_rows(schemas, body(**row))
    assert caught.value.status == 422
    assert str(caught.value).startswith(message)


def test_the_json_schema_says_what_each_kind_takes(schemas):
    schema = schemas.request.model_json_schema()
    row = schema["$defs"]["MixedRow"]["properties"]
    assert row["photo"]["contentEncoding"] == "base64" and row["photo"]["type"] == "string"
    assert row["review"] == {"description": "Text.", "pattern": "\\S", "title": "review",
                             "type": "string"}
    assert row["age"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert 'Seen in training: "basic", "pro".' in row["plan"]["description"]
    example = schema["examples"][0]["rows"][0]
    # The documented example is itself a valid request.
    assert parse_rows(schemas, json.dumps({"rows": [example]}).encode())
    response = schemas.response.model_json_schema()
    assert response["$defs"]["MixedPrediction"]["properties"]["label"]["enum"] == [0, 1, 2]


def test_an_unknown_column_kind_is_refused_by_name():
    signature = {**SIGNATURE, "columns": [{"name": "clip", "kind": "audio", "dtype": "object"}]}
    with pytest.raises(ValueError, match="column 'clip' has kind 'audio'"):
        build_schemas(signature, title="Bad", max_rows=1)
