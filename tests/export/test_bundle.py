"""The bundle: its files and manifest, the torch-free predictor, and refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import dlpipe
from dlpipe import runs
from dlpipe.errors import ExportError
from dlpipe.export import load_bundle
from dlpipe.export.predictor import check_onnx_bytes

BUNDLE_FILES = {"model.onnx", "features.json", "signature.json", "weights.safetensors",
                "data_profile.json", "README.md", "manifest.json"}


def test_the_bundle_holds_its_files_and_the_manifest_hashes_each_one(binary_run):
    bundle = binary_run.rundir.file(runs.EXPORT)
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == BUNDLE_FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["name"] == "tiny" and len(manifest["version"]) == 12
    assert {"dlpipe", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    # features.json is the run's, byte for byte
    assert (bundle / "features.json").read_bytes() == binary_run.rundir.file(
        runs.FEATURES).read_bytes()


def test_the_signature_lists_columns_categories_classes_and_outputs(binary_run):
    signature = json.loads((binary_run.rundir.file(runs.EXPORT) / "signature.json").read_text())
    color = next(c for c in signature["columns"] if c["name"] == "color")
    schema = binary_run.rundir.read_json(runs.SCHEMA)
    assert color == {"name": "color", "kind": "categorical",
                     "dtype": next(c["dtype"] for c in schema["columns"] if c["name"] == "color"),
                     "categories": ["blue", "green", "red"]}
    assert [c["name"] for c in signature["columns"]][:6] == [f"x{i}" for i in range(6)]
    assert signature["task"] == "binary" and signature["classes"] == [0, 1]
    assert signature["input"] == {"name": "input", "dtype": "float32", "shape": ["batch", 7]}
    assert signature["outputs"]["probabilities"] == ["probability_0", "probability_1"]
    threshold = binary_run.metrics["test"]["threshold"]
    assert signature["threshold"] == threshold


def test_the_onnx_predictor_predicts_like_the_pytorch_predictor(exported):
    frame = exported.rundir.read_split("test").drop(columns=["target"])
    onnx_prediction = load_bundle(exported.rundir.file(runs.EXPORT)).predict(frame)
    torch_prediction = dlpipe.load(exported.path).predict(frame)
    if torch_prediction.probabilities is None:  # regression: values on the target's scale
        # fp32 outputs agree to 1e-5 relative; the inverse scaling multiplies by the target's
        # std (~100 here), so compare relative to the values.
        np.testing.assert_allclose(onnx_prediction.labels, torch_prediction.labels, rtol=1e-5,
                                   atol=1e-3)
        return
    np.testing.assert_array_equal(onnx_prediction.labels, torch_prediction.labels)
    # Logits agree to 1e-5; sigmoid/softmax have slope <= 1/4, then numpy vs torch rounding.
    np.testing.assert_allclose(onnx_prediction.probabilities, torch_prediction.probabilities,
                               rtol=1e-5, atol=1e-5)
    assert onnx_prediction.classes == torch_prediction.classes


def test_loading_and_predicting_from_a_bundle_needs_no_torch(binary_run):
    bundle = binary_run.rundir.file(runs.EXPORT)
    rows = binary_run.rundir.split_file("test")
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import pandas as pd\n"
        "from dlpipe.export import load_bundle\n"
        f"frame = pd.read_parquet({str(rows)!r}).drop(columns=['target'])\n"
        f"print(load_bundle({str(bundle)!r}).predict(frame).labels[:5].tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    expected = dlpipe.load(binary_run.path).predict(
        binary_run.rundir.read_split("test").drop(columns=["target"])).labels[:5]
    assert done.stdout.strip() == str(expected.tolist())


@pytest.mark.parametrize("damage", ["changed", "truncated"])
def test_a_tampered_or_truncated_bundle_file_is_refused(binary_run, tmp_path, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(binary_run.rundir.file(runs.EXPORT), bundle)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    if damage == "changed":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    model.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"bundle: model\.onnx does not match its sha256 in "
                                          r"manifest\.json .*changed or truncated"):
        load_bundle(bundle)


def test_a_bundle_without_the_asked_variant_says_which_it_has(binary_run):
    with pytest.raises(ExportError, match=r"has no model\.int8\.onnx \(variant 'int8'\); it has "
                                          r"fp32"):
        load_bundle(binary_run.rundir.file(runs.EXPORT), variant="int8")


def _graph(binary_run):
    return onnx.load(binary_run.rundir.file(runs.EXPORT) / "model.onnx")


def test_a_graph_whose_weights_live_in_an_external_file_is_refused(binary_run):
    proto = _graph(binary_run)
    init = proto.graph.initializer[0]
    init.data_location = onnx.TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    with pytest.raises(ExportError, match=r"stores initializer .* in an external file"):
        check_onnx_bytes(proto.SerializeToString(), "model.onnx")


def test_a_graph_with_non_finite_weights_is_refused(binary_run):
    proto = _graph(binary_run)
    init = next(i for i in proto.graph.initializer if i.name == "head.weight")
    weight = numpy_helper.to_array(init).copy()
    weight.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    with pytest.raises(ExportError, match=r"NaN or infinite values in weight 'head\.weight'"):
        check_onnx_bytes(proto.SerializeToString(), "model.onnx")


@pytest.mark.slow
def test_dlpipe_export_writes_the_bundle_where_out_says(binary_run, tmp_path):
    out = tmp_path / "shipped"
    done = subprocess.run([sys.executable, "-m", "dlpipe", "export", str(binary_run.path),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"bundle written to {out}" in done.stdout.replace("\n", "")
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    frame = binary_run.rundir.read_split("val").drop(columns=["target"])
    np.testing.assert_array_equal(load_bundle(out).predict(frame).labels,
                                  dlpipe.load(binary_run.path).predict(frame).labels)


def test_the_model_card_of_a_pruned_bundle_keeps_its_title_and_metric_table():
    from dlpipe.export.bundle import model_card

    signature = {"task": "binary", "target": "y", "classes": [0, 1],
                 "columns": [{"name": "a", "kind": "numeric"}]}
    variant = {"name": "prune-0.5", "parameters": 10, "nonzero": 5, "val": 0.9, "test": 0.8}
    compressed = {"metric": "accuracy", "max_metric_drop": 0.005,
                  "chosen": {"fp32": "prune-0.5", "int8": None},
                  "files": {"fp32": "compress/model.onnx"}, "variants": [variant]}
    card = model_card(name="churn", signature=signature, metrics={"test": {"accuracy": 0.81}},
                      profile={}, spec={"name": "mlp"}, compressed=compressed,
                      files=["model.onnx"])
    assert card.startswith("# churn\n")
    assert "| accuracy | 0.8100 |" in card
    assert "Of the trained network before compression" in card
    assert "- fp32: `prune-0.5`, 10 parameters (5 non-zero), validation accuracy 0.9000" in card


def test_the_version_follows_what_the_bundle_computes_not_its_card():
    from dlpipe.export import _version

    files = {"weights.safetensors": b"w", "features.json": b"f", "signature.json": b"s",
             "README.md": b"card"}
    assert _version(files) == _version({**files, "README.md": b"another card"})
    assert _version(files) != _version({**files, "weights.safetensors": b"retrained"})
    assert _version(files) != _version({**files, "features.json": b"refitted"})
