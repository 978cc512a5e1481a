"""ParamStats: per-tensor weight histograms and gradient norms, once per epoch."""

import json

import pytest
import torch
from torch import nn

import dlpipe
from dlpipe import runs
from dlpipe.train import Callback, TensorBatches, fit
from dlpipe.train._stats import ParamStats
from helpers import minimal_config


def _problem(n=64, batch=64):
    torch.manual_seed(0)
    x = torch.randn(n, 5)
    y = (x[:, 0] > 0).float()
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, TensorBatches(x, y, batch, shuffle=True,
                                generator=torch.Generator().manual_seed(0))


def _loss(out, y):
    return nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y)


def test_gradient_norms_are_those_of_each_epochs_last_step():
    # Plain SGD (no momentum, no decay) moves each weight by lr * grad, so the weight change
    # over a one-step epoch is the oracle of the gradient the step applied.
    model, train = _problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before: list[dict[str, torch.Tensor]] = []

    class Snapshot(ParamStats):
        def on_epoch_start(self, state):
            super().on_epoch_start(state)
            before.append({n: p.detach().clone() for n, p in model.named_parameters()})

    stats = Snapshot(model, optimizer, steps_per_epoch=1)
    after = []

    class After(Callback):
        def on_epoch_end(self, state, metrics):
            after.append({n: p.detach().clone() for n, p in model.named_parameters()})

    fit(model, train, None, optimizer=optimizer, loss_fn=_loss, epochs=3,
        callbacks=[stats, After()])
    rows = stats.rows
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, w0, w1 in zip(rows, before, after, strict=True):
        for name, entry in row["params"].items():
            oracle = float(((w0[name] - w1[name]) / 0.1).norm())
            # float32 weights: the difference of two nearby weights loses ~1e-7 relative to
            # the weights themselves, so compare at 1e-4 relative.
            assert entry["grad_norm"] == pytest.approx(oracle, rel=1e-4)


def test_histograms_count_every_value_between_the_tensors_min_and_max():
    model, train = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    stats = ParamStats(model, optimizer, steps_per_epoch=len(train), bins=7)
    fit(model, train, None, optimizer=optimizer, loss_fn=_loss, epochs=2, callbacks=[stats])
    last = stats.rows[-1]["params"]
    for name, p in model.named_parameters():
        p = p.detach()
        entry = last[name]
        assert entry["shape"] == list(p.shape)
        assert len(entry["hist"]["counts"]) == 7 and sum(entry["hist"]["counts"]) == p.numel()
        assert entry["hist"]["min"] == float(p.min()) and entry["hist"]["max"] == float(p.max())
        assert entry["norm"] == pytest.approx(float(p.norm()), rel=1e-6)


def test_the_sink_gets_jsonl_at_the_end_and_the_state_round_trips():
    model, train = _problem(n=128, batch=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    written = []
    stats = ParamStats(model, optimizer, steps_per_epoch=len(train), sink=written.append)
    fit(model, train, None, optimizer=optimizer, loss_fn=_loss, epochs=2, callbacks=[stats])
    (text,) = written
    assert [json.loads(line)["epoch"] for line in text.splitlines()] == [1, 2]
    assert all(v["grad_norm"] > 0 for v in stats.rows[-1]["params"].values())
    copy = ParamStats(model, optimizer, steps_per_epoch=4)
    copy.load_state_dict(json.loads(json.dumps(stats.state_dict())))
    assert copy.rows == stats.rows
    assert not optimizer._optimizer_step_pre_hooks  # the hook is removed after fit


def test_the_train_stage_writes_param_stats_only_when_asked(tmp_path):
    on = dlpipe.run(minimal_config(), run_dir=tmp_path / "on", stages=("data", "features",
                                                                         "train"))
    rows = on.rundir.read_jsonl(runs.PARAM_STATS)
    assert len(rows) == on.rundir.read_json(runs.TRAINING)["epochs_run"]
    assert set(rows[0]["params"]) == set(on.rundir.read_tensors(runs.WEIGHTS))
    cfg = minimal_config()
    cfg["train"]["log_param_stats"] = False
    off = dlpipe.run(cfg, run_dir=tmp_path / "off", stages=("data", "features", "train"))
    assert not off.rundir.has(runs.PARAM_STATS)
