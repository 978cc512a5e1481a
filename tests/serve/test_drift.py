"""Drift against the training reference (PSI per feature) and the Prometheus metrics."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from dlpipe import runs
from dlpipe.export.reference import reference_profile
from dlpipe.serve.drift import DriftMonitor, psi


def test_psi_is_the_textbook_formula():
    # Shares 0.8 / 0.2 against 0.5 / 0.5, by hand.
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([80, 20])) == pytest.approx(expected, rel=1e-12)
    assert psi(np.array([0.5, 0.5]), np.array([50, 50])) == 0.0
    # An empty live bin is floored at 1e-4 instead of making ln() infinite.
    floored = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0, 10])) == pytest.approx(floored, rel=1e-9)


def test_the_reference_has_equal_mass_bins_and_category_shares():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=1000), "c": ["a"] * 700 + ["b"] * 300,
                          "y": [0, 1] * 500})
    train.loc[:49, "x"] = np.nan
    ref = reference_profile([{"name": "x", "kind": "numeric"}, {"name": "c",
                            "kind": "categorical"}], train, target="y", task="binary")
    x = ref["columns"]["x"]
    assert len(x["edges"]) == 9 and x["missing"] == 0.05
    np.testing.assert_allclose(x["fractions"], [0.1] * 10, atol=0.002)
    assert ref["columns"]["c"] == {"kind": "categorical", "categories": ["a", "b"],
                                   "fractions": [0.7, 0.3], "missing": 0.0}
    assert ref["target"]["categories"] == [0, 1] and ref["rows"] == 1000


@pytest.fixture
def monitor():
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000),
                          "y": rng.choice(["no", "yes"], 2000)})
    ref = reference_profile([{"name": "x", "kind": "numeric"}, {"name": "c",
                            "kind": "categorical"}], train, target="y", task="binary")
    return DriftMonitor(ref, model="m", window=1000, min_rows=100, threshold=0.2)


def live_rows(n, shift=0.0, categories=("a", "b"), seed=2):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n) + shift, "c": rng.choice(categories, n)})


def test_inputs_like_the_training_data_show_no_drift(monitor):
    frame = live_rows(500)
    monitor.update(frame, ["yes"] * 250 + ["no"] * 250)
    report = monitor.snapshot()
    assert report["rows"] == 500
    assert report["features"]["x"]["psi"] < 0.05 and not report["features"]["x"]["alert"]
    assert report["features"]["c"]["unseen_rate"] == 0.0
    assert report["prediction"]["psi"] < 0.01


def test_a_shifted_feature_and_unseen_categories_are_reported_and_alerted(monitor, caplog):
    monitor.update(live_rows(400, shift=1.5, categories=("a", "b", "z")), None)
    with caplog.at_level(logging.WARNING, logger="dlpipe.serve"):
        monitor._checked = 0.0  # alerts are checked at most once a second
        monitor.update(live_rows(10), None)
    report = monitor.snapshot()["features"]
    assert report["x"]["psi"] > 0.5 and report["x"]["alert"]
    assert report["c"]["unseen_rate"] == pytest.approx(1 / 3, abs=0.06)
    assert report["c"]["psi"] > 0.2
    alerts = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("drift alert: model m, feature 'x': PSI") for m in alerts)


def test_the_window_forgets_old_rows(monitor):
    monitor.update(live_rows(1000, shift=3.0), None)
    assert monitor.snapshot()["features"]["x"]["psi"] > 1
    for seed in range(12):  # 1200 rows like the training data push the shifted ones out
        monitor.update(live_rows(100, seed=seed), None)
    report = monitor.snapshot()
    assert report["rows"] <= 1100
    assert report["features"]["x"]["psi"] < 0.1


def test_too_few_rows_report_no_psi(monitor):
    monitor.update(live_rows(20, shift=5.0), None)
    assert monitor.snapshot()["features"]["x"]["psi"] is None


def test_the_bundle_carries_the_training_reference(binary_run):
    bundle = binary_run.rundir.file(runs.EXPORT)
    reference = json.loads((bundle / "data_profile.json").read_text())["reference"]
    assert list(reference["columns"]) == ["x0", "x1", "x 2", "x3", "color"]
    assert reference["columns"]["color"]["categories"] == ["blue", "green", "red"]
    assert reference["target"]["categories"] == ["no", "yes"]
    assert reference["rows"] == len(binary_run.rundir.read_split("train"))


def test_live_drift_reaches_the_json_endpoint_and_the_metrics(live, binary_run, kit, caplog):
    server = live(path=binary_run.path, drift_min_rows=50, drift_threshold=0.25)
    rows = kit.rows_of(binary_run.rundir.read_split("train"))[:100]
    assert server.client.post("/predict", json={"rows": rows}).status_code == 200
    report = server.settle().client.get("/v2/models/churn/drift").json()
    assert report["model"] == "churn" and report["rows"] == 100 and report["available"]
    # Training rows against the training reference: no feature drifts.
    assert all(f["psi"] < 0.25 for f in report["features"].values())
    shifted = [{**r, "x0": r["x0"] + 5, "color": "mauve"} for r in rows]
    with caplog.at_level(logging.WARNING, logger="dlpipe.serve"):
        server.state.models[0].drift._checked = 0.0
        assert server.client.post("/predict", json={"rows": shifted}).status_code == 200
        report = server.settle().client.get("/v2/models/churn/drift").json()["features"]
    assert report["x0"]["psi"] > 1 and report["x0"]["alert"]
    assert report["color"]["unseen_rate"] == 0.5
    assert server.metric("dlpipe_drift_psi", model="churn", feature="x0") == pytest.approx(
        report["x0"]["psi"])
    assert server.metric("dlpipe_drift_unseen_rate", feature="color") == 0.5
    assert server.metric("dlpipe_drift_rows", model="churn") == 200
    assert any("drift alert: model churn, feature 'x0'" in r.getMessage()
               for r in caplog.records)


def test_metrics_cover_requests_batches_queue_inference_load_and_classes(live, binary_run, kit):
    server = live(path=binary_run.path, max_batch_size=2, max_delay_ms=20)
    rows = kit.rows_of(binary_run.rundir.read_split("test"))[:3]
    assert server.client.post("/predict", json={"rows": rows}).status_code == 200  # 3 > 2
    assert server.client.post("/predict", json={"rows": rows[:1]}).status_code == 200
    assert server.client.post("/predict", json={"rows": []}).status_code == 422
    m = server.metric
    assert m("dlpipe_requests_total", route="/predict", method="POST", status="200") == 2
    assert m("dlpipe_requests_total", route="/predict", status="422") == 1
    assert m("dlpipe_request_duration_seconds_count", route="/predict") == 3
    assert m("dlpipe_batches_total", model="churn", reason="full") == 1
    # A lone request: no other in the server could join its batch, so it goes at once.
    assert m("dlpipe_batches_total", model="churn", reason="idle") == 1
    assert m("dlpipe_batch_size_sum", model="churn") == 4
    assert m("dlpipe_inference_seconds_count", model="churn") == 2
    assert m("dlpipe_preprocess_seconds_count", model="churn") == 2
    assert m("dlpipe_queue_depth", model="churn") == 0
    assert m("dlpipe_model_load_seconds", model="churn", precision="fp32") > 0
    assert m("dlpipe_model_ready", model="churn") == 1
    assert m("dlpipe_batch_max_size", model="churn") == 2
    assert m("dlpipe_batch_max_delay_seconds", model="churn") == pytest.approx(0.02)
    yes = m("dlpipe_predictions_total", model="churn", **{"class": "yes"})
    no = m("dlpipe_predictions_total", model="churn", **{"class": "no"})
    assert yes + no == 4
    text = server.client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "dlpipe_requests_created" not in text.text
