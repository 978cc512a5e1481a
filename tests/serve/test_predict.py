"""Predictions over HTTP: equal to `dlpipe predict`, batched under concurrency, documented."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

import dlpipe
from dlpipe import runs
from dlpipe.serve import ServeSettings


@pytest.fixture(scope="module")
def server(binary_run, kit):
    # A long max_delay_ms makes concurrent requests meet in one batch for certain.
    live = kit.LiveServer(ServeSettings(path=binary_run.path, max_delay_ms=30)).wait_ready()
    yield live
    live.stop()


def test_predictions_equal_dlpipe_predict_on_the_same_rows(server, binary_run, kit):
    frame = binary_run.rundir.read_split("test")
    reply = server.client.post("/predict", json={"rows": kit.rows_of(frame)})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = dlpipe.load(binary_run.path).predict(frame.drop(columns=["target"]))
    assert body["model"] == "churn" and len(body["version"]) == 12
    assert [p["label"] for p in body["predictions"]] == expected.labels.tolist()
    served = np.array([[p["probabilities"][str(c)] for c in expected.classes]
                       for p in body["predictions"]])
    # ONNX Runtime vs PyTorch on the same fp32 weights: logits agree to ~1e-6, and the
    # sigmoid's slope is at most 1/4.
    np.testing.assert_allclose(served, expected.probabilities, rtol=1e-5, atol=1e-5)


def test_regression_answers_values_on_the_target_scale(live, exported, kit):
    run = exported("regression")
    server = live(path=run.path)
    frame = run.rundir.read_split("test").iloc[:20]
    body = server.client.post("/predict", json={"rows": kit.rows_of(frame)}).json()
    expected = dlpipe.load(run.path).predict(frame.drop(columns=["target"])).labels
    # fp32 outputs agree to 1e-5 relative; the inverse scaling multiplies by the target's std.
    np.testing.assert_allclose([p["value"] for p in body["predictions"]], expected,
                               rtol=1e-5, atol=1e-3)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, binary_run, kit):
    frame = binary_run.rundir.read_split("test").iloc[:40]
    rows = kit.rows_of(frame)
    expected = dlpipe.load(binary_run.path).predict(frame.drop(columns=["target"]))
    before = server.metric("dlpipe_batch_size_count", model="churn")

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"rows": [row]})
                                          for row in rows))

    replies = asyncio.run(burst())
    assert all(r.status_code == 200 for r in replies)
    labels = [r.json()["predictions"][0]["label"] for r in replies]
    assert labels == expected.labels.tolist()
    first = [r.json()["predictions"][0]["probabilities"]["yes"] for r in replies]
    np.testing.assert_allclose(first, expected.probabilities[:, 1], rtol=1e-5, atol=1e-5)
    batches = server.metric("dlpipe_batch_size_count", model="churn") - before
    # 40 one-row requests in fewer ONNX Runtime calls than requests: some batch held > 1 row.
    assert 1 <= batches < len(rows)
    assert server.metric("dlpipe_batch_size_sum", model="churn") >= len(rows)


def test_the_openapi_documents_the_exact_fields_of_the_bundle(server):
    spec = server.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    row = schemas["ChurnRow"]
    assert list(row["properties"]) == ["x0", "x1", "x 2", "x3", "color"]
    assert set(row["required"]) == {"x0", "x1", "x 2", "x3", "color"}
    assert row["additionalProperties"] is False
    assert "Seen in training: \"blue\", \"green\", \"red\"" in row["properties"]["color"][
        "description"]
    request = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"] == {"$ref": "#/components/schemas/ChurnPredictRequest"}
    assert schemas["ChurnPredictRequest"]["properties"]["rows"]["maxItems"] == 1024
    prediction = schemas["ChurnPrediction"]["properties"]
    assert prediction["label"]["enum"] == ["no", "yes"]
    assert set(schemas["ChurnProbabilities"]["properties"]) == {"no", "yes"}
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert server.client.get("/docs").status_code == 200


def test_v2_metadata_names_the_graph_input_and_the_outputs(server):
    meta = server.client.get("/v2/models/churn").json()
    assert meta["platform"] == "onnxruntime_onnx" and len(meta["versions"]) == 1
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 5]}]
    assert meta["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert server.client.get("/v2").json()["name"] == "dlpipe"
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    ready = server.client.get("/v2/models/churn/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "churn", "ready": True}
    version = meta["versions"][0]
    assert server.client.get(f"/v2/models/churn/versions/{version}").json() == meta


def test_v2_infer_on_the_feature_tensor_matches_predict(server, binary_run):
    from dlpipe.export import load_bundle

    frame = binary_run.rundir.read_split("test").iloc[:3]
    predictor = load_bundle(binary_run.rundir.file(runs.EXPORT))
    x = predictor.fitted.transform(frame)  # (3, 5) float32
    request = {"id": "42", "inputs": [{"name": "input", "shape": list(x.shape),
                                       "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    reply = server.client.post("/v2/models/churn/infer", json=request)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"] == "42" and body["model_name"] == "churn"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"] == {"name": "label", "shape": [3], "datatype": "BYTES",
                                "data": predictor.predict(frame).labels.tolist()}
    assert outputs["probabilities"]["shape"] == [3, 2]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (3, 2)),
                               predictor.predict(frame).probabilities, rtol=1e-6, atol=1e-6)
    raw = predictor.session.run(None, {"input": x})[0]
    np.testing.assert_allclose(outputs["output"]["data"], raw.reshape(-1), rtol=1e-6)
    # Nested data is accepted too; asking for one output returns only it.
    nested = {"inputs": [{**request["inputs"][0], "data": x.tolist()}],
              "outputs": [{"name": "label"}]}
    body = server.client.post("/v2/models/churn/infer", json=nested).json()
    assert [o["name"] for o in body["outputs"]] == ["label"] and "id" not in body


def test_v2_infer_on_one_tensor_per_raw_column_preprocesses_like_predict(server, binary_run,
                                                                         kit):
    frame = binary_run.rundir.read_split("test").iloc[:4]
    rows = kit.rows_of(frame)
    inputs = [{"name": c, "shape": [4], "datatype": "BYTES" if c == "color" else "FP64",
               "data": [r[c] for r in rows]} for c in rows[0]]
    body = server.client.post("/v2/models/churn/infer", json={"inputs": inputs}).json()
    labels = next(o for o in body["outputs"] if o["name"] == "label")["data"]
    predicted = server.client.post("/predict", json={"rows": rows}).json()["predictions"]
    assert labels == [p["label"] for p in predicted]


@pytest.mark.slow
def test_an_image_model_takes_base64_images_and_names_a_bad_one(live, kit, tmp_path):
    import base64
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    run = dlpipe.run(examples / "digits_cnn.yaml", run_dir=tmp_path / "run",
                     overrides=["train.epochs=1", "train.progress=never",
                                "export.parity_rows=16", "report.enabled=false"],
                     stages=("data", "features", "train", "evaluate", "export"))
    server = live(path=run.path)
    test = run.rundir.read_split("test").iloc[:8]
    rows = [{"image": base64.b64encode(v).decode()} for v in test["image"]]
    reply = server.client.post("/predict", json={"rows": rows})
    assert reply.status_code == 200, reply.text
    expected = dlpipe.load(run.path).predict(test.drop(columns=["target"]))
    assert [p["label"] for p in reply.json()["predictions"]] == expected.labels.tolist()
    garbage = base64.b64encode(b"not an image at all").decode()
    bad = server.client.post("/predict", json={"rows": [rows[0], {"image": garbage}]})
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("rows[1].image (19 bytes): neither an encoded image")
