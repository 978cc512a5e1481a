"""A fine-tuned run's link to its parent: the derived config, the parent's hashes, and the
checks that the new data and settings fit the parent's network.

Nothing heavy is imported at module level: `dlpipe/__init__.py` imports this package.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dlpipe import runs
from dlpipe.config import FinetuneConfig, PipelineConfig, load_config
from dlpipe.errors import ConfigError, DataError, RunDirError
from dlpipe.runs import RunDir

#: What `finetune.parent_*_sha256` record, and where each comes from.
_HASHES = ("config", "data", "weights")


def finetune_config(
    parent: str | os.PathLike[str] | RunDir,
    data: Any,
    *,
    overrides: Iterable[str] = (),
    refit_features: bool | None = None,
) -> tuple[PipelineConfig, Any]:
    """The config of a new run that fine-tunes `parent` on `data`.

    It is the parent's config with the new data source, no cross-validation (it would train
    from scratch), a multiclass parent's task made explicit (two of its classes would look
    binary), and a `finetune` section naming the parent with its hashes and the learning
    rate (default: the parent's / 10). `overrides` apply last.

    Args:
        data: a file path, ``"builtin:NAME"``, a `data.source` mapping (or its YAML text),
            a pandas DataFrame, or a tuple ``(X, y)`` of arrays.

    Returns:
        (config, frame): the config, and the table to hand to the data stage when `data`
        came from Python (None for a file or builtin source).

    Example:
        >>> cfg, frame = finetune_config("runs/bc", "new_rows.csv", overrides=["finetune.epochs=3"])
    """
    parent_dir = open_parent(parent)
    raw = copy.deepcopy(parent_dir.read_yaml(runs.CONFIG))
    source, frame = _source(data)
    raw["data"] = {**raw.get("data", {}), "source": source}
    if parent_dir.read_json(runs.SCHEMA)["task"] == "multiclass":
        raw["data"]["task"] = "multiclass"
    raw["evaluate"] = {**(raw.get("evaluate") or {}), "cv_folds": 0}
    raw["name"] = f"{raw.get('name') or parent_dir.path.name}-finetune"
    raw["finetune"] = {"parent": str(parent_dir.path.resolve()), **parent_hashes(parent_dir)}
    if refit_features is not None:
        raw["finetune"]["refit_features"] = refit_features
    cfg = load_config(raw, overrides)
    if cfg.finetune is None:
        raise ConfigError([("finetune", "a fine-tuned run needs its finetune section; do not "
                                        "override it with null")])
    if cfg.finetune.lr is None:
        lr = parent_lr(load_config(parent_dir.read_yaml(runs.CONFIG))) / 10
        cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"lr": lr})})
    return cfg, frame


def open_parent(parent: str | os.PathLike[str] | RunDir | FinetuneConfig) -> RunDir:
    """Open the parent run; check it holds a trained network and, given the `finetune`
    section, that it has not changed since the fine-tuned run was configured.

    Raises:
        RunDirError: naming `finetune.parent`, the missing file or the changed hash.
    """
    section = parent if isinstance(parent, FinetuneConfig) else None
    path = section.parent if section is not None else parent
    try:
        rundir = path if isinstance(path, RunDir) else RunDir.open(path)
    except RunDirError as exc:
        raise RunDirError(f"finetune.parent: {exc}") from None
    for artifact in (runs.SCHEMA, runs.FINGERPRINT, runs.FEATURES, runs.MODEL, runs.WEIGHTS):
        if not rundir.has(artifact):
            raise RunDirError(f"finetune.parent: {rundir.path} has no {artifact.filename}, so "
                              f"it is not a trained run; run `dlpipe run` on its config first")
    if section is not None:
        now = parent_hashes(rundir)
        for what in _HASHES:
            key = f"parent_{what}_sha256"
            recorded = getattr(section, key)
            if recorded is not None and recorded != now[key]:
                raise RunDirError(
                    f"finetune.{key}: the parent {rundir.path} has changed since this run was "
                    f"configured ({what} hash {recorded[:12]}... is now {now[key][:12]}...); "
                    f"fine-tune it afresh with `dlpipe finetune {rundir.path} --data ...`")
    return rundir


def parent_hashes(rundir: RunDir) -> dict[str, str]:
    """The parent's config and data hashes (fingerprint.json) and its weights' sha256."""
    fingerprint = rundir.read_json(runs.FINGERPRINT)
    weights = hashlib.sha256(rundir.require(runs.WEIGHTS).read_bytes()).hexdigest()
    return {"parent_config_sha256": fingerprint["config_sha256"],
            "parent_data_sha256": fingerprint["data_sha256"],
            "parent_weights_sha256": weights}


def parent_lr(parent_cfg: PipelineConfig) -> float:
    """The learning rate the parent trained with (its own fine-tuning rate if it has one)."""
    if parent_cfg.finetune is not None and parent_cfg.finetune.lr is not None:
        return parent_cfg.finetune.lr
    optimizer = parent_cfg.train.optimizer
    if "lr" in optimizer.kwargs:
        return float(optimizer.kwargs["lr"])
    import inspect

    from dlpipe.train import OPTIMIZERS

    default = inspect.signature(OPTIMIZERS.get(optimizer.name)).parameters.get("lr")
    if default is None or not isinstance(default.default, int | float):
        raise ConfigError([("finetune.lr", f"the parent's optimizer {optimizer.name!r} has no "
                                           f"default learning rate to divide; set finetune.lr")])
    return float(default.default)


def check_model_unchanged(cfg: PipelineConfig, parent: RunDir) -> None:
    """A fine-tuned run keeps its parent's network: `model` must be the parent's."""
    mine = cfg.model.model_dump(mode="json")
    theirs = load_config(parent.read_yaml(runs.CONFIG)).model.model_dump(mode="json")
    changed = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
    if changed:
        shown = ", ".join(f"model.{k}: {mine.get(k)!r} (parent: {theirs.get(k)!r})"
                          for k in changed)
        raise ConfigError([("model", f"a fine-tuned run keeps its parent's network, but {shown}"
                                     f"; remove the model overrides")])


def check_compatible(parent_schema: Mapping[str, Any], schema: Mapping[str, Any],
                     parent: str | os.PathLike[str] = "the parent") -> None:
    """Check that new data (its schema.json) fits the parent's network and preprocessing.

    Same target and task, the same input columns with the same kinds, and no class the
    parent does not know.

    Raises:
        DataError: listing every difference, each naming the column or the classes.
    """
    problems = []
    if schema["target"] != parent_schema["target"]:
        problems.append(f"data.target: the new data's target is {schema['target']!r}; the "
                        f"parent predicts {parent_schema['target']!r}")
    if schema["task"] != parent_schema["task"]:
        hint = "; set data.task: regression" if parent_schema["task"] == "regression" else ""
        problems.append(f"data.task: the new data is a {schema['task']} task; the parent was "
                        f"trained for {parent_schema['task']}{hint}")
    mine = {c["name"]: c["kind"] for c in schema["columns"]}
    theirs = {c["name"]: c["kind"] for c in parent_schema["columns"]}
    missing = [name for name in theirs if name not in mine]
    if missing:
        constant = set(schema.get("dropped_columns", {}).get("constant", [])) & set(missing)
        hint = (f" ({_names(sorted(constant))} dropped as constant on the new training split; "
                f"set data.clean.drop_constant: false)" if constant else "")
        problems.append(f"{_columns(missing)}: the parent's input(s) missing from the new "
                        f"data{hint}")
    extra = [name for name in mine if name not in theirs]
    if extra:
        problems.append(f"{_columns(extra)}: input(s) of the new data the parent does not take; "
                        f"drop them with data.drop_columns")
    for name, kind in theirs.items():
        if name in mine and mine[name] != kind:
            problems.append(f"column {name!r}: {mine[name]} in the new data but {kind} for "
                            f"the parent; set data.columns.{name}: {kind}")
    known = parent_schema.get("classes") or []
    unknown = [c for c in schema.get("classes") or [] if c not in known]
    if unknown and "regression" not in (schema["task"], parent_schema["task"]):
        problems.append(f"data.target: class(es) {', '.join(map(repr, unknown))} of the new data "
                        f"are not among the parent's classes ({', '.join(map(repr, known))}); "
                        f"a fine-tuned network predicts only its parent's classes")
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DataError(f"the new data does not fit the parent run {parent}:\n{lines}")


def _columns(names: list[str]) -> str:
    return f"column {names[0]!r}" if len(names) == 1 else f"columns {_names(names)}"


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _source(data: Any) -> tuple[dict[str, Any] | None, Any]:
    """(data.source section, frame) for the forms `finetune_config` takes."""
    if data is None:
        raise ConfigError([("data", "give the new data to fine-tune on: a file, builtin:NAME, "
                                    "a data.source mapping, a DataFrame or (X, y)")])
    if isinstance(data, str) and data.startswith("builtin:"):
        return {"builtin": data.removeprefix("builtin:")}, None
    if isinstance(data, str) and data.lstrip().startswith("{"):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise ConfigError([("data", f"{data!r} is not a YAML mapping: {exc}")]) from None
    if isinstance(data, Mapping):
        source = dict(data)
        if isinstance(source.get("path"), str | os.PathLike):
            source["path"] = str(Path(source["path"]).expanduser().absolute())
        return source, None
    if isinstance(data, str | os.PathLike):
        return {"path": str(Path(data).expanduser().absolute())}, None
    return None, data  # a DataFrame or (X, y): the data stage checks which
