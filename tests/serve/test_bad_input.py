"""Bad input is the client's error, never a 500; limits answer 413 / 415 / 503 / 504."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import httpx
import pytest

from dlpipe import runs
from dlpipe.serve import ServeSettings


@pytest.fixture(scope="module")
def strict_bundle(binary_run, kit, tmp_path_factory):
    """The binary bundle with `features.unseen: error`: an unseen category is refused."""

    def strict(features):
        features["inputs"]["params"]["unseen"] = "error"
        for part in features["inputs"]["fitted"]["parts"].values():
            if "unseen" in part["params"]:
                part["params"]["unseen"] = "error"

    return kit.copy_bundle(binary_run.rundir.file(runs.EXPORT),
                           tmp_path_factory.mktemp("strict") / "bundle",
                           edit={"features.json": strict})


@pytest.fixture(scope="module")
def server(strict_bundle, kit):
    live = kit.LiveServer(ServeSettings(path=strict_bundle, max_rows=5,
                                        max_body_bytes=4000)).wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def row(binary_run, kit):
    return kit.rows_of(binary_run.rundir.read_split("test"))[0]


def post(server, body, path="/predict", **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.client.post(path, content=content,
                              headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(("change", "status", "message"), [
    (lambda r: r.pop("color"), 422,
     r"rows[1].color: missing field (expected a category (string, number or boolean) or null)"),
    (lambda r: r.update(x0="abc"), 422, 'rows[1].x0: expected a number or null; got "abc"'),
    (lambda r: r.update(x0=[1]), 422, "rows[1].x0: expected a number or null; got [1]"),
    (lambda r: r.update(color={"a": 1}), 422, "rows[1].color: expected a category"),
    (lambda r: r.update(extra=1), 422, "rows[1].extra: unexpected field; the model's fields "
                                       "are x0, x1, x 2, x3, color"),
    (lambda r: r.update(color="mauve"), 422,
     "rows[1].color: unseen category 'mauve'; known: blue, green, red"),
])
def test_a_bad_field_is_a_4xx_naming_the_row_and_the_field(server, row, change, status,
                                                           message):
    bad = dict(row)
    change(bad)
    reply = post(server, {"rows": [row, bad]})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinities_are_refused_where_a_number_is_expected(server, row, token):
    text = json.dumps({"rows": [row, {**row, "x1": 12345.5}]}).replace("12345.5", token)
    reply = post(server, text.encode())
    assert reply.status_code == 422
    assert reply.json()["error"].startswith(f"rows[1].x1: {token} is not allowed")
    assert reply.json()["detail"] == [{"loc": ["rows", 1, "x1"],
                                       "msg": reply.json()["error"].split(": ", 1)[1]}]


def test_null_is_a_missing_value_and_is_imputed(server, row):
    reply = post(server, {"rows": [{**row, "x0": None, "color": None}]})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"rows": [', 400, "body: malformed JSON"),
    (b"", 400, "body: malformed JSON"),
    (b"[1, 2]", 400, 'body: expected a JSON object {"rows": [...]}; got [1, 2]'),
    (b'{"rows": []}', 422, "rows: rows should have at least 1 item, not 0"),
    (b'{"rows": {"x0": 1}}', 422, "rows: "),
    (b'{"row": []}', 422, "rows: missing field"),
])
def test_a_malformed_or_empty_body_is_a_4xx_with_a_message(server, body, status, message):
    reply = post(server, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"].startswith(message)


def test_rows_per_request_are_limited(server, row):
    reply = post(server, {"rows": [row] * 6})
    assert reply.status_code == 422
    assert reply.json()["error"] == "rows: rows should have at most 5 items, not 6"


def test_many_bad_rows_are_listed_up_to_ten(server, row):
    reply = post(server, {"rows": [{**row, "x0": "a"}] * 5 + [{**row, "x1": "b"}] * 0})
    assert reply.status_code == 422
    assert reply.json()["error"].count("expected a number") == 5


@pytest.mark.parametrize(("request_body", "status", "message"), [
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]},
     400, "inputs['input']: shape [1, 4] does not match the model's [-1, 5]"),
    ({"inputs": [{"name": "input", "shape": [2, 5], "datatype": "FP32", "data": [0] * 9}]},
     400, "inputs['input']: shape [2, 5] needs 10 elements; got 9"),
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP64", "data": [0] * 5}]},
     400, "inputs['input']: datatype FP64 does not match the model's FP32"),
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32",
                  "data": [None, 1, 2, 3, 4]}]}, 400, "inputs['input']: data mixes types"),
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32",
                  "data": ["a", 1, 2, 3, 4]}]}, 400, "inputs['input']: FP32 data must be numbers"),
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}],
      "outputs": [{"name": "logits"}]}, 400, "outputs: model churn has no output 'logits'"),
    ({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP99", "data": [0] * 5}]},
     400, "inputs[0].datatype: Input should be 'BOOL'"),
    ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0]}]},
     400, "inputs: model churn takes the tensor 'input'"),
    ({"inputs": []}, 400, "inputs: List should have at least 1 item"),
])
def test_v2_bad_tensors_are_400_with_an_error_body(server, request_body, status, message):
    reply = post(server, request_body, "/v2/models/churn/infer")
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"}
    assert reply.json()["error"].startswith(message), reply.json()["error"]


def test_v2_nan_in_a_tensor_names_the_element(server):
    text = json.dumps({"inputs": [{"name": "input", "shape": [2, 5], "datatype": "FP32",
                                   "data": [0] * 7 + [12345.5] + [0] * 2}]})
    reply = post(server, text.replace("12345.5", "NaN").encode(), "/v2/models/churn/infer")
    assert reply.status_code == 400
    assert reply.json() == {"error": "inputs['input']: element [1, 2] is nan; NaN and "
                                     "infinities are not allowed"}


def test_unknown_models_versions_and_routes_are_404_with_an_error_body(server):
    reply = server.client.get("/v2/models/nope")
    assert reply.status_code == 404 and reply.json() == {
        "error": "no model named 'nope'; serving churn"}
    reply = server.client.get("/v2/models/churn/versions/0/ready")
    assert reply.status_code == 404 and "has no version '0'" in reply.json()["error"]
    assert server.client.get("/nowhere").json() == {"error": "Not Found"}
    assert server.client.get("/predict").status_code == 405


def test_a_body_over_the_limit_is_413_before_parsing(server, row):
    big = json.dumps({"rows": [row] * 40}).encode()  # > 4000 bytes
    reply = post(server, big)
    assert reply.status_code == 413
    assert reply.json()["error"].startswith(f"request body too large: Content-Length {len(big)}")


def test_a_chunked_body_over_the_limit_is_413(server, row):
    chunk = json.dumps(row).encode() + b","

    def body():
        yield b'{"rows": ['
        for _ in range(60):
            yield chunk

    reply = server.client.post("/predict", content=body(),
                               headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert "a streamed body of more than 4000 bytes" in reply.json()["error"]


def test_a_gzip_body_is_limited_after_decompression(server, row):
    small = gzip.compress(json.dumps({"rows": [row]}).encode())
    assert post(server, small, **{"content-encoding": "gzip"}).status_code == 200
    bomb = gzip.compress(b'{"rows": [' + b" " * 1_000_000 + b"]}")
    assert len(bomb) < 4000
    reply = post(server, bomb, **{"content-encoding": "gzip"})
    assert reply.status_code == 413
    assert "a gzip body that expands past 4000 bytes" in reply.json()["error"]
    reply = post(server, b"not gzip", **{"content-encoding": "gzip"})
    assert reply.status_code == 400
    reply = post(server, small, **{"content-encoding": "br"})
    assert reply.status_code == 415 and "'br' is not supported" in reply.json()["error"]


class Slow:
    """An ONNX Runtime session that takes `seconds` per call."""

    def __init__(self, session, seconds):
        self.session, self.seconds = session, seconds

    def run(self, names, feeds):
        time.sleep(self.seconds)
        return self.session.run(names, feeds)

    def get_inputs(self):
        return self.session.get_inputs()


def burst(server, row, n):
    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"rows": [row]})
                                          for _ in range(n)))

    return asyncio.run(go())


def test_a_full_queue_is_503_with_retry_after(live, binary_run, row):
    server = live(path=binary_run.path, max_queue=1, max_batch_size=1, max_delay_ms=0)
    batcher = server.state.models[0].batcher
    batcher.session = Slow(batcher.session, 0.4)
    replies = burst(server, row, 5)
    codes = sorted(r.status_code for r in replies)
    # One request runs, one waits in the queue; the others find it full.
    assert codes.count(200) in (1, 2) and codes.count(503) == 5 - codes.count(200)
    refused = next(r for r in replies if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"].startswith("server busy: 1 requests are queued for model "
                                              "churn (max_queue 1)")
    assert server.metric("dlpipe_requests_total", route="/predict", status="503") >= 3


def test_a_request_past_its_deadline_is_504(live, binary_run, row):
    server = live(path=binary_run.path, timeout_s=0.2)
    batcher = server.state.models[0].batcher
    batcher.session = Slow(batcher.session, 0.5)
    reply = server.client.post("/predict", json={"rows": [row]})
    assert reply.status_code == 504
    assert reply.json()["error"].startswith("request timed out: no answer within 0.2 s")


def test_a_number_too_large_for_float32_is_422_not_nan(server, row):
    reply = post(server, {"rows": [row, {**row, "x3": 1e300}]})
    assert reply.status_code == 422
    assert reply.json()["error"].startswith("rows[1].x3: 1e+300 is beyond float32's range")
