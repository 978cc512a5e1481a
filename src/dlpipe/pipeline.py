"""Run the enabled stages in order. Each stage is a plain function `run(cfg, rundir)`;
nothing else orchestrates. `check` validates every component before any work starts."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlpipe import runs
from dlpipe.config import PipelineConfig, load_config, to_dict
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.runs import RunDir

if TYPE_CHECKING:
    from dlpipe.finetune import Finetuned
    from dlpipe.train.distributed import Group

#: Every stage in pipeline order: name → "module:function" of its `run(cfg, rundir, **options)`.
#: Imported only when the stage runs, so `import dlpipe` stays light.
STAGE_RUNNERS: dict[str, str] = {
    "data": "dlpipe.pipeline:_run_data",
    "features": "dlpipe.features:run",
    "tune": "dlpipe.tune:run",
    "train": "dlpipe.train:run",
    "finetune": "dlpipe.finetune:run",
    "evaluate": "dlpipe.evaluate:run",
    "compress": "dlpipe.compress:run",
    "export": "dlpipe.export:run",
    "report": "dlpipe.report:run",
}
#: Stages that run only when the config has their section (e.g. `tune:`); the others always do.
OPTIONAL_STAGES = {"tune", "finetune", "compress", "export"}
#: Stages a fine-tuned run (`finetune:` section) skips: it starts from its parent's
#: preprocessing and weights.
REPLACED_BY_FINETUNE = {"features", "tune", "train"}
STAGES = tuple(STAGE_RUNNERS)
#: The stage whose results each config section shapes (`rerun` keeps an override of a section
#: in config.yaml only when that stage is the one re-run or a later one).
SECTION_STAGES = {"seed": "data", "data": "data", "features": "features", "tune": "tune",
                  "model": "train", "train": "train", "finetune": "finetune",
                  "evaluate": "evaluate", "compress": "compress", "export": "export",
                  "report": "report", "name": "report"}

ConfigSource = str | os.PathLike[str] | dict[str, Any] | PipelineConfig


@dataclass
class Result:
    """What `dlpipe.run` returns: the run directory and what the stages measured."""

    rundir: RunDir
    metrics: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def path(self) -> Path:
        return self.rundir.path


def check(cfg: PipelineConfig) -> None:
    """Resolve every component name and bind its kwargs to the builder's signature.

    Raises:
        ConfigError: listing every problem with its dotted path.
    """
    from dlpipe._signature import check_kwargs
    from dlpipe.metrics import METRICS
    from dlpipe.models import MODELS, SUPPLIED
    from dlpipe.models.init import INITS
    from dlpipe.train import LOSSES, OPTIMIZERS, SCHEDULERS

    problems: list[tuple[str, str]] = []

    def component(registry: Any, comp: Any, path: str, skip: Iterable[str]) -> None:
        try:
            builder = registry.get(comp.name, path=f"{path}.name")
        except ConfigError as exc:
            problems.extend(exc.problems)
            return
        problems.extend(check_kwargs(builder, comp.kwargs, path, skip=skip))

    component(MODELS, cfg.model, "model", SUPPLIED)
    if cfg.model.init is not None:
        try:
            INITS.get(cfg.model.init, path="model.init")
        except ConfigError as exc:
            problems.extend(exc.problems)
    tc = cfg.train
    if tc.augment:
        from dlpipe.train.augment import augment_problems

        problems.extend(augment_problems(tc.augment, "train.augment"))
    component(OPTIMIZERS, tc.optimizer, "train.optimizer", ("params",))
    if tc.loss is not None:
        component(LOSSES, tc.loss, "train.loss", ())
    if tc.scheduler is not None:
        component(SCHEDULERS, tc.scheduler, "train.scheduler",
                  ("optimizer", "epochs", "steps_per_epoch"))
        if tc.scheduler.name == "plateau" and tc.warmup_epochs:
            problems.append(("train.warmup_epochs",
                             "warmup cannot be combined with the plateau scheduler; use 0"))
    for i, name in enumerate(cfg.evaluate.metrics or ()):
        if name not in METRICS:
            try:
                METRICS.get(name, path=f"evaluate.metrics[{i}]")
            except ConfigError as exc:
                problems.extend(exc.problems)
    if tc.early_stopping is not None:
        monitor = tc.early_stopping.monitor
        known = ["val_loss", *(f"val_{n}" for n in METRICS.names() if n != "confusion_matrix")]
        if monitor not in known:
            from dlpipe.errors import suggest

            problems.append(("train.early_stopping.monitor",
                             f"unknown value {monitor!r}. {suggest(monitor, known)}"))
    if cfg.compress is not None and cfg.compress.metric is not None:
        try:  # whether it fits the task is known only after the data stage
            METRICS.get(cfg.compress.metric, path="compress.metric")
        except ConfigError as exc:
            problems.extend(exc.problems)
    if tc.loggers:
        from dlpipe.train.loggers import logger_problems

        problems.extend(logger_problems(tc.loggers))
    if cfg.tune is not None and not problems:  # each searched value, set into this config
        from dlpipe.tune.space import check_space

        problems.extend(check_space(cfg))
    if problems:
        raise ConfigError(problems)


def run(
    config: ConfigSource,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    data: Any = None,
    stages: Iterable[str] = STAGES,
) -> Result:
    """Run the pipeline a config describes and return its metrics.

    Args:
        config: a YAML path, a dict, or a `PipelineConfig`.
        run_dir: where to write the run; default ``runs/<name>-<timestamp>``.
        overrides: ``a.b.c=VALUE`` items applied to the config.
        data: a pandas DataFrame, or ``(X, y)`` NumPy arrays, used instead of `data.source`.

    Under ``torchrun`` with several processes, every process calls this: see
    `_run_distributed`. Ranks other than 0 return with empty metrics.

    Example:
        >>> result = dlpipe.run("examples/quickstart.yaml", overrides=["train.epochs=5"])
        >>> result.metrics["test"]["accuracy"]
    """
    cfg = load_config(config, overrides)
    check(cfg)
    if data is None and cfg.data.source is None:
        raise ConfigError([("data.source", "required unless data is passed from Python "
                                           "(dlpipe.run(config, data=frame))")])
    from dlpipe.train.distributed import join

    group = join(cfg)  # None unless torchrun started several processes
    if group is not None:
        return _run_distributed(cfg, group, run_dir, data, stages)
    rundir = _new_run(cfg, run_dir or default_run_dir(cfg))
    try:
        run_stage("data", cfg, rundir, data=data)
    except DlpipeError:
        shutil.rmtree(rundir.path, ignore_errors=True)  # nothing was made: leave nothing behind
        raise
    for stage in stages:
        if stage != "data" and enabled(stage, cfg):
            outcome = run_stage(stage, cfg, rundir)
            if stage == "tune":  # the stages after it train and evaluate the best config
                cfg = outcome.config
    metrics = rundir.read_json(runs.METRICS) if rundir.has(runs.METRICS) else {}
    history = rundir.read_jsonl(runs.HISTORY) if rundir.has(runs.HISTORY) else []
    return Result(rundir, metrics, history)


def _new_run(cfg: PipelineConfig, path: str | os.PathLike[str]) -> RunDir:
    rundir = RunDir.create(path)
    rundir.write_yaml(runs.CONFIG, to_dict(cfg))
    rundir.write_json(runs.RUN_INFO, {"command": command_line(), "stages": {}})
    return rundir


def _run_distributed(cfg: PipelineConfig, group: Group, run_dir: str | os.PathLike[str] | None,
                     data: Any, stages: Iterable[str]) -> Result:
    """`run` in one process of a torchrun job (see `dlpipe.train.distributed`).

    Rank 0 runs the stages before train while the other ranks wait; every rank trains its
    share; rank 0 alone runs the stages after train. A job that torchrun restarted continues
    in the same run directory: the stages run.json records as done are skipped, and training
    resumes from the last complete checkpoint.
    """
    for section, instead in (("tune", "`dlpipe tune CONFIG --run-dir RUN_DIR` first"),
                             ("finetune", "`dlpipe finetune` in one process")):
        if getattr(cfg, section, None) is not None:
            raise ConfigError([(section, f"torchrun distributes the train stage only; run "
                                         f"{instead}, then `torchrun ... -m dlpipe train "
                                         f"RUN_DIR` to train on several processes")])
    path = Path(run_dir) if run_dir is not None else group.default_run_dir(cfg.name or "run")
    todo = ["data", *(s for s in stages if s != "data" and enabled(s, cfg))]
    cut = todo.index("train") if "train" in todo else len(todo)
    if group.is_main:
        restarted = group.restart_count > 0 and (path / runs.CONFIG.filename).is_file()
        rundir = RunDir.open(path) if restarted else _new_run(cfg, path)
        for stage in todo[:cut]:
            if stage in _done(rundir):
                continue
            try:
                run_stage(stage, cfg, rundir, **({"data": data} if stage == "data" else {}))
            except DlpipeError:
                if stage == "data" and not restarted:  # as in `run`: nothing made, nothing left
                    shutil.rmtree(rundir.path, ignore_errors=True)
                raise
    group.barrier()  # the other ranks read the splits and features rank 0 wrote
    if not group.is_main:
        rundir = group.open_replica(path)
    mine = todo[cut:] if group.is_main else todo[cut:cut + 1]  # the other ranks: train only
    for stage in mine:
        if stage not in _done(rundir):
            run_stage(stage, cfg, rundir)
    if not group.is_main:
        return Result(rundir, {}, [])  # rank 0 evaluates and reports
    metrics = rundir.read_json(runs.METRICS) if rundir.has(runs.METRICS) else {}
    history = rundir.read_jsonl(runs.HISTORY) if rundir.has(runs.HISTORY) else []
    return Result(rundir, metrics, history)


def _done(rundir: RunDir) -> set[str]:
    """The stages that finished in `rundir` (run.json records each one's time at its end)."""
    return set(rundir.read_json(runs.RUN_INFO).get("stages", {})) if rundir.has(
        runs.RUN_INFO) else set()


def finetune(
    parent: str | os.PathLike[str],
    *,
    data: Any,
    run_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    refit_features: bool | None = None,
) -> Finetuned:
    """Fine-tune the trained run `parent` on new data, in a new run linked to it.

    Args:
        data: a file, ``"builtin:NAME"``, a `data.source` mapping, a DataFrame or ``(X, y)``.
        overrides: ``a.b.c=VALUE`` items, e.g. ``finetune.freeze=all_but_head``.

    Returns:
        A `dlpipe.finetune.Finetuned`: the new run, its metrics, and `before` / `after`.

    Example:
        >>> result = dlpipe.finetune_from("runs/bc", data="new.csv",
        ...                               overrides=["finetune.epochs=3"])
        >>> result.before["test"]["accuracy"], result.after["test"]["accuracy"]
    """
    from dlpipe.finetune import Finetuned, finetune_config

    cfg, frame = finetune_config(parent, data, overrides=overrides,
                                 refit_features=refit_features)
    result = run(cfg, run_dir=run_dir, data=frame)
    return Finetuned(result.rundir, result.metrics, result.history,
                     result.rundir.read_json(runs.FINETUNE))


def enabled(stage: str, cfg: PipelineConfig) -> bool:
    """Whether `dlpipe run` runs `stage` for this config."""
    if stage in REPLACED_BY_FINETUNE and getattr(cfg, "finetune", None) is not None:
        return False
    if stage == "report":
        return cfg.report.enabled
    return stage not in OPTIONAL_STAGES or getattr(cfg, stage, None) is not None


def run_stage(stage: str, cfg: PipelineConfig, rundir: RunDir, **options: Any) -> Any:
    """Run one stage on `rundir`, timing it in run.json."""
    if stage not in STAGE_RUNNERS:
        raise ConfigError([("stage", f"unknown stage {stage!r}; known: {', '.join(STAGES)}")])
    module_name, _, function = STAGE_RUNNERS[stage].partition(":")
    runner = getattr(importlib.import_module(module_name), function)
    with rundir.stage_timer(stage):
        return runner(cfg, rundir, **options)


@dataclass
class Rerun:
    """What `rerun` did."""

    outcome: Any
    """What the stage returned (metrics for evaluate, the bundle's folder for export, ...)."""
    rundir: RunDir
    removed: list[str]
    """Later stages whose results were deleted, because they described what was replaced."""
    for_this_command: list[str]
    """Overrides of an earlier stage's sections: they held for this command only."""
    report: Path | None
    """report.html, written again after the stage (when `report.enabled`)."""


def rerun(stage: str, path: str | os.PathLike[str], overrides: Iterable[str] = (), *,
          writable: bool = True, **options: Any) -> Rerun:
    """Run one stage again on an existing run directory and keep the directory coherent.

    - An override of the stage's own sections, or of a later stage's, is written into
      config.yaml (and the fingerprint's config hash), so the config describes the files
      again; one of an earlier stage's section (``train.device`` for ``evaluate``, say) holds
      for this command only. Every rerun is logged in run.json (``reruns``).
    - The results of every later stage are deleted first: metrics, predictions, compressed
      variants and the bundle would otherwise describe the model or metrics that were there
      before.
    - With ``report.enabled``, report.html is written again afterwards.

    Args:
        writable: False in the other processes of a torchrun job (rank 0 writes).
        options: the stage's own options (``resume`` for train, ``out`` for export).

    Example:
        >>> dlpipe.rerun("evaluate", "runs/bc", ["evaluate.threshold=optimize"]).outcome
    """
    if stage not in STAGE_RUNNERS:
        raise ConfigError([("stage", f"unknown stage {stage!r}; known: {', '.join(STAGES)}")])
    overrides = list(overrides)
    rundir = RunDir.open(path, writable=writable)
    cfg = load_run_config(rundir, overrides)
    position = STAGES.index(stage)
    lasting = [o for o in overrides
               if STAGES.index(SECTION_STAGES.get(_section(o), "data")) >= position]
    if lasting and rundir.writable:
        kept = load_run_config(rundir, lasting)
        rundir.write_yaml(runs.CONFIG, to_dict(kept))
        if rundir.has(runs.FINGERPRINT):
            fingerprint = rundir.read_json(runs.FINGERPRINT)
            fingerprint["config_sha256"] = _config_hash(kept)
            rundir.write_json(runs.FINGERPRINT, fingerprint)
    refresh = stage != "report" and cfg.report.enabled and rundir.writable
    removed = rundir.remove_outputs(STAGES[position + 1:])
    if rundir.writable:
        info = rundir.read_json(runs.RUN_INFO) if rundir.has(runs.RUN_INFO) else {"stages": {}}
        info.setdefault("reruns", []).append({
            "stage": stage, "command": command_line(), "overrides": overrides,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        rundir.write_json(runs.RUN_INFO, info)
    outcome = run_stage(stage, cfg, rundir, **options)
    report = run_stage("report", cfg, rundir) if refresh else None
    return Rerun(outcome, rundir, [s for s in removed if not (refresh and s == "report")],
                 [o for o in overrides if o not in lasting], report)


def _section(override: str) -> str:
    return override.partition("=")[0].split(".", 1)[0].strip()


def _run_data(cfg: PipelineConfig, rundir: RunDir, data: Any = None) -> Any:
    from dlpipe import data as data_stage

    result = data_stage.run(cfg, rundir, frame=_frame(data, cfg.data.target))
    if cfg.finetune is not None:  # new data must fit the parent's network: check before training
        from dlpipe.finetune import check_parent

        check_parent(cfg, result.schema, result.train)
    write_fingerprint(cfg, rundir, result.data_hash)
    return result


def load_run_config(rundir: RunDir, overrides: Iterable[str] = ()) -> PipelineConfig:
    """The config a run was made with (config.yaml), with optional overrides."""
    cfg = load_config(rundir.read_yaml(runs.CONFIG), overrides)
    check(cfg)
    return cfg


def default_run_dir(cfg: PipelineConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.name or 'run'}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_fingerprint(cfg: PipelineConfig, rundir: RunDir, data_hash: str) -> None:
    """Config hash, data hash and package versions: what makes two runs comparable."""
    versions = {"python": platform.python_version()}
    for package in ("dlpipe", "torch", "numpy", "pandas", "pyarrow", "scikit-learn", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    rundir.write_json(runs.FINGERPRINT, {
        "config_sha256": _config_hash(cfg),
        "data_sha256": data_hash,
        "versions": versions,
        "platform": platform.platform(),
    })


def _config_hash(cfg: PipelineConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def command_line() -> str:
    return " ".join(["dlpipe", *sys.argv[1:]]) if sys.argv and "dlpipe" in sys.argv[0] else ""


def _frame(data: Any, target: str) -> Any:
    if data is None:
        return None
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        from dlpipe.data import frame_from_arrays

        return frame_from_arrays(data[0], data[1], target=target)
    raise ConfigError([("data", f"expected a pandas DataFrame or a tuple (X, y) of arrays; got "
                                f"{type(data).__name__}")])

