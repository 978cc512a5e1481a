"""Start-up (readiness, tuning), several bundles, request logging, shutdown, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from dlpipe import runs
from dlpipe.errors import ExportError, RunDirError
from dlpipe.serve.autotune import CANDIDATES
from dlpipe.serve.repository import discover


@pytest.fixture(scope="module")
def row(binary_run, kit):
    return kit.rows_of(binary_run.rundir.read_split("test"))[0]


def test_readiness_is_false_until_the_model_is_loaded_and_warmed_up(live, binary_run, row,
                                                                    monkeypatch):
    from dlpipe.serve import state

    gate = threading.Event()
    real = state.load_model

    def slow_load(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(state, "load_model", slow_load)
    server = live(path=binary_run.path, ready=False)
    deadline = time.monotonic() + 10
    while True:  # the port answers before the model is loaded
        try:
            assert server.client.get("/v2/health/live").json() == {"live": True}
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    ready = server.client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert server.client.get("/v2/models/churn/ready").json() == {"name": "churn",
                                                                  "ready": False}
    assert server.client.get("/health").json()["status"] == "loading"
    refused = server.client.post("/predict", json={"rows": [row]})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"].startswith("model churn version ") and refused.json()[
        "error"].endswith(" is loading")
    gate.set()
    server.wait_ready()
    assert server.client.post("/predict", json={"rows": [row]}).status_code == 200
    assert server.client.get("/health").json()["status"] == "ok"


def test_shutdown_lets_in_flight_requests_finish(live, binary_run, row):
    server = live(path=binary_run.path, max_batch_size=1, max_delay_ms=0)
    batcher = server.state.models[0].batcher
    real = batcher.session

    class Slow:
        def run(self, names, feeds):
            time.sleep(0.25)
            return real.run(names, feeds)

        def get_inputs(self):
            return real.get_inputs()

    batcher.session = Slow()
    replies: list = []

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            replies.extend(await asyncio.gather(*(client.post("/predict", json={"rows": [row]})
                                                  for _ in range(4))))

    sender = threading.Thread(target=asyncio.run, args=(burst(),))
    sender.start()
    while batcher.idle:  # wait until the requests are in
        time.sleep(0.005)
    time.sleep(0.05)
    server.stop()  # uvicorn's graceful shutdown, as on SIGTERM
    sender.join(30)
    assert [r.status_code for r in replies] == [200] * 4
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=2)


@pytest.fixture(scope="module")
def model_dir(binary_run, exported, kit, tmp_path_factory):
    """Two versions of churn (v2 newer) and one regression model, side by side."""
    folder = tmp_path_factory.mktemp("models")
    bundle = binary_run.rundir.file(runs.EXPORT)
    kit.copy_bundle(bundle, folder / "churn-v1", version="v1")
    time.sleep(1.1)  # manifest times have one-second resolution: v2 is the newer
    kit.copy_bundle(bundle, folder / "churn-v2", version="v2")
    kit.copy_bundle(exported("regression").rundir.file(runs.EXPORT), folder / "reg", name="reg")
    (folder / "notes").mkdir()  # folders that are not bundles are skipped
    return folder


def test_a_folder_of_bundles_serves_each_by_name_and_version(live, model_dir, row):
    server = live(path=model_dir)
    models = server.client.get("/models").json()["models"]
    assert [(m["name"], m["version"]) for m in models] == [("reg", models[0]["version"]),
                                                           ("churn", "v2"), ("churn", "v1")]
    meta = server.client.get("/v2/models/churn").json()
    assert meta["versions"] == ["v2", "v1"]
    newest = server.client.post("/models/churn/predict", json={"rows": [row]}).json()
    assert (newest["model"], newest["version"]) == ("churn", "v2")
    older = server.client.post("/models/churn/versions/v1/predict", json={"rows": [row]})
    assert older.json()["version"] == "v1"
    assert older.json()["predictions"] == newest["predictions"]
    tensor = {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32",
                          "data": [0.0] * 5}]}
    v1 = server.client.post("/v2/models/churn/versions/v1/infer", json=tensor).json()
    assert v1["model_version"] == "v1"
    # Two names: no bare /predict, which would be ambiguous.
    assert server.client.post("/predict", json={"rows": [row]}).status_code == 404
    paths = server.client.get("/openapi.json").json()["paths"]
    assert {"/models/churn/predict", "/models/churn/versions/v1/predict",
            "/models/reg/predict"} <= set(paths)


def test_discovery_refuses_what_it_cannot_serve(model_dir, binary_run, tmp_path, kit):
    with pytest.raises(RunDirError, match="does not exist"):
        discover(tmp_path / "missing")
    with pytest.raises(RunDirError, match=r"is not a bundle \(no manifest.json\), a run "
                                          r"directory with export/, or a folder of them"):
        discover(model_dir / "notes")
    with pytest.raises(ExportError, match="--name applies to one model; .* holds churn, reg"):
        discover(model_dir, name="x")
    twin = tmp_path / "twins"
    for folder in ("a", "b"):
        kit.copy_bundle(binary_run.rundir.file(runs.EXPORT), twin / folder, version="same")
    with pytest.raises(ExportError, match="are both churn version same; serve one of them"):
        discover(twin)
    renamed = discover(binary_run.path, name="churn-prod")
    assert [(s.name, s.run) for s in renamed] == [("churn-prod", binary_run.path)]
    tampered = kit.copy_bundle(binary_run.rundir.file(runs.EXPORT), tmp_path / "tampered")
    (tampered / "signature.json").write_text("{}")
    with pytest.raises(ExportError, match="signature.json does not match its sha256"):
        discover(tampered)


def test_a_bundle_without_a_reference_is_served_without_drift(live, binary_run, kit,
                                                              tmp_path):
    bundle = kit.copy_bundle(binary_run.rundir.file(runs.EXPORT), tmp_path / "old",
                             edit={"data_profile.json": lambda p: p.pop("reference")})
    server = live(path=bundle, precision="int8")
    described = server.client.get("/models").json()["models"][0]
    assert described["precision"] == "fp32" and described["drift_reference"] is False
    assert any("no model.int8.onnx" in n and "serving fp32" in n for n in described["notes"])
    assert any("no drift reference" in n for n in described["notes"])
    assert server.client.get("/v2/models/churn/drift").json()["available"] is False


def test_sampled_requests_and_predictions_are_logged_as_json_lines(live, binary_run, row,
                                                                  tmp_path):
    log = tmp_path / "logs" / "requests.jsonl"
    server = live(path=binary_run.path, log_requests=log)
    for _ in range(3):
        assert server.client.post("/predict", json={"rows": [row, row]}).status_code == 200
    server.settle()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[0]["model"] == "churn" and lines[0]["rows"] == [row, row]
    assert lines[0]["predictions"][0]["label"] in ("no", "yes")
    assert len(lines[0]["predictions"][0]["probabilities"]) == 2
    quiet = tmp_path / "none.jsonl"
    server = live(path=binary_run.path, log_requests=quiet, log_sample_rate=0.0)
    assert server.client.post("/predict", json={"rows": [row]}).status_code == 200
    assert server.settle() and quiet.read_text() == ""


def test_target_p99_tunes_the_batching_at_start_up_and_reports_it(live, binary_run):
    server = live(path=binary_run.path, target_p99_ms=50, tune_seconds=0.05, tune_clients=8)
    tuning = server.client.get("/models").json()["models"][0]["tuning"]
    chosen = (tuning["chosen"]["max_batch_size"], tuning["chosen"]["max_delay_ms"])
    assert chosen in CANDIDATES and tuning["target_p99_ms"] == 50
    # With 8 clients, batches past 16 rows cannot fill: the search stops there.
    assert [(t["max_batch_size"], t["max_delay_ms"]) for t in tuning["trials"]] == [
        c for c in CANDIDATES if c[0] <= 16]
    assert all(t["requests"] > 0 and t["errors"] == 0 for t in tuning["trials"])
    if tuning["met"]:
        best = max((t for t in tuning["trials"] if t["p99_ms"] <= 25), key=lambda t: t["rps"])
        assert chosen == (best["max_batch_size"], best["max_delay_ms"])
    batcher = server.state.models[0].batcher
    assert (batcher.max_batch_size, batcher.max_delay_ms) == chosen
    assert server.metric("dlpipe_batch_max_size", model="churn") == chosen[0]
    # Tuning traffic is not counted as predictions.
    assert server.metric("dlpipe_batch_size_count", model="churn") == 0


def _dlpipe(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dlpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_the_cli_refuses_a_path_without_bundles(tmp_path):
    done = _dlpipe("serve", tmp_path / "nothing")
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: serve: {tmp_path / 'nothing'} does not exist"


@pytest.mark.slow
def test_the_cli_serves_and_drains_in_flight_requests_on_sigterm(binary_run, row):
    with socket.socket() as sock:  # a free port (the server binds it right after)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A 1 s batching delay keeps requests in flight when SIGTERM arrives.
    server = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "serve", str(binary_run.path), "--port", str(port),
         "--max-delay-ms", "1000", "--max-batch-size", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        replies: list = []

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                replies.extend(await asyncio.gather(
                    *(client.post("/predict", json={"rows": [row]}) for _ in range(5))))

        sender = threading.Thread(target=asyncio.run, args=(burst(),))
        sender.start()
        time.sleep(0.4)
        server.send_signal(signal.SIGTERM)
        sender.join(30)
        # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully.
        assert server.wait(30) in (0, -signal.SIGTERM)
        assert [r.status_code for r in replies] == [200] * 5
        output = server.stdout.read()
        assert "ready: fp32 graph" in output and "Shutting down" in output
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.slow
def test_several_workers_share_the_port_and_sum_their_metrics(binary_run, row):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "dlpipe", "serve", str(binary_run.path), "--port", str(port),
         "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        ready, deadline = 0, time.monotonic() + 90
        while ready < 20 and time.monotonic() < deadline:  # new connections reach both workers
            try:
                ok = httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                ok = False
            ready = ready + 1 if ok else 0
            time.sleep(0.05)
        assert ready == 20
        for _ in range(12):
            reply = httpx.post(f"{url}/predict", json={"rows": [row]}, timeout=10)
            assert reply.status_code == 200
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{url}/metrics", timeout=10).text
        counted = sum(s.value for f in text_string_to_metric_families(text)
                      for s in f.samples if s.name == "dlpipe_requests_total"
                      and s.labels.get("route") == "/predict")
        assert counted == 12
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_precision_int8_serves_the_bundles_int8_graph(live, binary_run, kit, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    import dlpipe

    bundle = binary_run.rundir.file(runs.EXPORT)
    quantize_dynamic(bundle / "model.onnx", tmp_path / "int8.onnx")
    with_int8 = kit.copy_bundle(bundle, tmp_path / "bundle", add={
        "model.int8.onnx": (tmp_path / "int8.onnx").read_bytes()})
    server = live(path=with_int8, precision="int8")
    described = server.client.get("/models").json()["models"][0]
    assert described["precision"] == "int8" and described["variants"] == ["fp32", "int8"]
    assert server.metric("dlpipe_model_load_seconds", precision="int8") > 0
    frame = binary_run.rundir.read_split("test")
    served = server.client.post("/predict", json={"rows": kit.rows_of(frame)}).json()
    expected = dlpipe.load(binary_run.path).predict(frame.drop(columns=["target"]))
    yes = np.array([p["probabilities"]["yes"] for p in served["predictions"]])
    # int8 weights move probabilities by a few hundredths at most on this small network.
    np.testing.assert_allclose(yes, expected.probabilities[:, 1], atol=0.05)
    assert not np.allclose(yes, expected.probabilities[:, 1], atol=1e-6)  # really int8
