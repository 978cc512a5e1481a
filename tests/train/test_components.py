"""Every registered optimizer, loss and scheduler builds from config and trains a step."""

import inspect

import pytest
import torch
from torch import nn

import dlpipe
from dlpipe.config import load_config
from dlpipe.errors import ConfigError
from dlpipe.pipeline import check
from dlpipe.train import LOSSES, OPTIMIZERS, SCHEDULERS
from dlpipe.train.losses import LOSS_TASKS, FocalLoss
from dlpipe.train.optimizers import parameter_groups
from helpers import minimal_config


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_lowers_the_loss_of_a_linear_fit(name):
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = nn.Linear(4, 1)
    optimizer = OPTIMIZERS.get(name)(parameter_groups(model, 0.0))
    first = None
    for _ in range(50):
        loss = nn.functional.mse_loss(model(x).reshape(-1), y)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_a_finite_scalar_with_gradients_for_its_tasks(name):
    for task in LOSS_TASKS[name]:
        outputs = torch.randn(16, 3 if task == "multiclass" else 1, requires_grad=True)
        targets = {"binary": torch.randint(0, 2, (16,)).float(),
                   "multiclass": torch.randint(0, 3, (16,)),
                   "regression": torch.randn(16)}[task]
        loss = LOSSES.get(name)()(outputs, targets)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss) and torch.isfinite(outputs.grad).all()


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits, targets = torch.randn(32, 4), torch.randint(0, 4, (32,))
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, targets),
                               nn.functional.cross_entropy(logits, targets))
    binary, labels = torch.randn(32, 1), torch.randint(0, 2, (32,)).float()
    torch.testing.assert_close(FocalLoss(gamma=0.0)(binary, labels),
                               nn.functional.binary_cross_entropy_with_logits(binary[:, 0], labels))


def test_focal_loss_down_weights_easy_examples():
    easy = torch.tensor([[8.0]]), torch.tensor([1.0])
    hard = torch.tensor([[-1.0]]), torch.tensor([1.0])
    focal, plain = FocalLoss(gamma=2.0), FocalLoss(gamma=0.0)
    assert focal(*easy) / plain(*easy) < focal(*hard) / plain(*hard)


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_runs_in_a_pipeline(name, tmp_path):
    cfg = minimal_config()
    cfg["train"].update(scheduler={"name": name}, epochs=3)
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    rates = [row["lr"] for row in result.history]
    assert len(rates) == 3 and all(r > 0 for r in rates)
    if name in ("step", "plateau"):
        assert rates[0] == rates[-1]  # no step/patience boundary within 3 epochs
    else:
        assert rates[0] != rates[-1]


def test_warmup_ramps_the_rate_up_before_the_schedule(tmp_path):
    cfg = minimal_config()
    cfg["train"].update(warmup_epochs=2, epochs=4, optimizer={"name": "sgd", "lr": 0.1})
    rates = [row["lr"] for row in dlpipe.run(cfg, run_dir=tmp_path / "run").history]
    assert rates[0] == pytest.approx(0.01) and rates[0] < rates[1] < rates[2] == pytest.approx(0.1)


def test_a_loss_that_does_not_fit_the_task_is_refused(tmp_path):
    cfg = minimal_config()
    cfg["train"]["loss"] = "mse"
    with pytest.raises(ConfigError, match=r"train\.loss\.name: loss 'mse' does not fit a binary "
                                          r"task; use one of: binary_cross_entropy, focal"):
        dlpipe.run(cfg, run_dir=tmp_path / "run")


def test_builder_arguments_are_validated_before_any_work():
    cfg = load_config(minimal_config(), ["train.optimizer.lr=-0.001", "train.optimizer.momentum=2",
                                         "train.scheduler.name=cosine",
                                         "train.scheduler.eta_mn=0"])
    with pytest.raises(ConfigError) as info:
        check(cfg)
    paths = [path for path, _ in info.value.problems]
    assert paths == ["train.optimizer.lr", "train.optimizer.momentum", "train.scheduler.eta_mn"]
    assert "Did you mean 'eta_min'?" in str(info.value)


def test_class_weights_reach_the_loss(tmp_path):
    from dlpipe.config import TrainConfig
    from dlpipe.train import build_loss

    y = torch.tensor([0.0] * 90 + [1.0] * 10)
    loss = build_loss(TrainConfig(), "binary", y, class_weight=True)
    assert float(loss.pos_weight) == pytest.approx(9.0)
    y3 = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    loss = build_loss(TrainConfig(), "multiclass", y3, class_weight=True)
    torch.testing.assert_close(loss.weight, torch.tensor([100 / 180, 100 / 90, 100 / 30]))


