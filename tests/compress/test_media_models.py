"""Compress + export end to end for the image CNN (digits) and the text BiLSTM (reviews).

Each run is small (a few epochs, narrow layers) and made once per session; the tests check
what the compression did to the conv / recurrent layers and that the bundle's graphs agree
with the network they came from. Making the two runs takes ~20 s and ~45 s on a shared
2-core machine (training and torch.export dominate), so the tests that use them are `slow`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import dlpipe
from dlpipe import runs
from dlpipe.compress.prune import magnitude_prune, make_permanent, prunable_layers
from dlpipe.export import load_bundle
from dlpipe.models.spec import build_from_spec
from helpers import minimal_config

STAGES = ("data", "features", "train", "evaluate", "compress", "export")
FAST = {"batch_size": 64, "progress": "never", "checkpoint_every": 1000}
COMPRESS = {"methods": ["structured", "prune", "int8", "fp16"], "sparsities": [0.5],
            "structured_amounts": [0.5], "finetune_epochs": 1, "latency_runs": 3,
            "max_metric_drop": 0.05}


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory):
    """Digits as 8x8 images, one conv block of 8 channels, compressed and exported."""
    cfg = minimal_config(
        data={"source": {"builtin": "digits", "params": {"as_images": True}},
              "split": {"val": 0.2, "test": 0.2}},
        features={"image": {"size": [8, 8]}},
        model={"name": "cnn", "blocks": [{"channels": 8, "kernel": 3, "pool": "max"}],
               "hidden": [32], "dropout": 0.0},
        train={**FAST, "epochs": 6, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        compress=COMPRESS, export={"parity_rows": 64})
    return dlpipe.run(cfg, run_dir=tmp_path_factory.mktemp("cnn") / "run", stages=STAGES)


@pytest.fixture(scope="session")
def rnn_run(tmp_path_factory):
    """Generated reviews, a narrow BiLSTM, compressed and exported."""
    cfg = minimal_config(
        data={"source": {"builtin": "reviews", "params": {"n": 600, "seed": 0}},
              "split": {"val": 0.2, "test": 0.2}},
        features={"text": {"tokenizer": "word", "max_length": 24}},
        model={"name": "rnn", "embedding_dim": 16, "cell": "lstm", "hidden": 16,
               "bidirectional": True, "head": [16]},
        train={**FAST, "epochs": 3, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        compress=COMPRESS, export={"parity_rows": 64})
    return dlpipe.run(cfg, run_dir=tmp_path_factory.mktemp("rnn") / "run", stages=STAGES)


def _variants(rundir) -> dict[str, dict]:
    return {v["name"]: v for v in rundir.read_json(runs.COMPRESS_REPORT)["variants"]}


def _test_frame(rundir):
    frame = rundir.read_split("test")
    return frame.drop(columns=[rundir.read_json(runs.SCHEMA)["target"]])


@pytest.mark.slow
def test_structured_pruning_is_refused_with_the_reason_for_the_rnn(rnn_run):
    structured = _variants(rnn_run.rundir)["structured"]
    assert not structured["accepted"]
    assert structured["reason"].startswith(
        "skipped: structured pruning supports mlp (hidden neurons) and cnn (conv channels); "
        "model 'rnn' is neither")


@pytest.mark.slow
def test_structured_pruning_shrinks_the_cnn_channels_and_ships_the_smaller_graph(cnn_run):
    rundir = cnn_run.rundir
    structured = _variants(rundir)["structured-0.5"]
    original = _variants(rundir)["original"]
    # 8 → 4 channels: the conv loses half its filters, the dense layer half its inputs
    # (4 channels x 3 x 3 pooled pixels); the head is unchanged.
    conv, dense, head = 8 * 9 + 8, 8 * 9 * 32 + 32, 32 * 10 + 10
    assert original["parameters"] == conv + dense + head
    assert structured["parameters"] == conv // 2 + (4 * 9 * 32 + 32) + head
    assert structured["file_bytes"] < 0.7 * original["file_bytes"]
    if rundir.read_json(runs.COMPRESS_REPORT)["chosen"]["fp32"] == "structured-0.5":
        spec = rundir.read_json(runs.COMPRESSED_MODEL)
        assert spec["kwargs"]["blocks"][0]["channels"] == 4
        shapes = {i.name: list(i.dims) for i in
                  onnx.load(rundir.file(runs.EXPORT) / "model.onnx").graph.initializer}
        assert [4, 1, 3, 3] in shapes.values()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn_run", "rnn_run"])
def test_bundle_graphs_agree_with_the_network_they_came_from(which, request):
    rundir = request.getfixturevalue(which).rundir
    report = rundir.read_json(runs.COMPRESS_REPORT)
    frame = _test_frame(rundir)
    reference = dlpipe.load(rundir.path).predict(frame)  # PyTorch, the trained weights
    bundle = rundir.file(runs.EXPORT)
    fp32 = load_bundle(bundle).predict(frame)
    if report["chosen"]["fp32"] == "original":
        np.testing.assert_allclose(fp32.probabilities, reference.probabilities, atol=1e-4)
    else:  # the bundle ships the pruned network: compare with it
        spec = rundir.read_json(runs.COMPRESSED_MODEL)
        model = build_from_spec(spec).eval()
        model.load_state_dict(rundir.read_tensors(runs.COMPRESSED_WEIGHTS))
        from dlpipe.features import load as load_features

        x, _ = load_features(rundir).arrays(rundir.read_split("test"))
        with torch.inference_mode():
            logits = model(torch.from_numpy(x)).numpy()
        onnx_logits = fp32_outputs(bundle, x)
        np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)
    for variant in ("int8", "fp16"):
        if report["chosen"][variant]:
            other = load_bundle(bundle, variant=variant).predict(frame)
            assert np.mean(other.labels == fp32.labels) >= 0.9


def fp32_outputs(bundle, x: np.ndarray) -> np.ndarray:
    from dlpipe.export import _runtime

    return _runtime.run_batched(_runtime.session(bundle / "model.onnx"), x)


@pytest.mark.slow
def test_cnn_int8_is_static_per_channel_and_conv_weights_are_pruned(cnn_run):
    rundir = cnn_run.rundir
    variants = _variants(rundir)
    assert variants["int8"]["setting"] == "static"  # a convolution: calibrated activations
    prune = variants["prune-0.5"]
    assert prune["nonzero"] <= prune["parameters"] * 0.6  # biases and norms are kept
    if rundir.has(runs.COMPRESSED_INT8):
        graph = onnx.load(rundir.file(runs.COMPRESSED_INT8))
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type
                                                                  for n in graph.graph.node}


@pytest.mark.slow
def test_lstm_graph_quantizes_to_int8_lstm_kernels(rnn_run):
    rundir = rnn_run.rundir
    int8 = _variants(rundir)["int8"]
    assert int8["setting"] == "dynamic"
    assert "stays float" not in int8["reason"]  # every LSTM node was quantized
    # The embedding table, LSTM and Linear weights all shrink 4x; biases and scales stay float.
    assert int8["weight_bytes"] < 0.3 * _variants(rundir)["original"]["weight_bytes"]
    if rundir.has(runs.COMPRESSED_INT8):
        ops = [n.op_type for n in onnx.load(rundir.file(runs.COMPRESSED_INT8)).graph.node]
        assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops  # both directions


@pytest.mark.slow
def test_rnn_pruning_zeroes_the_recurrent_weights(rnn_run):
    rundir = rnn_run.rundir
    prune = _variants(rundir)["prune-0.5"]
    spec = rundir.read_json(runs.MODEL)
    model = build_from_spec(spec).eval()
    model.load_state_dict(rundir.read_tensors(runs.WEIGHTS))
    recurrent = sum(p.numel() for n, p in model.named_parameters() if ".rnn.weight_" in n)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    # Half of every prunable weight is zero: LSTM weights are most of them, so they count.
    assert prune["parameters"] - prune["nonzero"] >= 0.5 * (recurrent + linear) - 1
    if rundir.has(runs.COMPRESSED_WEIGHTS):
        kept = rundir.read_tensors(runs.COMPRESSED_WEIGHTS)
        zeros = sum(int((kept[k] == 0).sum()) for k in kept if ".rnn.weight_" in k)
        assert zeros >= 0.3 * recurrent


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_covers_conv1d_conv2d_lstm_and_gru(scope):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({
        "conv1": torch.nn.Conv1d(4, 6, 3), "conv2": torch.nn.Conv2d(2, 6, 3),
        "lstm": torch.nn.LSTM(4, 5, bidirectional=True), "gru": torch.nn.GRU(4, 5, num_layers=2),
        "linear": torch.nn.Linear(8, 3)})
    names = [n for _, n in prunable_layers(model)]
    assert names.count("weight_ih_l0_reverse") == 1 and names.count("weight_hh_l1") == 1
    magnitude_prune(model, 0.6, scope=scope)
    make_permanent(model)
    weights = [getattr(m, n) for m, n in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.6 * total) if scope == "global" else abs(zeros - 0.6 * total) < 10
    if scope == "layer":
        for w in weights:
            assert abs(float((w == 0).float().mean()) - 0.6) < 0.1
    model["gru"](torch.randn(7, 2, 4))  # the pruned recurrent layers still run
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())


@pytest.mark.slow
def test_int8_lstm_weights_are_int8_initializers(rnn_run):
    rundir = rnn_run.rundir
    if not rundir.has(runs.COMPRESSED_INT8):
        pytest.skip("the guard rejected int8 on this machine")
    graph = onnx.load(rundir.file(runs.COMPRESSED_INT8))
    inits = {i.name: i for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "DynamicQuantizeLSTM":
            w, r = (numpy_helper.to_array(inits[name]) for name in node.input[1:3])
            assert w.dtype == np.int8 and r.dtype == np.int8
    tables = [inits[n.input[0]] for n in graph.graph.node
              if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    assert len(tables) == 1  # the embedding, gathered as int8 rows and dequantized after
    assert numpy_helper.to_array(tables[0]).dtype in (np.int8, np.uint8)


@pytest.mark.slow  # ~5-7 s each: torch.export of a recurrent network
@pytest.mark.parametrize(("cell", "left"), [("lstm", []), ("gru", ["GRU"])])
def test_dynamic_int8_quantizes_lstm_and_names_the_cells_that_stay_float(cell, left):
    from dlpipe.compress.quantize import quantize_int8, unquantized_recurrent
    from dlpipe.export import _runtime
    from dlpipe.export.onnx import to_onnx
    from dlpipe.models.rnn import rnn

    torch.manual_seed(0)
    model = rnn(30, 1, embedding_dim=8, cell=cell, hidden=8, head=[]).eval()
    ids = torch.randint(2, 30, (16, 7)).float()
    ids[::2, 4:] = 0  # right padding
    fp32 = to_onnx(model, ids[:2]).SerializeToString()
    int8 = quantize_int8(fp32, mode="auto")
    assert unquantized_recurrent(onnx.load_from_string(int8)) == left
    with torch.inference_mode():
        expected = model(ids).numpy()
    got = _runtime.run(_runtime.session(int8), ids.numpy())
    np.testing.assert_allclose(got, expected, atol=0.05)
