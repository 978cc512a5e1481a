"""Freezing for fine-tuning: plans over every registered model, the optimizer, the callback."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from dlpipe.config import Component, TrainConfig
from dlpipe.errors import ConfigError
from dlpipe.finetune import Freezing, blocks_of, freeze_plan
from dlpipe.finetune._freeze import set_optimized
from dlpipe.models import MODELS, build
from dlpipe.train import Callback, TensorBatches, fit
from dlpipe.train import build_optimizer as _build_optimizer
from helpers import input_kind, tiny_layout


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class MovedBlocks(Callback):
    """Record, per epoch, the blocks (first name component) whose parameters changed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.moved: list[set[str]] = []

    def on_epoch_start(self, state):
        self._before = _snapshot(self.model)

    def on_epoch_end(self, state, metrics):
        now = self.model.state_dict()
        self.moved.append({k.split(".")[0] for k, v in self._before.items()
                           if not torch.equal(v, now[k])})


def _train(model, callbacks, epochs, *, lr=1e-2):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).float().unsqueeze(1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=0.1)  # decay would move any param it reached
    fit(model, TensorBatches(x, y, 16, shuffle=True, generator=gen), None, optimizer=optimizer,
        loss_fn=nn.BCEWithLogitsLoss(), epochs=epochs, callbacks=callbacks)


@pytest.mark.parametrize("name", MODELS.names())
def test_all_but_head_freezes_everything_outside_the_last_block_of_every_model(name):
    # embeddings give every tabular model 2+ blocks; the others have their own encoders
    model = build(name, 4, 3, cardinalities=(3, 7), layout=tiny_layout(input_kind(name), (3, 7)))
    blocks = blocks_of(model)
    head = [b for b in blocks if b.has_parameters][-1]
    plan = freeze_plan(model, "all_but_head")
    state = list(model.state_dict())
    assert len(blocks) >= 2
    assert set(plan.frozen) == {n for n in state if n not in head.state}
    assert set(head.state) == {n for n in state if n.startswith(f"{head.name}.")}
    trainable = {n for n, _ in model.named_parameters()} - set(plan.frozen)
    assert trainable and all(n.startswith(f"{head.name}.") for n in trainable)


def test_blocks_look_through_a_single_child_wrapper_and_skip_stateless_children():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    blocks = blocks_of(Wrapper())
    assert [b.name for b in blocks] == ["net.0", "net.2"]
    assert blocks[1].state == ("net.2.weight", "net.2.bias")


def test_freeze_patterns_are_globs_on_parameter_names():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    assert freeze_plan(model, ["0.*"]).frozen == ("0.weight", "0.bias")
    assert freeze_plan(model, ["*.bias"]).frozen == ("0.bias", "2.bias")


def test_a_pattern_that_matches_nothing_names_itself_and_lists_the_parameters():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ConfigError, match=r"finetune\.freeze\[1\]: pattern 'block0\.\*' matches "
                                          r"no parameter of the network; its parameters: "
                                          r"0\.weight, 0\.bias, 2\.weight, 2\.bias"):
        freeze_plan(model, ["0.*", "block0.*"])


def test_freezing_every_parameter_is_refused():
    model = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(ConfigError, match=r"finetune\.freeze: freezes every parameter of the "
                                          r"network \(2\), so nothing would train"):
        freeze_plan(model, ["*"])


def test_gradual_unfreezing_needs_something_frozen():
    with pytest.raises(ConfigError, match=r"finetune\.unfreeze_every: nothing is frozen"):
        freeze_plan(nn.Sequential(nn.Linear(4, 1)), [], unfreeze_every=2)


def _sgd_without_decay(params, *, lr: float = 0.1):
    return torch.optim.SGD(params, lr=lr)


@pytest.mark.parametrize("optimizer", [
    {"name": "adamw", "weight_decay": 0.0},
    {"name": "adamw", "weight_decay": 0.01},
    {"name": "user_optimizers:sgd"},  # a builder without weight_decay: no parameter groups
], ids=["one group", "decay groups", "no groups"])
def test_the_optimizer_gets_only_the_trainable_parameters(optimizer, monkeypatch):
    user = types.ModuleType("user_optimizers")
    user.sgd = _sgd_without_decay
    monkeypatch.setitem(sys.modules, "user_optimizers", user)
    model = build("mlp", 4, 1, kwargs={"hidden": [8, 8]})
    set_optimized(model, freeze_plan(model, ["block0.*", "block1.0.bias"]))
    tc = TrainConfig(optimizer=Component(**optimizer))
    optimizer = _build_optimizer(tc, model)
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in given}
    assert names == {"block1.0.weight", "head.weight", "head.bias"}


def test_frozen_parameters_and_norm_statistics_stay_byte_identical_while_the_rest_trains():
    torch.manual_seed(0)
    model = build("mlp", 4, 1, kwargs={"hidden": [8, 8], "norm": "batch"})
    plan = freeze_plan(model, ["block0.*"])
    set_optimized(model, plan)
    before = _snapshot(model)
    _train(model, [Freezing(model, plan)], epochs=3)
    after = model.state_dict()
    frozen = [n for n in before if n.startswith("block0.")]
    assert "block0.1.running_mean" in frozen and "block0.1.num_batches_tracked" in frozen
    for name in frozen:
        assert after[name].numpy().tobytes() == before[name].numpy().tobytes(), name
    for name in ("block1.0.weight", "block1.1.running_mean", "head.weight"):
        assert not torch.equal(after[name], before[name]), name


def test_gradual_unfreezing_moves_one_more_block_from_the_top_every_n_epochs():
    torch.manual_seed(0)
    model = build("mlp", 4, 1, kwargs={"hidden": [8, 8]})
    plan = freeze_plan(model, "all_but_head", unfreeze_every=2)
    set_optimized(model, plan)
    freezing, moved = Freezing(model, plan), MovedBlocks(model)
    _train(model, [freezing, moved], epochs=5)
    head, top, all_ = {"head"}, {"head", "block1"}, {"head", "block1", "block0"}
    assert moved.moved == [head, head, top, top, all_]
    assert [(r["block"], r["from_epoch"]) for r in freezing.released] == [("block1", 3),
                                                                          ("block0", 5)]


def test_freezing_is_undone_when_fit_ends():
    model = build("mlp", 4, 1, kwargs={"hidden": [8], "norm": "batch"})
    plan = freeze_plan(model, "all_but_head")
    set_optimized(model, plan)
    _train(model, [Freezing(model, plan)], epochs=1)
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_pre_hooks for m in model.modules())
