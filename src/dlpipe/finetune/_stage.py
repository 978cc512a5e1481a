"""The finetune stage's body: the parent's preprocessing and weights, frozen by plan, trained
on the new run's splits at a lower rate; the new data's metrics before and after."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dlpipe import runs
from dlpipe.config import Component, FinetuneConfig, PipelineConfig, load_config
from dlpipe.errors import ConfigError, DataError
from dlpipe.evaluate import evaluate_frames
from dlpipe.features import FittedFeatures, TabularFeatures, fit_features
from dlpipe.features import load as load_features
from dlpipe.finetune._freeze import Freezing, freeze_plan, set_optimized
from dlpipe.finetune._parent import (
    check_compatible,
    check_model_unchanged,
    open_parent,
    parent_lr,
)
from dlpipe.models.spec import build_from_spec, load_network
from dlpipe.runs import RunDir
from dlpipe.train import Callback, Trained, fit_arrays


def run(cfg: PipelineConfig, rundir: RunDir, *, callbacks: Sequence[Callback] = ()) -> Trained:
    """Fine-tune the parent of `cfg.finetune` on the run's splits; write what `train` writes,
    features.json, and finetune.json."""
    ft = section(cfg)
    parent = open_parent(ft)
    check_model_unchanged(cfg, parent)
    schema = rundir.read_json(runs.SCHEMA)
    check_compatible(parent.read_json(runs.SCHEMA), schema, parent.path)
    spec = parent.read_json(runs.MODEL)
    parent_fitted = load_features(parent)
    train = rundir.read_split("train")
    fitted = features_for(cfg, parent_fitted, schema, train)
    frames = {split: rundir.read_split(split) for split in ("val", "test")}

    model = load_network(parent)
    before = evaluate_frames(cfg, model, parent_fitted, frames)  # the parent as it is
    plan = freeze_plan(model, ft.freeze, ft.unfreeze_every)
    set_optimized(model, plan)
    freezing = Freezing(model, plan)
    lr = ft.lr or parent_lr(load_config(parent.read_yaml(runs.CONFIG))) / 10
    rundir.clear_checkpoints()
    val_xy = fitted.arrays(frames["val"])
    trained = fit_arrays(training_config(cfg, lr), fitted, fitted.arrays(train),
                         val_xy if len(frames["val"]) else None,
                         callbacks=[freezing, *callbacks], rundir=rundir, model=model)
    after = evaluate_frames(cfg, trained.model, fitted, frames)

    n_parameters = {name: p.numel() for name, p in trained.model.named_parameters()}
    frozen = set(plan.frozen)
    rundir.write_json(runs.FEATURES, fitted.to_json() if ft.refit_features
                      else parent.read_json(runs.FEATURES))
    rundir.write_json(runs.MODEL, spec)
    rundir.write_json(runs.TRAINING, {**trained.summary, "finetuned_from": str(parent.path)})
    rundir.write_tensors(runs.WEIGHTS, trained.model.state_dict())
    rundir.write_jsonl(runs.HISTORY, trained.state.history)
    rundir.write_json(runs.FINETUNE, {
        "parent": str(parent.path),
        "split": "test" if "test" in after else "val",
        "before": before,
        "after": after,
        "lr": lr,
        "epochs": ft.epochs,
        "epochs_run": trained.state.epoch,
        "refit_features": ft.refit_features,
        "parameters": {"total": sum(n_parameters.values()),
                       "frozen": sum(n for k, n in n_parameters.items() if k in frozen)},
        "frozen": list(plan.frozen),
        "unfrozen": freezing.released,
    })
    return trained


def section(cfg: PipelineConfig) -> FinetuneConfig:
    if cfg.finetune is None:
        raise ConfigError([("finetune", "this run has no finetune section; make a fine-tuned run "
                                        "with `dlpipe finetune PARENT_RUN --data NEW_DATA`")])
    return cfg.finetune


def training_config(cfg: PipelineConfig, lr: float) -> PipelineConfig:
    """`cfg` with `train.epochs` and the optimizer's `lr` taken from the finetune section."""
    ft = section(cfg)
    tc = cfg.train
    optimizer = Component(name=tc.optimizer.name, **{**tc.optimizer.kwargs, "lr": lr})
    train = tc.model_copy(update={"epochs": ft.epochs, "optimizer": optimizer})
    return cfg.model_copy(update={"train": train})


def features_for(cfg: PipelineConfig, parent: FittedFeatures, schema: dict[str, Any],
                 train: pd.DataFrame) -> FittedFeatures:
    """The parent's fitted preprocessing, or (`finetune.refit_features`) its inputs refitted
    on the new training split. The target encoding is always the parent's: the network's
    outputs keep their meaning.

    Raises:
        DataError: refitting would change the network's inputs (their number, one-hot or
            embedding categories, binary values), naming what changed.
    """
    if not section(cfg).refit_features:
        return parent
    refit = fit_features(schema, cfg.features, train).inputs
    changed = [what for what, old, new in zip(
        ("inputs", "embedding cardinalities", "binary values", "embedding categories"),
        _layout(parent.inputs), _layout(refit), strict=True) if old != new]
    if changed:
        gained = sorted(set(refit.feature_names_) - set(parent.inputs.feature_names_))
        lost = sorted(set(parent.inputs.feature_names_) - set(refit.feature_names_))
        detail = "".join(f"; {label}: {', '.join(names)}" for label, names in
                         (("new", gained), ("gone", lost)) if names)
        raise DataError(
            f"finetune.refit_features: refitting the preprocessing on the new training split "
            f"changes the network's inputs ({', '.join(changed)} differ: "
            f"{refit.n_numeric_ + len(refit.cardinalities_)} columns instead of the parent's "
            f"{parent.inputs.n_numeric_ + len(parent.inputs.cardinalities_)}{detail}); keep the "
            f"parent's preprocessing with finetune.refit_features: false")
    return FittedFeatures(inputs=refit, target=parent.target, task=parent.task)


def check_parent(cfg: PipelineConfig, schema: dict[str, Any] | None = None,
                 train: pd.DataFrame | None = None) -> None:
    """Every check the stage makes before training, for the data step to run first (so a
    run that cannot be fine-tuned leaves nothing behind)."""
    ft = section(cfg)
    parent = open_parent(ft)
    check_model_unchanged(cfg, parent)
    freeze_plan(build_from_spec(parent.read_json(runs.MODEL)), ft.freeze, ft.unfreeze_every)
    if schema is not None:
        check_compatible(parent.read_json(runs.SCHEMA), schema, parent.path)
        if train is not None:
            features_for(cfg, load_features(parent), schema, train)


def _layout(inputs: TabularFeatures) -> tuple[Any, ...]:
    """What a network's input columns mean, part by part."""
    binary = inputs.parts_.get("binary")
    embedding = inputs.parts_.get("embedding")
    return (inputs.feature_names_, list(inputs.cardinalities_),
            binary.values_ if binary is not None else None,
            embedding.categories_ if embedding is not None else None)
