"""Structured pruning reaches each amount in steps, fine-tuning after each at the configured
rate with the run's own training setup, keeping the epoch of lowest validation loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dlpipe import runs
from dlpipe.compress import _search, prune
from dlpipe.compress._finetune import finetune, finetune_config, run_lr
from dlpipe.config import Component, CompressConfig, load_config
from dlpipe.features import load as load_features
from dlpipe.models.spec import load_network
from dlpipe.pipeline import load_run_config
from helpers import minimal_config


@pytest.mark.parametrize(("start", "level", "step", "expected"), [
    (0.0, 0.5, 0.125, [0.125, 0.25, 0.375, 0.5]),
    (0.0, 0.25, 0.125, [0.125, 0.25]),
    (0.25, 0.5, 0.125, [0.375, 0.5]),
    (0.0, 0.5, 0.2, [1 / 6, 2 / 6, 0.5]),  # equal steps no larger than 0.2
    (0.0, 0.75, 1.0, [0.75]),  # step 1: one shot
    (0.5, 0.75, 0.3, [0.75]),
])
def test_structured_steps_are_equal_no_larger_than_the_step_and_end_on_the_level(
        start, level, step, expected):
    steps = _search.structured_steps(start, level, step)
    assert steps == pytest.approx(expected)
    assert steps[-1] == level  # exactly: the variant's name and widths come from it
    gaps = np.diff([start, *steps])
    assert np.all(gaps <= step + 1e-12) and np.all(gaps > 0)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_structured_step_must_be_in_0_1(bad):
    with pytest.raises(ValidationError, match="structured_step"):
        CompressConfig(structured_step=bad)
    assert CompressConfig().structured_step == 0.125


def test_finetune_config_trains_at_the_scaled_rate_with_no_schedule_and_keeps_the_best():
    cfg = load_config(minimal_config(train={
        "epochs": 50, "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
        "scheduler": {"name": "cosine"}, "early_stopping": {"monitor": "val_accuracy"},
        "ema": {"decay": 0.99}, "keep": "last", "augment": [{"name": "random_crop"}]}))
    tuned = finetune_config(cfg, epochs=3, lr_factor=0.5, restore_best=True).train
    assert tuned.epochs == 3 and tuned.keep == "best"
    assert tuned.optimizer.name == "adamw"
    assert tuned.optimizer.kwargs == {"lr": pytest.approx(1e-3), "weight_decay": 0.01}
    assert tuned.scheduler is None and tuned.early_stopping is None and tuned.ema is None
    assert [a.name for a in tuned.augment] == ["random_crop"]  # the run's augmentation stays
    assert cfg.train.epochs == 50 and cfg.train.optimizer.kwargs["lr"] == 2e-3  # not changed
    assert finetune_config(cfg, epochs=1, lr_factor=1, restore_best=False).train.keep == "last"


def test_the_rate_falls_back_to_the_optimizer_default_or_is_refused():
    assert run_lr(load_config(minimal_config(train={"optimizer": {"name": "adam"}}))) == 1e-3
    cfg = load_config(minimal_config(train={"optimizer": {"name": "sgd", "lr": 0.1}}))
    assert run_lr(cfg) == 0.1


def test_finetuning_keeps_the_epoch_of_lowest_val_loss(trained):
    cfg = load_run_config(trained.rundir)
    fitted = load_features(trained.rundir)
    train, val = (fitted.arrays(trained.rundir.read_split(s)) for s in ("train", "val"))
    model = load_network(trained.rundir)
    # A rate too high: val loss jumps around, and the last epoch is not the best one
    # (measured: 0.49 for the last, 0.33 for the best, 0.40 before fine-tuning).
    wild = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "optimizer": Component(name="sgd", lr=1.0)})})
    last = finetune(copy.deepcopy(model), wild, fitted, train, None, epochs=6, lr_factor=1.0)
    best = finetune(copy.deepcopy(model), wild, fitted, train, val, epochs=6, lr_factor=1.0)

    def val_loss(network):
        with torch.inference_mode():
            logits = network(torch.from_numpy(val[0])).reshape(-1)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(val[1]).float()))

    assert val_loss(best) < val_loss(last) - 0.05
    assert not best.training and not last.training


def test_structured_search_shrinks_in_steps_and_finetunes_after_each(compressed, monkeypatch):
    shrunk, tuned = [], []
    real_shrink, real_finetune = prune.shrink, _search.finetune

    def record_shrink(model, spec, amount):
        shrunk.append((spec["kwargs"]["hidden"], amount))
        return real_shrink(model, spec, amount)

    def record_finetune(model, *args, **kwargs):
        tuned.append((list(args[3][0].shape), kwargs["epochs"], kwargs["lr_factor"]))
        return real_finetune(model, *args, **kwargs)

    monkeypatch.setattr(_search.prune, "shrink", record_shrink)
    monkeypatch.setattr(_search, "finetune", record_finetune)
    rundir, report = compressed(methods=["structured"], structured_amounts=[0.25, 0.5],
                                structured_step=0.125, finetune_epochs=1,
                                finetune_lr_factor=0.5, max_metric_drop=1.0)
    # 32-16 → 28-14 → 24-12 (0.25 reported) → 20-10 → 16-8 (0.5 reported): one eighth of the
    # original widths per step, each amount relative to the widths the chain has by then.
    assert [hidden for hidden, _ in shrunk] == [[32, 16], [28, 14], [24, 12], [20, 10]]
    assert [a for _, a in shrunk] == pytest.approx([1 / 8, 1 / 7, 1 / 6, 1 / 5])
    assert len(tuned) == 4 and all(t[1:] == (1, 0.5) for t in tuned)
    assert [v["name"] for v in report["variants"]] == ["original", "structured-0.25",
                                                        "structured-0.5"]
    assert report["chosen"]["fp32"] == "structured-0.5"
    assert rundir.read_json(runs.COMPRESSED_MODEL)["kwargs"]["hidden"] == [16, 8]


def test_the_search_reports_the_strongest_amount_within_the_guard(compressed):
    # A guard no structured step can meet except by luck: whatever is kept is the last
    # accepted amount, and nothing stronger than the first rejected one is tried.
    rundir, report = compressed(methods=["structured"], structured_amounts=[0.25, 0.5, 0.75, 0.9],
                                structured_step=0.25, finetune_epochs=0, max_metric_drop=0.0)
    variants = report["variants"][1:]
    accepted = [v["name"] for v in variants if v["accepted"]]
    assert all(v["accepted"] for v in variants[:-1])
    expected = accepted[-1] if accepted else "original"
    assert report["chosen"]["fp32"] == expected
    if not variants[-1]["accepted"]:
        assert variants[-1]["reason"]
