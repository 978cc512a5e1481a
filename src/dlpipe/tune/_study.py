"""The Optuna study of a `tune` section: its sampler, its pruner, and creating or resuming it."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from dlpipe.config import TuneConfig
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.tune._storage import Storage
from dlpipe.tune.space import Space

__all__ = ["build_pruner", "build_sampler", "open_study"]


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` call after each trial: the worker
    loop (ask/tell, not `optimize`) checks `is_exhausted` before asking instead."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass


def build_sampler(section: TuneConfig, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `section.sampler` names, seeded with `seed`."""
    name = section.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=section.startup_trials)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return _GridSampler(space.grid(), seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler imports it lazily)
        except ImportError:
            raise DlpipeError("tune.sampler: cmaes needs the `cmaes` package; "
                              "pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=section.startup_trials,
                                            warn_independent_sampling=False)


def build_pruner(section: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner `section.pruner` names; epochs are its steps (resources)."""
    name = section.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=section.startup_trials,
                                           n_warmup_steps=section.warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def open_study(storage: Storage, name: str, *, direction: str, space: Space,
               sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study, or resume it when `storage` already holds one named `name`.

    Raises:
        ConfigError: the existing study optimizes the other direction, or searched a
            parameter with a different range or choices.
    """
    study = optuna.create_study(storage=storage.backend, study_name=name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError([("tune.direction", f"study {name!r} in {storage.spec} was created to "
                                              f"{study.direction.name.lower()}, not to "
                                              f"{direction}; choose another --study name")])
    wanted = space.distributions()
    for trial in study.get_trials(deepcopy=False):
        for path, dist in trial.distributions.items():
            if path in wanted and wanted[path] != dist:
                raise ConfigError([(f"tune.space.{path}", f"study {name!r} in {storage.spec} "
                                    f"searched it as {dist}; the config now gives "
                                    f"{wanted[path]}. Choose another --study name to start "
                                    f"a new study")])
    return study
