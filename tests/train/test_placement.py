"""Where training data live (`train.data_on_device`) and `train.compile`.

CPU tests check the decision, that the host path delivers exactly the batches of the on-device
path (plain and DDP-sharded), that a run trained through it ends with the same weights, and
that a compiled run saves plain weight names. CUDA tests (marked `cuda`) check the pinned,
prefetched copies on a real GPU.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import dlpipe
from dlpipe.errors import ConfigError
from dlpipe.train import TensorBatches, fit
from dlpipe.train.distributed import ShardedBatches
from dlpipe.train.placement import DEVICE_SHARE, HostBatches, Placement, place, tensor_bytes
from helpers import minimal_config

CUDA = torch.device("cuda")
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _data(n=103, features=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)


def _batches(x, y, batch_size=10, *, shuffle=True, seed=3):
    return TensorBatches(x, y, batch_size, shuffle=shuffle,
                         generator=torch.Generator().manual_seed(seed))


def _same_batches(got, want):
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert torch.equal(gx.cpu(), wx.cpu()) and torch.equal(gy.cpu(), wy.cpu())


# -- the decision -------------------------------------------------------------------------------

def test_tensor_bytes_counts_float32_inputs_and_int64_class_targets():
    xy = (np.zeros((10, 3), dtype=np.float64), np.zeros(10))
    assert tensor_bytes(xy, "regression") == 10 * 3 * 4 + 10 * 4
    assert tensor_bytes(xy, "multiclass") == 10 * 3 * 4 + 10 * 8
    assert tensor_bytes(None, "binary") == 0


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_on_the_cpu_the_data_stay_on_the_training_device_whatever_the_mode(mode):
    placed = place(mode, torch.device("cpu"), 10**15)
    assert placed.on_device and placed.label == "cpu"
    batches = _batches(*_data())
    assert placed.feed(batches) is batches  # as it always was: no wrapper


def test_auto_keeps_the_data_on_the_gpu_only_within_its_share_of_free_memory(monkeypatch):
    free = 8 * 2**30
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: asked.append(device) or (free, 80 * 2**30))
    assert place("auto", CUDA, int(DEVICE_SHARE * free)).label == "cuda"
    assert place("auto", CUDA, int(DEVICE_SHARE * free) + 1).label == "pinned host"
    assert asked == [CUDA, CUDA]
    # The explicit modes do not ask the GPU.
    assert place("always", CUDA, 10**15).label == "cuda"
    assert place("never", CUDA, 1).label == "pinned host"
    assert len(asked) == 2


def test_a_bad_data_on_device_value_names_the_field():
    with pytest.raises(ConfigError, match="data_on_device"):
        dlpipe.run(minimal_config(train={"data_on_device": "sometimes"}), run_dir=None)


# -- the host path delivers the same batches ----------------------------------------------------

@pytest.mark.parametrize("shuffle", [True, False])
def test_host_batches_are_the_on_device_batches_in_the_same_order(shuffle):
    x, y = _data(101)  # 101 % 10 == 1: a shuffled epoch skips the one-row batch
    host = HostBatches(_batches(x, y, shuffle=shuffle), torch.device("cpu"))
    reference = _batches(x, y, shuffle=shuffle)
    for _epoch in range(2):  # the generator advances the same way
        # All batches kept at once: none may alias a pinned buffer that was refilled since.
        _same_batches(list(host), list(reference))
    assert len(host) == len(_batches(x, y, shuffle=shuffle)) == (10 if shuffle else 11)


@pytest.mark.parametrize("shuffle", [True, False])
def test_host_batches_keep_a_ddp_share_as_it_is(shuffle):
    x, y = _data(100)
    for rank in range(2):
        def shard(rank=rank):
            return ShardedBatches(x, y, 20, rank=rank, world_size=2, shuffle=shuffle,
                                  generator=torch.Generator().manual_seed(5))
        host = HostBatches(shard(), torch.device("cpu"))
        assert host.world_size == 2
        _same_batches(list(host), list(shard()))


def test_training_through_the_host_path_ends_with_the_same_weights():
    x, y = _data(200)
    xv, yv = _data(50, seed=1)

    def train(feed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        state = fit(model, feed(_batches(x, y, 16)), feed(TensorBatches(xv, yv, 64)),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    loss_fn=nn.CrossEntropyLoss(), epochs=3)
        return model, state

    on_device, state_a = train(lambda b: b)
    via_host, state_b = train(lambda b: HostBatches(b, torch.device("cpu")))
    for (name, a), b in zip(on_device.state_dict().items(), via_host.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert state_a.history == state_b.history


def test_a_run_trained_from_host_memory_matches_one_on_the_device(tmp_path, monkeypatch):
    import dlpipe.train as train_stage

    config = minimal_config(train={"epochs": 2, "batch_size": 32, "progress": "never",
                                   "log_param_stats": False})
    plain = dlpipe.run(config, run_dir=tmp_path / "plain")
    assert json.loads((plain.path / "training.json").read_text())["data_on"] == "cpu"

    # Force the host path on the CPU: the same code as on a GPU, without streams or pinning.
    monkeypatch.setattr(train_stage, "place", lambda mode, device, nbytes: Placement(
        device, on_device=False))
    hosted = dlpipe.run(config, run_dir=tmp_path / "hosted")
    summary = json.loads((hosted.path / "training.json").read_text())
    assert summary["data_on"] == "pinned host"
    assert (hosted.path / "history.jsonl").read_text() == (
        plain.path / "history.jsonl").read_text()
    assert hosted.metrics["test"] == plain.metrics["test"]


# -- torch.compile --------------------------------------------------------------------------------

def _compiled_and_plain(tmp_path, monkeypatch, backend):
    if backend == "eager":  # dynamo's graph capture and wrapper, without code generation
        real = torch.compile
        monkeypatch.setattr(torch, "compile",
                            lambda model, mode=None: real(model, backend="eager"))
    train = {"epochs": 2, "batch_size": 32, "progress": "never", "log_param_stats": False}
    plain = dlpipe.run(minimal_config(train=train), run_dir=tmp_path / "plain")
    compiled = dlpipe.run(minimal_config(train={**train, "compile": True}),
                          run_dir=tmp_path / "compiled")
    return plain, compiled


def _check_compiled(plain, compiled, tolerance):
    from safetensors.torch import load_file

    a = load_file(plain.path / "weights.safetensors")
    b = load_file(compiled.path / "weights.safetensors")
    assert list(a) == list(b) and not any("_orig_mod" in k for k in b)
    assert json.loads((compiled.path / "training.json").read_text())["compiled"] == "default"
    for name, value in plain.metrics["test"].items():
        if isinstance(value, float):
            assert compiled.metrics["test"][name] == pytest.approx(value, abs=tolerance), name
    # The delivered network is the plain module, which predicts as the compiled run scored.
    predictor = dlpipe.load(compiled.path)
    assert type(predictor.model).__name__ != "OptimizedModule"


def test_a_compiled_run_saves_plain_weight_names_and_scores_the_same(tmp_path, monkeypatch):
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python")
    _check_compiled(*_compiled_and_plain(tmp_path, monkeypatch, "eager"), tolerance=1e-6)


@pytest.mark.slow
def test_a_run_compiled_by_inductor_scores_the_same(tmp_path, monkeypatch):
    if not torch._dynamo.is_dynamo_supported() or shutil.which("g++") is None:
        pytest.skip("torch.compile's inductor backend needs dynamo and a C++ compiler (g++)")
    _check_compiled(*_compiled_and_plain(tmp_path, monkeypatch, "inductor"), tolerance=0.02)


# -- on a GPU -------------------------------------------------------------------------------------

@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("shuffle", [True, False])
def test_pinned_prefetched_batches_on_the_gpu_are_the_on_device_batches(shuffle):
    x, y = _data(1001, features=7)
    placed = Placement(CUDA, on_device=False)
    hx, hy = placed.put(x, y)
    assert hx.is_pinned() and hy.is_pinned() and hx.device.type == "cpu"
    host = placed.feed(_batches(hx, hy, 64, shuffle=shuffle))
    assert host.device.type == "cuda"
    reference = _batches(x.cuda(), y.cuda(), 64, shuffle=shuffle)
    for _ in range(2):
        got = list(host)
        assert all(bx.device.type == "cuda" for bx, _ in got)
        _same_batches(got, list(reference))


@pytest.mark.cuda
@no_cuda
def test_a_gpu_run_from_pinned_host_memory_trains_like_one_from_gpu_memory(tmp_path):
    runs = {}
    for mode in ("always", "never", "auto"):
        config = minimal_config(train={"epochs": 3, "batch_size": 32, "progress": "never",
                                       "device": "cuda", "data_on_device": mode})
        runs[mode] = dlpipe.run(config, run_dir=tmp_path / mode)
    data_on = {m: json.loads((r.path / "training.json").read_text())["data_on"]
               for m, r in runs.items()}
    assert data_on == {"always": "cuda", "never": "pinned host", "auto": "cuda"}
    losses = {m: [json.loads(line)["val_loss"] for line in
                  (r.path / "history.jsonl").read_text().splitlines()] for m, r in runs.items()}
    assert losses["never"] == pytest.approx(losses["always"], rel=1e-4)  # same batches


@pytest.mark.cuda
@no_cuda
def test_a_compiled_gpu_run_saves_plain_weight_names(tmp_path):
    from torch.utils._triton import has_triton

    if not has_triton():
        pytest.skip("torch.compile on a GPU needs triton")
    train = {"epochs": 2, "batch_size": 32, "progress": "never", "device": "cuda",
             "log_param_stats": False}
    plain = dlpipe.run(minimal_config(train=train), run_dir=tmp_path / "plain")
    compiled = dlpipe.run(minimal_config(train={**train, "compile": True}),
                          run_dir=tmp_path / "compiled")
    _check_compiled(plain, compiled, tolerance=0.03)  # a row or two may flip: fused kernels

