"""Train-side metrics per epoch (history.jsonl → the learning curves) and the device training
ran on (training.json → the report's Environment)."""

import shutil

import pytest
import torch
from torch import nn

import dlpipe
from dlpipe import runs
from dlpipe.report import plots, write_report
from dlpipe.report._sections import _curves_caption, _device
from dlpipe.train import TensorBatches, fit
from dlpipe.train.callbacks import History
from helpers import minimal_config


def _accuracy(outputs, y):
    return {"accuracy": float(((outputs.reshape(-1) > 0).float() == y).float().mean())}


def _data(n=203, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).float()
    return x, y


def _fit(model, x, y, *, lr, epochs=2, augment=None):
    batches = TensorBatches(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(1))
    loss = nn.BCEWithLogitsLoss()
    return fit(model, batches, None, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
               loss_fn=lambda o, t: loss(o.reshape(-1), t), epochs=epochs,
               train_metrics=_accuracy, augment=augment, callbacks=[History()])


def test_train_metrics_score_every_training_row_of_the_epoch():
    # Oracle: with lr = 0 the weights never change, so the epoch's accumulated outputs (in
    # shuffled order) must score exactly like one pass over the whole training set.
    torch.manual_seed(0)
    x, y = _data()  # 203 rows, batch 16: no trailing single row is skipped
    model = nn.Linear(5, 1)
    state = _fit(model, x, y, lr=0.0)
    with torch.no_grad():
        expected = _accuracy(model(x), y)["accuracy"]
    assert [row["train_accuracy"] for row in state.history] == [expected, expected]
    assert 0.2 < expected < 0.8  # an untrained model: the value is not trivially 0 or 1


def test_train_metrics_follow_training_and_sit_beside_the_loss():
    torch.manual_seed(0)
    x, y = _data()
    state = _fit(nn.Linear(5, 1), x, y, lr=0.5, epochs=6)
    first, last = state.history[0], state.history[-1]
    assert {"train_loss", "train_accuracy"} <= set(last)
    assert not any(k.startswith("val_") for k in last)  # no val split given
    assert last["train_accuracy"] > first["train_accuracy"]
    assert last["train_accuracy"] > 0.7


def test_train_metrics_are_skipped_when_the_augmentation_mixes_targets():
    class Mixing:  # stands in for mixup/cutmix: soft targets have no accuracy
        mixes_targets = True

        def __call__(self, x, y):
            return x, y

    x, y = _data()
    state = _fit(nn.Linear(5, 1), x, y, lr=0.1, augment=Mixing())
    assert all("train_accuracy" not in row for row in state.history)
    assert all("train_loss" in row for row in state.history)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_metrics") / "run"
    return dlpipe.run(minimal_config(report={"enabled": True}), run_dir=folder)


def test_the_train_stage_logs_train_accuracy_and_the_device_it_ran_on(trained):
    history = trained.rundir.read_jsonl(runs.HISTORY)
    assert len(history) == 3
    for row in history:
        assert 0.0 <= row["train_accuracy"] <= 1.0
        assert 0.0 <= row["val_accuracy"] <= 1.0
    summary = trained.rundir.read_json(runs.TRAINING)
    assert summary["device"] == "cpu" and "device_name" not in summary


def test_the_report_shows_where_training_ran_not_the_configured_device(trained, tmp_path):
    page = trained.rundir.file(runs.REPORT).read_text()
    assert "<th>device</th><td>cpu</td>" in page  # the configured device is not repeated
    copy = tmp_path / "run"
    shutil.copytree(trained.path, copy)
    summary = trained.rundir.read_json(runs.TRAINING)
    summary.update(device="cuda:0", device_name="NVIDIA H100 80GB HBM3")
    dlpipe.runs.RunDir(copy).write_json(runs.TRAINING, summary)
    write_report(copy)
    page = (copy / "report.html").read_text()
    configured = trained.rundir.read_yaml(runs.CONFIG)["train"]["device"]
    assert (f"<th>device</th><td>cuda:0 (NVIDIA H100 80GB HBM3); configured {configured}</td>"
            in page)
    # A run from before training.json recorded the device: the configured one, said so.
    assert _device({"epochs_run": 3}, "auto") == (
        "auto (configured; training.json does not record the device)")
    assert _device({"device": "mps"}, "auto") == "mps"


def test_learning_curves_draw_train_against_val_for_each_metric():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e
                / 20, "val_accuracy": 0.45 + e / 20, "lr": 0.1} for e in range(1, 5)]
    fig = plots.learning_curves(history)
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert panels == {"loss": ["train", "val"], "accuracy": ["train", "val"]}
    accuracy = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    assert list(accuracy.get_lines()[0].get_ydata()) == [r["train_accuracy"] for r in history]
    # Without a validation split (fit_on: train+val) the train metric still gets its panel.
    only_train = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in history]
    titles = [ax.get_title() for ax in plots.learning_curves(only_train).axes]
    assert titles == ["loss", "accuracy"]
    assert "under dropout and augmentation" in _curves_caption(history)
    assert "Only the loss" in _curves_caption([{"epoch": 1, "train_loss": 0.3}])