def test_l1_and_l2_penalties_shrink_the_weights(tmp_path):
    norms = {}
    for name, extra in (("plain", {}), ("l1", {"l1": 1e-2}), ("l2", {"l2": 1e-2})):
        cfg = minimal_config()
        cfg["train"].update(epochs=5, optimizer={"name": "adam", "lr": 1e-2}, **extra)
        result = dlpipe.run(cfg, run_dir=tmp_path / name)
        weights = result.rundir.read_tensors(dlpipe.runs.WEIGHTS)
        norms[name] = sum(float(w.abs().sum()) for k, w in weights.items() if k.endswith("weight"))
    assert norms["l1"] < norms["plain"] and norms["l2"] < norms["plain"]


def test_optimizer_builders_take_params_first():
    for name in OPTIMIZERS.names():
        assert next(iter(inspect.signature(OPTIMIZERS.get(name)).parameters)) == "params"


def test_weight_decay_skips_biases_and_norms_and_zero_decay_keeps_one_group():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    decayed, plain = parameter_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(plain["params"]) == 4  # two biases, the norm's weight and bias
    (single,) = parameter_groups(model, 0.0)
    assert len(single["params"]) == 6


def test_gradient_clipping_bounds_the_update():
    from dlpipe.train import TensorBatches, fit

    x, y = torch.randn(64, 4) * 100, torch.randn(64) * 100
    moved = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        before = [p.detach().clone() for p in model.parameters()]
        fit(model, TensorBatches(x, y, 64), None, epochs=1, grad_clip=clip,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            loss_fn=lambda out, t: nn.functional.mse_loss(out.reshape(-1), t))
        moved[clip] = torch.cat([(p.detach() - b).reshape(-1) for p, b in
                                 zip(model.parameters(), before, strict=True)]).norm()
    # SGD with lr 1 moves the weights by exactly the (clipped) gradient norm.
    assert float(moved[1e-3]) == pytest.approx(1e-3, rel=1e-4)
    assert float(moved[None]) > 1.0


def test_weight_averaging_is_validated_and_can_win_the_best_epoch(tmp_path):
    cfg = minimal_config()
    cfg["train"].update(epochs=6, ema={"decay": 0.9}, early_stopping={"patience": 10})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    assert all("ema_val_loss" in row for row in result.history)
    summary = dlpipe.runs.RunDir.open(result.path).read_json(dlpipe.runs.TRAINING)
    best = min(min(r["val_loss"], r["ema_val_loss"]) for r in result.history)
    assert summary["best_value"] == pytest.approx(best)
    assert summary["best_source"] in ("raw", "ema")


def user_model(in_features, out_features, *, width: int = 8):
    """A user-supplied builder, referred to as `test_components:user_model`."""
    return nn.Sequential(nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, out_features))


def user_loss(*, scale: float = 1.0):
    return lambda outputs, targets: scale * nn.functional.binary_cross_entropy_with_logits(
        outputs.reshape(-1), targets)


def test_user_model_and_loss_by_module_path_train_in_a_pipeline(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "test_components", sys.modules[__name__])
    cfg = minimal_config(model={"name": "test_components:user_model", "width": 4})
    cfg["train"]["loss"] = {"name": "test_components:user_loss", "scale": 2.0}
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    weights = result.rundir.read_tensors(dlpipe.runs.WEIGHTS)
    assert weights["0.weight"].shape == (4, 8)
    assert dlpipe.load(result.path).predict(result.rundir.read_split("test")).labels.shape == (80,)


def test_the_deterministic_switch_reproduces_a_run(tmp_path):
    cfg = minimal_config()
    cfg["train"]["deterministic"] = True
    a = dlpipe.run(cfg, run_dir=tmp_path / "a")
    b = dlpipe.run(cfg, run_dir=tmp_path / "b")
    assert (a.path / "weights.safetensors").read_bytes() == (
        b.path / "weights.safetensors").read_bytes()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu_and_keeps_fp32_weights(precision, tmp_path):
    cfg = minimal_config()
    cfg["train"].update(precision=precision, epochs=8, optimizer={"name": "adam", "lr": 1e-2})
    result = dlpipe.run(cfg, run_dir=tmp_path / "run")
    weights = result.rundir.read_tensors(dlpipe.runs.WEIGHTS)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.metrics["test"]["accuracy"] > 0.7


def test_mixed_precision_forward_runs_in_the_lower_precision():
    from dlpipe.train.precision import precision_for

    seen = []
    model = nn.Linear(4, 2)
    model.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with precision_for("bf16", torch.device("cpu")).autocast():
        model(torch.randn(3, 4))
    assert seen == [torch.bfloat16]
    assert precision_for("fp16", torch.device("cpu")).scaler is not None
