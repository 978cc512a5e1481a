"""Experiment loggers: callbacks that send the config and each epoch's metrics to TensorBoard
or MLflow.

`train.loggers` names them (a `LOGGERS` key, or `my_pkg.module:function` returning a
`Callback`) with their builder's keyword arguments. Each needs an optional extra, imported
only when configured. The train stage builds them; k-fold folds and tuning trials, which have
no run directory, log nothing. Each logger records where it wrote in loggers.json, so the
report stage can add the final artifacts (report.html, plots, metrics) to the same
TensorBoard folder or MLflow run.

Example (YAML)::

    train:
      loggers:
        - tensorboard                               # RUN_DIR/tensorboard
        - {name: mlflow, experiment: churn, tracking_uri: "sqlite:///mlflow.db"}
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dlpipe import runs
from dlpipe._signature import check_kwargs
from dlpipe.config import Component
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.registry import Registry
from dlpipe.runs import RunDir
from dlpipe.train.callbacks import Callback, Metrics
from dlpipe.train.state import TrainState

__all__ = ["LOGGERS", "MlflowLogger", "TensorBoardLogger", "build_loggers", "logger_problems"]

LOGGERS: Registry[Callable[..., Callback]] = Registry("logger")

#: Arguments dlpipe passes to every logger builder, positionally.
SUPPLIED = ("rundir", "config", "model")
#: Logger name → the module it imports, which is also the name of its dlpipe extra.
REQUIRES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def logger_problems(loggers: Sequence[Component]) -> list[tuple[str, str]]:
    """Every problem with `train.loggers`: unknown names, bad arguments, missing extras."""
    problems: list[tuple[str, str]] = []
    for i, component in enumerate(loggers):
        path = f"train.loggers[{i}]"
        try:
            builder = LOGGERS.get(component.name, path=f"{path}.name")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        problems.extend(check_kwargs(builder, component.kwargs, path, skip=SUPPLIED))
        module = REQUIRES.get(component.name)
        if module is not None and importlib.util.find_spec(module) is None:
            problems.append((f"{path}.name", missing_extra(component.name).args[0]))
    return problems


def build_loggers(loggers: Sequence[Component], rundir: RunDir, config: dict[str, Any],
                  model: nn.Module) -> list[Callback]:
    """The configured loggers as callbacks; `config` is the run's config as plain data."""
    built = []
    for i, component in enumerate(loggers):
        builder = LOGGERS.get(component.name, path=f"train.loggers[{i}].name")
        built.append(builder(rundir, config, model, **component.kwargs))
    return built


def missing_extra(name: str) -> DlpipeError:
    module = REQUIRES[name]
    return DlpipeError(f"the {name} logger needs the {module} package: "
                       f"pip install 'dlpipe[{module}]'")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"epochs": 5}}` → `{"train.epochs": "5"}`; lists stay whole."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _record(rundir: RunDir, name: str, entry: dict[str, Any]) -> None:
    """Add this logger's entry to loggers.json (several loggers share the file)."""
    entries = dict(rundir.read_json(runs.LOGGERS)) if rundir.has(runs.LOGGERS) else {}
    entries[name] = entry
    rundir.write_json(runs.LOGGERS, entries)


def _scalars(state: TrainState, metrics: Metrics) -> dict[str, float]:
    values = {"train_loss": state.train_loss, **metrics}
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and v is not None and math.isfinite(v)}


class TensorBoardLogger(Callback):
    """Write the config (as text), every epoch's metrics and weight histograms to TensorBoard."""

    def __init__(self, rundir: RunDir, config: dict[str, Any], model: nn.Module, *,
                 log_dir: str | None = None, histograms: bool = True) -> None:
        self.rundir = rundir
        self.config = config
        self.model = model
        self.log_dir = Path(log_dir) if log_dir else rundir.path / "tensorboard"
        self.histograms = histograms
        self._writer: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_extra("tensorboard") from None
        import yaml

        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        text = yaml.safe_dump(self.config, sort_keys=False)
        self._writer.add_text("config", "\n".join(f"    {line}" for line in text.splitlines()))
        _record(self.rundir, "tensorboard", {"log_dir": str(self.log_dir)})

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        for key, value in _scalars(state, metrics).items():
            self._writer.add_scalar(key, value, state.epoch)
        if self.histograms:
            for name, p in self.model.named_parameters():
                self._writer.add_histogram(f"weights/{name}", p.detach().float().cpu(),
                                           state.epoch)
        self._writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@LOGGERS.register("tensorboard")
def tensorboard(rundir: RunDir, config: dict[str, Any], model: nn.Module, *,
                log_dir: str | None = None, histograms: bool = True) -> TensorBoardLogger:
    """TensorBoard event files in `log_dir` (default RUN_DIR/tensorboard).

    Args:
        histograms: also log every parameter's values as a histogram each epoch.
    """
    return TensorBoardLogger(rundir, config, model, log_dir=log_dir, histograms=histograms)


class MlflowLogger(Callback):
    """Log the flattened config as params and every epoch's metrics to an MLflow run.

    Uses `mlflow.tracking.MlflowClient` (no global active run, so a user's own run is
    untouched). A resumed training continues the same MLflow run.
    """

    def __init__(self, rundir: RunDir, config: dict[str, Any], *,
                 tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None) -> None:
        self.rundir = rundir
        self.config = config
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name or rundir.path.name
        self.run_id: str | None = None
        self._client: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        try:
            import mlflow
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow") from None
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        self._client = MlflowClient(tracking_uri=uri)
        if self.run_id is None:  # a fresh run; a resumed one keeps its run id
            experiment_id = "0"
            if self.experiment:
                found = self._client.get_experiment_by_name(self.experiment)
                experiment_id = (found.experiment_id if found is not None
                                 else self._client.create_experiment(self.experiment))
            run = self._client.create_run(experiment_id, run_name=self.run_name,
                                          tags={"dlpipe.run_dir": str(self.rundir.path)})
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in flatten(self.config).items()]
            for start in range(0, len(params), 100):  # MLflow takes 100 params a batch
                self._client.log_batch(self.run_id, params=params[start:start + 100])
        _record(self.rundir, "mlflow", {"tracking_uri": uri, "run_id": self.run_id})

    def on_epoch_end(self, state: TrainState, metrics: Metrics) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, v, stamp, state.epoch) for k, v in _scalars(state, metrics).items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def on_fit_end(self, state: TrainState) -> None:
        if self._client is not None:
            self._client.set_terminated(self.run_id)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


@LOGGERS.register("mlflow")
def mlflow(rundir: RunDir, config: dict[str, Any], model: nn.Module, *,
           tracking_uri: str | None = None, experiment: str | None = None,
           run_name: str | None = None) -> MlflowLogger:
    """An MLflow run in `experiment` (default MLflow's default experiment) at `tracking_uri`
    (default MLflow's own: `MLFLOW_TRACKING_URI`, else its local default store), named after
    the run directory unless `run_name` is given. Checked against MLflow 3.17's client API."""
    return MlflowLogger(rundir, config, tracking_uri=tracking_uri, experiment=experiment,
                        run_name=run_name)
