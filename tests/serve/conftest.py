"""Exported runs and live servers for the serve tests.

Runs are trained once per session (training is the slow part). A live server is uvicorn on
127.0.0.1 with an ephemeral port, in a thread of the test process, talked to over real HTTP;
its `stop()` goes through uvicorn's own shutdown (what SIGTERM triggers).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dlpipe
from helpers import minimal_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

STAGES = ("data", "features", "train", "evaluate", "export")
FAST_TRAIN = {"epochs": 8, "batch_size": 32, "progress": "never", "checkpoint_every": 1000}


def table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Numeric columns (one with a space in its name), a categorical `color`, a binary target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = x[:, 0] - x[:, 1] + np.where(color == "red", 1.5, -0.5)
    frame = pd.DataFrame(x, columns=["x0", "x1", "x 2", "x3"])
    frame["color"] = color
    frame["target"] = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return frame


def exported_run(path: Path, task: str, **sections):
    if task == "binary":
        cfg = minimal_config(train=FAST_TRAIN, export={"parity_rows": 64}, **sections)
        cfg["name"] = "churn"
        cfg["data"].pop("source")
        return dlpipe.run(cfg, run_dir=path, stages=STAGES, data=table())
    params = {"n_samples": 300, "n_features": 5, "random_state": 0}
    cfg = minimal_config(train=FAST_TRAIN, export={"parity_rows": 64}, **sections)
    cfg["name"] = task
    cfg["data"]["source"] = ({"builtin": "make_regression", "params": params}
                             if task == "regression" else
                             {"builtin": "make_classification",
                              "params": {**params, "n_informative": 3, "n_classes": 3}})
    return dlpipe.run(cfg, run_dir=path, stages=STAGES)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    made: dict[str, object] = {}

    def get(task: str):
        if task not in made:
            made[task] = exported_run(tmp_path_factory.mktemp(task) / "run", task,
                                      features={"categorical": "embedding"})
        return made[task]

    return get


@pytest.fixture(scope="session")
def binary_run(exported):
    return exported("binary")


def copy_bundle(bundle: Path, target: Path, *, version: str | None = None,
                name: str | None = None, edit=None, add=None) -> Path:
    """A copy of a bundle under a new name / version, its JSON files optionally edited
    (`edit`: {"features.json": fn(dict) -> None, ...}) and files added (`add`: {name:
    bytes}); the manifest is rewritten so the copy verifies."""
    from dlpipe.export.bundle import MANIFEST, write_bundle

    manifest = json.loads((bundle / MANIFEST).read_text())
    files = {f: (bundle / f).read_bytes() for f in manifest["files"]}
    files.update(add or {})
    for filename, change in (edit or {}).items():
        document = json.loads(files[filename])
        change(document)
        files[filename] = json.dumps(document).encode()
    return write_bundle(target, files, name=name or manifest["name"],
                        version=version or manifest["version"])


class LiveServer:
    """uvicorn serving `create_app(settings)` on 127.0.0.1:<ephemeral> in a thread."""

    def __init__(self, settings) -> None:
        import uvicorn

        from dlpipe.serve import create_app

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=10, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def state(self):
        return self.app.state.serve

    def wait_ready(self, timeout_s: float = 30) -> LiveServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        errors = [m.error for m in self.state.models if m.error]
        raise AssertionError(f"server not ready after {timeout_s} s: {errors}")

    def settle(self, timeout_s: float = 10) -> LiveServer:
        """Wait until every batcher is idle: metrics and drift are recorded after answers."""
        deadline = time.monotonic() + timeout_s
        while not all(m.batcher is None or m.batcher.idle for m in self.state.models):
            if time.monotonic() > deadline:
                raise AssertionError("batchers still busy")
            time.sleep(0.005)
        return self

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.settle().client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True  # what uvicorn's SIGTERM handler does
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def live():
    """`live(settings)` → a ready LiveServer, stopped after the test."""
    servers: list[LiveServer] = []

    def start(settings=None, *, ready: bool = True, **options):
        from dlpipe.serve import ServeSettings

        server = LiveServer(settings or ServeSettings(**options))
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()


def rows_of(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows (Python scalars) of a frame's input columns."""
    return json.loads(frame.drop(columns=["target"]).to_json(orient="records"))


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (which cannot import this conftest by name)."""
    import types

    return types.SimpleNamespace(LiveServer=LiveServer, rows_of=rows_of, table=table,
                                 copy_bundle=copy_bundle)
