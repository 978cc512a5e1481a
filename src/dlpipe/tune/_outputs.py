"""What the search leaves in the run directory: trials.csv, summary.json and the plots."""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from dlpipe import runs
from dlpipe.runs import RunDir
from dlpipe.tune._storage import FAIL_REASON
from dlpipe.tune.objective import BEST_EPOCH, EPOCHS, WORKER
from dlpipe.tune.space import Space

__all__ = ["trials_frame", "write_plots", "write_trials"]

log = logging.getLogger("dlpipe.tune")


def trials_frame(study: optuna.Study, space: Space) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, epochs, each param, the worker
    (host:pid) and why it failed.

    List-valued choices appear as their JSON text (``[128, 64]``).
    """
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = space.decode(trial.params)
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "duration_s": None if duration is None else round(duration, 3),
            "epochs": trial.user_attrs.get(EPOCHS),
            "best_epoch": trial.user_attrs.get(BEST_EPOCH),
        }
        for path in space.paths:
            value = values.get(path)
            row[path] = json.dumps(value) if isinstance(value, list | dict) else value
        row["worker"] = trial.user_attrs.get(WORKER)
        row["fail_reason"] = trial.user_attrs.get(FAIL_REASON)
        rows.append(row)
    columns = ["number", "state", "value", "duration_s", "epochs", "best_epoch", *space.paths,
               "worker", "fail_reason"]
    return pd.DataFrame(rows, columns=columns)


def write_trials(rundir: RunDir, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    rundir.write_bytes(runs.TUNE_TRIALS, buffer.getvalue().encode())


def summarize(study: optuna.Study, frame: pd.DataFrame) -> dict[str, Any]:
    """Counts by state, epochs trained in all, and the best trial (None when none completed)."""
    counts = frame["state"].value_counts().to_dict()
    epochs = frame["epochs"].dropna()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value,
                "epochs": trial.user_attrs.get(EPOCHS),
                "best_epoch": trial.user_attrs.get(BEST_EPOCH)}
    return {
        "trials": int(len(frame)),
        "states": {state.name: int(counts.get(state.name, 0)) for state in TrialState},
        "epochs_trained": int(epochs.sum()) if len(epochs) else 0,
        "best": best,
    }


def write_plots(rundir: RunDir, study: optuna.Study) -> list[str]:
    """Optimization history, parameter importances and parallel coordinates as PNG.

    A plot that needs more completed trials than there are is skipped; returns the names of
    the plots written.
    """
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    makers = {
        "history": vis.plot_optimization_history,
        "importances": vis.plot_param_importances,
        "parallel_coordinates": vis.plot_parallel_coordinate,
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    written = []
    for name, plot in makers.items():
        if name == "importances" and (len(complete) < 2 or not _varied(complete)):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the module is experimental; plots warn freely
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("tune: skipped the %s plot: %s", name, exc)
                plt.close("all")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        rundir.write_bytes(runs.TUNE_PLOTS[name], buffer.getvalue())
        written.append(name)
    return written


def _varied(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether some parameter took two values and the value varied (else importances are 0/0)."""
    values = {t.value for t in trials if t.value is not None and math.isfinite(t.value)}
    if len(values) < 2:
        return False
    names = {name for t in trials for name in t.params}
    return any(len({repr(t.params.get(name)) for t in trials}) > 1 for name in names)
