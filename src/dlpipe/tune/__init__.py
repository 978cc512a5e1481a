"""The tune stage: an Optuna study over any config fields, scored on the validation split.

`run(cfg, rundir)` runs the study that `cfg.tune` describes on the run's train and val splits
(the test split is never read), writes ``tune/trials.csv``, ``tune/best_config.yaml``,
``tune/summary.json`` and the plots, and puts the best values into the run's config.yaml, so
the train and evaluate stages after it (in `dlpipe run`, or `dlpipe train RUN_DIR`) retrain
the best config and evaluate it on test. `search` is `dlpipe tune`: it makes (or reopens) the
run directory first. Needs ``pip install 'dlpipe[tune]'``.

Example:
    >>> result = tune.search("pipeline.yaml", run_dir="runs/search", workers=2)
    >>> result.best_value, result.best_params
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlpipe import runs
from dlpipe.config import PipelineConfig, TuneConfig, load_config, to_dict
from dlpipe.errors import ConfigError, DlpipeError, RunDirError, TrainingError
from dlpipe.runs import RunDir

if TYPE_CHECKING:
    import optuna

    from dlpipe.tune.objective import Search

__all__ = ["TuneResult", "run", "search"]


@dataclass
class TuneResult:
    """How a study ended: the best trial, and the config the next stages train."""

    config: PipelineConfig
    """The best config (its `tune` section kept), as written to the run's config.yaml."""
    path: Path
    """The run directory."""
    study: str
    storage: str
    metric: str
    direction: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def run(cfg: PipelineConfig, rundir: RunDir, *, storage: str | None = None,
        study: str | None = None, workers: int | None = None,
        n_trials: int | None = None) -> TuneResult:
    """Run (or resume) the study of `cfg.tune` on `rundir`; write its results.

    The keyword options override the `tune` section's fields of the same names.

    Raises:
        ConfigError: no `tune` section, a metric that does not fit the task, a storage that
            cannot hold the workers, a resumed study with another direction or space.
        TrainingError: no trial completed.
    """
    _require_optuna()
    from dlpipe.tune._outputs import summarize, trials_frame, write_plots, write_trials
    from dlpipe.tune._workers import Budget, Job, connect, optimize, spawn

    section = _with_options(cfg.tune, storage=storage, study=study, workers=workers,
                            n_trials=n_trials)
    cfg = cfg.model_copy(update={"tune": section})
    name = section.study or cfg.name or "dlpipe"
    seed = section.seed if section.seed is not None else cfg.seed
    search_, study_, store = connect(cfg, rundir, section.storage, name, seed)
    if not study_.get_trials(deepcopy=False):  # a fresh study starts with the given points
        for point in section.enqueue:
            study_.enqueue_trial(search_.space.encode(point))
    n = section.n_trials
    if section.sampler == "grid":  # more trials than points would evaluate points twice
        n = min(n or math.inf, search_.space.grid_size())
    budget = Budget(n, section.timeout_s, section.heartbeat_s, section.grace)
    echo = _echo(cfg.train.progress)
    codes: list[int] = []
    if section.workers == 1:
        optimize(study_, search_, store, budget, echo=echo)
    else:
        threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // section.workers)
        jobs = [Job(str(rundir.path), to_dict(cfg), store.spec, name, seed + i, threads, budget,
                    echo) for i in range(section.workers)]
        codes = spawn(jobs)
    store.fail_stale(study_, budget.grace_s)

    frame = trials_frame(study_, search_.space)
    write_trials(rundir, frame)
    summary = summarize(study_, frame)
    summary.update(study=name, storage=store.spec, metric=search_.key,
                   direction=search_.direction, worker_exit_codes=codes)
    summary["plots"] = write_plots(rundir, study_) if section.plots else []
    rundir.write_json(runs.TUNE_SUMMARY, summary)
    if summary["best"] is None:
        raise TrainingError(_nothing_completed(name, frame, codes, rundir))
    best = study_.best_trial
    best_cfg = _write_best(cfg, rundir, search_, best)
    return TuneResult(config=best_cfg, path=rundir.path, study=name, storage=store.spec,
                      metric=search_.key, direction=search_.direction, best_trial=best.number,
                      best_value=float(best.value), summary=summary,
                      best_params=search_.space.decode(best.params))


