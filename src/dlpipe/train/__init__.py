"""The train stage: assemble model, loss, optimizer and callbacks from the config, call `fit`,
and write the deliverable weights, the model spec, the history and resumable checkpoints."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dlpipe import runs
from dlpipe.config import PipelineConfig, TrainConfig
from dlpipe.errors import ConfigError, RunDirError
from dlpipe.features import FittedFeatures
from dlpipe.features import load as load_features
from dlpipe.metrics import compute_epoch_metrics, epoch_metrics
from dlpipe.models import build
from dlpipe.models.heads import output_size, to_scores
from dlpipe.models.spec import spec_of
from dlpipe.runs import RunDir
from dlpipe.train._checkpoint import pack, unpack
from dlpipe.train._stats import ParamStats
from dlpipe.train.callbacks import (
    BestWeights,
    Callback,
    Checkpoint,
    EarlyStopping,
    ExponentialMovingAverage,
    History,
    LRSchedule,
    ProgressBar,
)
from dlpipe.train.distributed import Group, join
from dlpipe.train.loggers import build_loggers
from dlpipe.train.loop import TensorBatches, fit, predict_outputs, validate
from dlpipe.train.losses import LOSS_TASKS, LOSSES, default_loss
from dlpipe.train.optimizers import OPTIMIZERS, decay_split, parameter_groups
from dlpipe.train.placement import place, tensor_bytes
from dlpipe.train.precision import Precision, precision_for
from dlpipe.train.schedulers import SCHEDULERS, with_warmup
from dlpipe.train.state import TrainState

if TYPE_CHECKING:
    from dlpipe.train.stream import StreamedSplit

__all__ = [
    "LOSSES", "OPTIMIZERS", "SCHEDULERS", "Callback", "TensorBatches", "TrainState", "Trained",
    "fit", "fit_arrays", "predict_outputs", "run", "validate",
]


@dataclass
class Trained:
    """A trained network holding its deliverable weights, and how training went."""

    model: nn.Module
    state: TrainState
    spec: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def run(cfg: PipelineConfig, rundir: RunDir, *, resume: bool = False,
        callbacks: Sequence[Callback] = ()) -> Trained:
    """Train on the run's train split, validate on its val split, write the results.

    With `resume`, continue from the last complete checkpoint in `rundir`. Under torchrun
    with several processes, train with DDP (`dlpipe.train.distributed`), and resume by
    itself when torchrun restarted the job after a checkpoint was written.
    """
    group = join(cfg)  # None in a single process
    fitted = load_features(rundir)
    train_xy: Any
    val_xy: Any
    if cfg.data.stream:  # larger than memory: batches read from the prepared files
        from dlpipe.train.stream import StreamedSplit

        if cfg.train.fit_on != "train":
            raise ConfigError([("data.stream", "streamed data trains on the train split "
                                               "(fit_on: train)")])
        train_xy, val_xy = StreamedSplit.of(rundir, "train"), StreamedSplit.of(rundir, "val")
    else:
        train_xy = fitted.arrays(rundir.read_split("train"))
        val_xy = fitted.arrays(rundir.read_split("val"))
    if cfg.train.fit_on == "train+val":  # a final fit after model selection: nothing held out
        if cfg.train.early_stopping is not None:
            raise ConfigError([("train.fit_on", "train+val leaves no validation rows for early "
                                                "stopping; remove train.early_stopping")])
        train_xy = tuple(np.concatenate(pair) for pair in zip(train_xy, val_xy, strict=True))
        val_xy = None
    if group is not None and not resume:
        resume = group.resumes(rundir)
    if resume and rundir.read_checkpoint() is None:
        raise RunDirError(f"{rundir.path} has no complete checkpoint to resume from; "
                          f"run `dlpipe train {rundir.path}` without --resume")
    if not resume:
        rundir.clear_checkpoints()
    trained = fit_arrays(cfg, fitted, train_xy, val_xy, callbacks=callbacks, rundir=rundir,
                         resume=resume, group=group)
    rundir.write_json(runs.MODEL, trained.spec)
    rundir.write_json(runs.TRAINING, trained.summary)
    rundir.write_tensors(runs.WEIGHTS, trained.model.state_dict())
    rundir.write_jsonl(runs.HISTORY, trained.state.history)
    return trained


def fit_arrays(
    cfg: PipelineConfig,
    fitted: FittedFeatures,
    train_xy: tuple[np.ndarray, np.ndarray] | StreamedSplit,
    val_xy: tuple[np.ndarray, np.ndarray] | StreamedSplit | None,
    *,
    callbacks: Sequence[Callback] = (),
    rundir: RunDir | None = None,
    resume: bool = False,
    metrics: Sequence[str] = (),
    model: nn.Module | None = None,
    group: Group | None = None,
) -> Trained:
    """Build everything `cfg.train` describes and train on prepared arrays.

    This is the train stage without the run directory's inputs, for k-fold evaluation and
    tuning. With `rundir`, history and checkpoints are written there as training goes.
    A streaming run passes `StreamedSplit`s: its rows are read from disk batch by batch
    (`dlpipe.train.stream`), and no train_* metrics are computed.

    Args:
        callbacks: extra callbacks, called after dlpipe's own (a tuning pruner, a logger).
        metrics: metric names (from `dlpipe.metrics.METRICS`) to compute on the validation
            split every epoch, logged as ``val_<name>``, on top of the task's standard few.
        model: train this network, as it is (e.g. a parent run's weights, for fine-tuning),
            instead of a fresh `cfg.model`; it must have the architecture `cfg.model`
            describes. Parameters with ``requires_grad=False`` get no optimizer.
        group: this process's torchrun job (`distributed.join`): train with DDP on this
            rank's share of every batch. Only rank 0 should pass a writable `rundir`.
    """
    tc = cfg.train
    task = fitted.task
    device = group.device if group is not None else _device(tc.device)
    precision = precision_for(tc.precision, device)
    _seed_everything(cfg.seed, tc)
    generator = torch.Generator().manual_seed(cfg.seed)

    streamed = not isinstance(train_xy, tuple)  # a StreamedSplit: rows read from disk
    if streamed:
        placed = place("never", device, 0)
        y_train = (train_xy.class_counts(len(fitted.classes)) if task != "regression"
                   else torch.zeros(0))
        has_val = val_xy is not None and len(val_xy) > 0
    else:
        # The data sets on the GPU when they fit (batches sliced there), else pinned host memory.
        placed = place(tc.data_on_device, device,
                       tensor_bytes(train_xy, task) + tensor_bytes(val_xy, task))
        x_train, y_train = placed.put(*_tensors(train_xy, task, placed.data_device))
        has_val = val_xy is not None and len(val_xy[0]) > 0
    if not has_val and (tc.early_stopping is not None or tc.scheduler and
                        tc.scheduler.name == "plateau"):
        raise ConfigError([("data.split.val", "early stopping and the plateau scheduler "
                                              "need a validation split; set data.split.val > 0")])
    n_classes = len(fitted.classes)
    layout = fitted.layout
    spec = spec_of(cfg.model.name, cfg.model.kwargs, init=cfg.model.init,
                   in_features=fitted.inputs.n_numeric_, out_features=output_size(task, n_classes),
                   cardinalities=fitted.inputs.cardinalities_, task=task, layout=layout)
    if model is None:
        model = build(cfg.model.name, spec["in_features"], spec["out_features"],
                      cardinalities=spec["cardinalities"], layout=layout,
                      vocabulary=_vocabulary(fitted), init=cfg.model.init,
                      kwargs=cfg.model.kwargs)
    model = model.to(device)
    if (device.type == "cuda" and precision.name != "fp32"
            and any(isinstance(m, nn.Conv2d) for m in model.modules())):
        # Tensor-core convolutions want channels_last; in fp32 the plain layout measured
        # faster on an H100 (benchmarks/RESULTS.md, bench_gpu).
        model = model.to(memory_format=torch.channels_last)
    augment = _augment(tc, layout, task, n_classes, cfg.seed, device)

    loss_fn = build_loss(tc, task, y_train, cfg.data.imbalance == "class_weight",
                         counted=streamed)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    optimizer = build_optimizer(tc, model)
    if streamed:
        from dlpipe.train.stream import StreamBatches

        blocks = {"block_rows": cfg.data.chunk_rows, "device": device}
        train = StreamBatches(train_xy, tc.batch_size, shuffle=True, generator=generator,
                              buffer_rows=tc.shuffle_buffer, **blocks)
        val = StreamBatches(val_xy, 4096, **blocks) if has_val else None
        if group is not None:  # each rank reads its own rows of every epoch from disk
            train, val = group.shard(train), group.shard(val) if val is not None else None
    else:
        train = TensorBatches(x_train, y_train, tc.batch_size, shuffle=True,
                              generator=generator)
        val = (TensorBatches(*placed.put(*_tensors(val_xy, task, placed.data_device)), 1024)
               if has_val else None)
        if group is not None:  # this rank's share of each batch; validation outputs gathered
            train, val = group.shard(train), group.shard(val) if val is not None else None
        train, val = placed.feed(train), placed.feed(val) if val is not None else None

    def metrics_of(outputs: torch.Tensor, y: torch.Tensor,
                   which: Sequence[str] | None = None) -> dict[str, float]:
        scores = to_scores(task, outputs).cpu().numpy()
        truth = y.cpu().numpy()
        if task == "regression":
            scores = fitted.target.inverse_transform(scores)
            truth = fitted.target.inverse_transform(truth)
        return compute_epoch_metrics(task, truth, scores, names if which is None else which)

    monitor = tc.early_stopping.monitor if tc.early_stopping else "val_loss"
    mode = tc.early_stopping.mode if tc.early_stopping else "auto"
    names = epoch_metrics(task)
    wanted = [*metrics, monitor[4:] if monitor.startswith("val_") else monitor]
    names += [n for n in dict.fromkeys(wanted) if n != "loss" and n not in names]

    cbs: list[Callback] = []
    ema = None
    if tc.ema is not None and val is not None:
        ema = ExponentialMovingAverage(
            model, tc.ema.decay, lambda m: _unprefixed(validate(m, val, loss_fn, metrics_of)))
        cbs.append(ema)
    schedule = build_scheduler(tc, optimizer, len(train), monitor, mode)
    if schedule is not None:
        cbs.append(schedule)
    cbs.append(History(rundir and (lambda rows: rundir.write_jsonl(runs.HISTORY, rows))))
    best = BestWeights(model, monitor, mode=mode, ema=ema) if val is not None else None
    if best is not None:
        cbs.append(best)
    if tc.early_stopping is not None:
        es = tc.early_stopping
        cbs.append(EarlyStopping(es.monitor, mode=es.mode, patience=es.patience,
                                 min_delta=es.min_delta))
    if rundir is not None:  # a run's diagnostics; k-fold folds and tuning trials have none
        if tc.log_param_stats:
            steps = -(-len(train) // tc.grad_accumulation)
            cbs.append(ParamStats(model, optimizer, steps,
                                  lambda text: rundir.write_bytes(runs.PARAM_STATS, text.encode())))
        # Rank 0 logs; the other ranks hold placeholders, keeping the checkpointed order.
        cbs.extend(build_loggers(tc.loggers, rundir, cfg.model_dump(mode="json"), model)
                   if rundir.writable else [Callback() for _ in tc.loggers])
    cbs.extend(callbacks)
    state = TrainState()
    if rundir is not None:
        def save(s: TrainState) -> None:
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": precision.scaler.state_dict() if precision.scaler else None,
                       "augment": augment.state_dict() if augment is not None else None,
                       "state": s.state_dict(), "rng": _rng_state(generator),
                       "callbacks": [cb.state_dict() for cb in cbs]}
            meta, tensors = pack(payload)
            rundir.write_checkpoint(s.epoch, {"tensors": tensors}, meta)

        cbs.append(Checkpoint(save if group is None else group.on_main(save),
                              every=tc.checkpoint_every))
        if resume:
            _restore(rundir, model, optimizer, state, generator, cbs, precision, augment)
    show = {"auto": None, "always": True, "never": False}[tc.progress]
    if group is not None:  # appended after the checkpointed callbacks: resume keeps their order
        cbs.append(group.seed_per_rank(cfg.seed, [augment.generator] if augment else []))
        show = show if group.is_main else False  # one progress bar per job
    bar = ProgressBar(tc.epochs, len(train), enabled=show)
    if bar.enabled:
        cbs.append(bar)

    penalty = _penalty(model, tc.l1, tc.l2)
    try:
        fit(_trainable(model, group, tc), train, val, optimizer=optimizer,
            loss_fn=loss_fn, epochs=tc.epochs,
            callbacks=cbs, state=state, val_metrics=metrics_of, penalty=penalty,
            grad_clip=tc.grad_clip, accumulation=tc.grad_accumulation, precision=precision,
            augment=augment,
            # Streamed: no train_* metrics, which would keep every output of an epoch.
            train_metrics=None if streamed else (
                lambda o, y: metrics_of(o, y, epoch_metrics(task))))
    finally:
        bar.close()  # leave the terminal usable when training fails

    summary: dict[str, Any] = {"epochs_run": state.epoch, "steps": state.step,
                               "stop_reason": state.stop_reason, "monitor": monitor,
                               "kept": "last", **_device_info(device)}
    summary["data_on"] = "streamed from disk" if streamed else placed.label
    if tc.compile:
        summary["compiled"] = tc.compile_mode
    if group is not None:
        summary.update(processes=group.world_size, restarts=group.restart_count)
    if tc.keep == "best" and best is not None and best.weights is not None:
        model.load_state_dict(best.weights)
        summary.update(kept="best", best_epoch=best.epoch, best_value=best.best,
                       best_source=best.source)
    return Trained(model.eval(), state, spec, summary)


def build_loss(tc: TrainConfig, task: str, y_train: torch.Tensor, class_weight: bool, *,
               counted: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The configured loss (or the task's default), with class weights when asked.

    `y_train` holds the training targets, or with `counted` the number of rows per class.
    """
    component = tc.loss
    name = component.name if component is not None else default_loss(task)
    kwargs = dict(component.kwargs) if component is not None else {}
    builder = LOSSES.get(name, path="train.loss.name")
    tasks = LOSS_TASKS.get(name)
    if tasks is not None and task not in tasks:
        fits = sorted(n for n, t in LOSS_TASKS.items() if task in t)
        raise ConfigError([("train.loss.name", f"loss {name!r} does not fit a {task} task; "
                                               f"use one of: {', '.join(fits)}")])
    if class_weight and task != "regression":
        params = inspect.signature(builder).parameters
        counts = y_train.long().cpu() if counted else torch.bincount(
            y_train.long().cpu(), minlength=2 if task == "binary" else 0)
        if task == "binary" and "pos_weight" in params:
            kwargs.setdefault("pos_weight", float(counts[0]) / max(float(counts[1]), 1.0))
        elif "weight" in params:  # 'balanced': n / (K * n_c)
            total = int(counts.sum())
            kwargs.setdefault("weight", total / (len(counts) * counts.clamp(min=1).float()))
    loss = builder(**kwargs)
    if not callable(loss):
        raise ConfigError([("train.loss.name", f"{name!r} returned {type(loss).__name__}, not a "
                                               f"callable (outputs, targets) -> loss")])
    return loss


def build_optimizer(tc: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    builder = OPTIMIZERS.get(tc.optimizer.name, path="train.optimizer.name")
    kwargs = dict(tc.optimizer.kwargs)
    signature = inspect.signature(builder).parameters
    decay = kwargs.pop("weight_decay", None)
    if "fused" in signature and "fused" not in kwargs and all(
            p.is_cuda and p.is_floating_point() for p in model.parameters()):
        kwargs["fused"] = True  # one kernel per step instead of one per parameter group
    if decay is None and "weight_decay" in signature:
        decay = signature["weight_decay"].default
    if decay is None or decay is inspect.Parameter.empty:
        return builder([p for p in model.parameters() if p.requires_grad], **kwargs)
    return builder(parameter_groups(model, decay), **kwargs)


def build_scheduler(tc: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    monitor: str, mode: str) -> LRSchedule | None:
    if tc.scheduler is None and tc.warmup_epochs == 0:
        return None
    scheduled = None
    kwargs = dict(tc.scheduler.kwargs) if tc.scheduler is not None else {}
    if tc.scheduler is not None:
        builder = SCHEDULERS.get(tc.scheduler.name, path="train.scheduler.name")
        if tc.scheduler.name == "plateau":
            from dlpipe.train.callbacks import resolve_mode

            kwargs.setdefault("mode", resolve_mode(monitor, mode))
        scheduled = builder(optimizer, epochs=tc.epochs, steps_per_epoch=steps_per_epoch,
                            **kwargs)
    if tc.warmup_epochs:
        if scheduled is not None and scheduled[1] == "plateau":
            raise ConfigError([("train.warmup_epochs", "warmup cannot be combined with the "
                                                       "plateau scheduler; use 0")])
        scheduled = with_warmup(optimizer, scheduled, tc.warmup_epochs, steps_per_epoch)
    scheduler, interval = scheduled
    if interval == "plateau":
        return LRSchedule(scheduler, interval="epoch", monitor=monitor)
    return LRSchedule(scheduler, interval=interval)


def _tensors(xy: tuple[np.ndarray, np.ndarray], task: str,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = xy
    target_dtype = torch.long if task == "multiclass" else torch.float32
    return (torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device),
            torch.as_tensor(np.ascontiguousarray(y), dtype=target_dtype, device=device))


def _trainable(model: nn.Module, group: Group | None, tc: TrainConfig) -> nn.Module:
    """What the loop runs: `model`, in DDP under torchrun, through `torch.compile` when asked.

    Only the loop sees the wrappers; checkpoints, best weights, the weight average and the
    delivered weights are `model`'s own (no ``module.`` or ``_orig_mod.`` prefixes).
    """
    net = model if group is None else group.wrap(model, sync_batchnorm=tc.sync_batchnorm)
    if tc.compile:
        net = torch.compile(net, mode=None if tc.compile_mode == "default" else tc.compile_mode)
    return net


def _vocabulary(fitted: FittedFeatures) -> list[str] | None:
    """The tokens of the one text column (for pretrained vectors), when there is one."""
    if len(fitted.text) != 1 or fitted.inputs.columns or fitted.images:
        return None
    return getattr(next(iter(fitted.text.values())), "vocabulary_", None)


def _augment(tc: TrainConfig, layout: list[dict[str, Any]], task: str, n_classes: int,
             seed: int, device: torch.device) -> Any:
    """The batch augmentation of `train.augment` over the one image column, or None."""
    if not tc.augment:
        return None
    images = [b for b in layout if b["kind"] == "image"]
    if len(images) != 1:
        found = "no image column" if not images else f"{len(images)} image columns"
        raise ConfigError([("train.augment", f"augmentation applies to one image column; the "
                                             f"data has {found}; remove train.augment")])
    from dlpipe.train.augment import build_augment

    block = images[0]
    return build_augment([(c.name, c.kwargs) for c in tc.augment], start=block["start"],
                         shape=tuple(block["shape"]), task=task, n_classes=n_classes,
                         seed=seed, device=device, path="train.augment")


def _penalty(model: nn.Module, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    if not l1 and not l2:
        return None
    weights, _ = decay_split(model)

    def penalty() -> torch.Tensor:
        total = torch.zeros((), device=weights[0].device)
        for w in weights:
            if l1:
                total = total + l1 * w.abs().sum()
            if l2:
                total = total + l2 * w.pow(2).sum()
        return total

    return penalty


def _unprefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("ema_"): v for k, v in metrics.items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError([("train.device", f"unknown device {name!r}; use auto, cpu, cuda, "
                                            f"cuda:N or mps")]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([("train.device", "CUDA is not available on this machine; use cpu "
                                            "or auto")])
    return device


def _device_info(device: torch.device) -> dict[str, str]:
    """The device training ran on, for training.json: ``device`` and, on CUDA,
    ``device_name`` (e.g. ``NVIDIA H100 80GB HBM3``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": f"cuda:{index}", "device_name": torch.cuda.get_device_name(index)}
    return {"device": str(device)}


def _seed_everything(seed: int, tc: TrainConfig) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    if torch.are_deterministic_algorithms_enabled() != tc.deterministic:
        # Only when it changes: the call imports torch's compiler stack (~1.5 s).
        torch.use_deterministic_algorithms(tc.deterministic)


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}


def _restore(rundir: RunDir, model: nn.Module, optimizer: torch.optim.Optimizer,
             state: TrainState, generator: torch.Generator, cbs: list[Callback],
             precision: Precision, augment: Any = None) -> None:
    found = rundir.read_checkpoint()
    if found is None:
        return
    tensors, meta = found
    payload = unpack(meta, tensors["tensors"])
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if precision.scaler is not None and payload.get("scaler"):
        precision.scaler.load_state_dict(payload["scaler"])
    if augment is not None and payload.get("augment"):
        augment.load_state_dict(payload["augment"])
    state.load_state_dict(payload["state"])
    torch.set_rng_state(payload["rng"]["torch"])
    generator.set_state(payload["rng"]["shuffle"])
    saved = payload["callbacks"]
    for cb, cb_state in zip(cbs, saved, strict=False):
        cb.load_state_dict(cb_state)
