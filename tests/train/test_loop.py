"""The training loop: parity with a hand-written loop, hooks, accumulation, non-finite loss."""

import pytest
import torch
from torch import nn

from dlpipe.errors import TrainingError
from dlpipe.train import Callback, TensorBatches, TrainState, fit
from dlpipe.train.callbacks import BestWeights, EarlyStopping, History


def _data(n=300, features=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def _hand_written_loop(model, x, y, *, epochs, batch_size, lr, seed):
    """The yardstick: shuffled index slices of pre-built tensors, nothing else."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def test_fit_ends_with_weights_identical_to_the_hand_written_loop():
    x, y = _data()
    xv, yv = _data(100, seed=1)
    model = _model()  # seeds the global RNG, so both runs draw the same dropout masks
    # Callbacks that observe but do not change training stay on: the framework must add
    # no hidden behaviour (no extra RNG draws, no reordering, no implicit regularization).
    callbacks = [History(), BestWeights(model), EarlyStopping(patience=100)]
    fit(model, TensorBatches(x, y, 32, shuffle=True, generator=torch.Generator().manual_seed(7)),
        TensorBatches(xv, yv, 64), optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_fn=nn.CrossEntropyLoss(), epochs=4, callbacks=callbacks)

    reference = _hand_written_loop(_model(), x, y, epochs=4, batch_size=32, lr=1e-2, seed=7)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_fit_learns_a_separable_problem():
    x, y = _data(600)
    xv, yv = _data(200, seed=1)
    model = _model()
    state = fit(model, TensorBatches(x, y, 32, shuffle=True, generator=torch.Generator()),
                TensorBatches(xv, yv, 64), optimizer=torch.optim.Adam(model.parameters(), 1e-2),
                loss_fn=nn.CrossEntropyLoss(), epochs=10, callbacks=[History()],
                val_metrics=lambda out, t: {"accuracy": float((out.argmax(1) == t).float().mean())})
    assert state.history[-1]["val_accuracy"] > 0.95
    assert state.history[-1]["val_loss"] < state.history[0]["val_loss"]


class _Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, state):
        self.calls.append("fit_start")

    def on_epoch_start(self, state):
        self.calls.append(f"epoch_start:{state.epoch}")

    def on_batch_end(self, state):
        self.calls.append(f"batch:{state.step}")

    def on_epoch_end(self, state, metrics):
        self.calls.append(f"epoch_end:{state.epoch}:{sorted(metrics)}")

    def on_fit_end(self, state):
        self.calls.append("fit_end")


def test_hooks_fire_in_the_order_the_docstring_draws():
    x, y = _data(64)
    recorder = _Recorder()
    fit(_model(), TensorBatches(x, y, 32), TensorBatches(x, y, 64),
        optimizer=torch.optim.SGD(_model().parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss(),
        epochs=2, callbacks=[recorder])
    assert recorder.calls == [
        "fit_start", "epoch_start:0", "batch:1", "batch:2", "epoch_end:1:['val_loss']",
        "epoch_start:1", "batch:3", "batch:4", "epoch_end:2:['val_loss']", "fit_end",
    ]


def test_gradient_accumulation_equals_one_big_batch():
    x, y = _data(64)
    runs = []
    for batch, accumulation in ((16, 4), (64, 1)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        fit(model, TensorBatches(x, y, batch), None, epochs=1, accumulation=accumulation,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss())
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        # The mean of four equal-sized batch means is the mean over their union, up to
        # float32 summation order.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_names_the_step_and_the_first_module():
    x, y = _data(64)
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    with pytest.raises(TrainingError, match=r"at step 1 \(epoch 1\); the first non-finite output "
                                            r"came from module 0 \(Linear\)"):
        fit(model, TensorBatches(x, y, 32), None, epochs=1, loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


class _Broken(Callback):
    def on_epoch_end(self, state, metrics):
        raise KeyError("boom")


def test_a_failing_callback_is_named_with_its_hook():
    x, y = _data(32)
    model = _model()
    with pytest.raises(TrainingError, match=r"_Broken\.on_epoch_end failed: 'boom'"):
        fit(model, TensorBatches(x, y, 32), None, epochs=1, loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[_Broken()])


def test_early_stopping_sets_the_flag_after_patience_epochs():
    stop = EarlyStopping("val_loss", patience=2)
    state = TrainState()
    for value in (1.0, 0.9, 0.95, 0.91):
        stop.on_epoch_end(state, {"val_loss": value})
    assert state.should_stop and "did not improve for 2 epochs" in state.stop_reason


def test_early_stopping_respects_min_delta_and_max_mode():
    stop = EarlyStopping("val_accuracy", patience=1, min_delta=0.05)
    state = TrainState()
    stop.on_epoch_end(state, {"val_accuracy": 0.80})
    stop.on_epoch_end(state, {"val_accuracy": 0.84})  # +0.04 < min_delta: not an improvement
    assert state.should_stop


def test_best_weights_prefer_the_averaged_model_when_it_validates_better():
    model = _model()
    best = BestWeights(model, "val_loss")
    best.on_epoch_end(TrainState(epoch=1), {"val_loss": 0.5, "ema_val_loss": 0.7})
    assert best.source == "raw" and best.best == 0.5
    best.on_epoch_end(TrainState(epoch=2), {"val_loss": 0.6, "ema_val_loss": 0.4})
    assert best.epoch == 2 and best.best == 0.4


def test_the_progress_bar_shows_each_epoch_with_its_loss(capsys):
    from dlpipe.train.callbacks import ProgressBar

    x, y = _data(64)
    model = _model()
    bar = ProgressBar(2, 2, enabled=True)
    fit(model, TensorBatches(x, y, 32), TensorBatches(x, y, 64), epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss(),
        callbacks=[bar])
    err = capsys.readouterr().err
    assert "epoch 1: loss=" in err and "epoch 2: loss=" in err and "val_loss=" in err