def search(config: str | os.PathLike[str] | dict[str, Any] | PipelineConfig, *,
           run_dir: str | os.PathLike[str] | None = None, overrides: Iterable[str] = (),
           **options: Any) -> TuneResult:
    """`dlpipe tune`: prepare the run directory (data and features), then run the study.

    An existing `run_dir` is reopened, so running the command again resumes its study; it
    must have been made with the same `data` section and seed (the trials were scored on its
    splits).

    Args:
        options: `storage`, `study`, `workers`, `n_trials`, as for `run`.
    """
    from dlpipe import pipeline

    cfg = load_config(config, overrides)
    pipeline.check(cfg)
    _with_options(cfg.tune, **options)  # a bad option fails before the run directory is made
    path = os.fspath(run_dir) if run_dir is not None else None
    if path is not None and os.path.isfile(os.path.join(path, runs.CONFIG.filename)):
        rundir = RunDir.open(path)
        made = load_config(rundir.read_yaml(runs.CONFIG))
        if made.data != cfg.data or made.seed != cfg.seed:
            raise RunDirError(f"run directory: {path} was made with a different data section or "
                              f"seed, so its splits are not this config's; choose another "
                              f"--run-dir")
        if made.features != cfg.features or not rundir.has(runs.FEATURES):
            pipeline.run_stage("features", cfg, rundir)
    else:
        rundir = pipeline.run(cfg, run_dir=run_dir, stages=("data", "features")).rundir
    return pipeline.run_stage("tune", cfg, rundir, **options)


# -- helpers --------------------------------------------------------------------------------


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise DlpipeError("tune: hyperparameter search needs Optuna; "
                          "pip install 'dlpipe[tune]'") from None


def _with_options(section: TuneConfig | None, **options: Any) -> TuneConfig:
    if section is None:
        raise ConfigError([("tune", "the config has no `tune:` section; add one with a `space` "
                                    "of fields to search")])
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return section
    from pydantic import ValidationError

    try:
        return TuneConfig.model_validate({**section.model_dump(), **given})
    except ValidationError as exc:  # e.g. --workers 2 with an SQLite --storage
        raise ConfigError([
            (".".join(["tune", *map(str, err["loc"])]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()]) from None


def _echo(progress: str) -> bool:
    import sys

    return progress == "always" or (progress == "auto" and sys.stderr.isatty())


def _write_best(cfg: PipelineConfig, rundir: RunDir, search_: Search,
                best: optuna.trial.FrozenTrial) -> PipelineConfig:
    """Write best_config.yaml (no `tune` section: it retrains as it is) and put the best
    values into the run's config.yaml, the config the next stages train; refit the features
    if the search changed them.

    With ``retrain: train+val``, config.yaml also trains on train+val for the number of
    epochs the best trial needed (its best epoch), without early stopping.
    """
    from dlpipe.tune.objective import BEST_EPOCH
    from dlpipe.tune.space import trial_config

    base = to_dict(cfg)
    tune_section = base.pop("tune")
    values = search_.space.decode(best.params)
    best_cfg = trial_config(base, values)
    rundir.write_yaml(runs.TUNE_BEST_CONFIG, to_dict(best_cfg))
    if cfg.tune is not None and cfg.tune.retrain == "train+val":
        values.update({"train.fit_on": "train+val", "train.early_stopping": None,
                       "train.epochs": best.user_attrs.get(BEST_EPOCH, best_cfg.train.epochs)})
        best_cfg = trial_config(base, values)
    rundir.write_yaml(runs.CONFIG, {**to_dict(best_cfg), "tune": tune_section})
    if best_cfg.features != cfg.features:
        from dlpipe.features import run as fit_features_stage

        fit_features_stage(best_cfg, rundir)
    return load_config(rundir.read_yaml(runs.CONFIG))


def _nothing_completed(name: str, frame: Any, codes: list[int], rundir: RunDir) -> str:
    reasons = [f"trial {n}: {r}" for n, r in zip(frame["number"], frame["fail_reason"],
                                                   strict=True) if isinstance(r, str)]
    states = frame["state"].value_counts().to_dict()
    message = (f"tune: no trial of study {name!r} completed (states: {states or 'no trials'}); "
               f"see {rundir.file(runs.TUNE_TRIALS)}")
    if reasons:
        message += f". First failure: {reasons[0]}"
    if any(codes):
        message += f". Worker exit codes: {codes}"
    return message
