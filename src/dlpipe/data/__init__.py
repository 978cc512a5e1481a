"""The data stage: load, clean, split and check the table; write the splits, schema and profile.

Order (each step counted in data_profile.json): load → drop listed/ignored columns → target
check → exact duplicates → column kinds and task → texts and images checked (unreadable
images fail or are skipped) → split → leakage guard → missing inputs → outliers (fitted on
train) → constant columns (on train) → class imbalance (train only).
Nothing is written until every check has passed.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dlpipe import runs
from dlpipe.config import DataConfig, PipelineConfig
from dlpipe.data import clean
from dlpipe.data._infer import MEDIA_KINDS, infer_kinds, infer_task
from dlpipe.data._leakage import check_leakage
from dlpipe.data._messages import counts_by_label, unknown_column
from dlpipe.data.load import frame_from_arrays, load_table, resolve_format
from dlpipe.data.split import check_train_classes, kfold_indices, split_indices
from dlpipe.errors import ConfigError, DataError

__all__ = [
    "DataResult",
    "data_hash",
    "frame_from_arrays",
    "kfold_indices",
    "load_table",
    "run",
    "split_indices",
]


@dataclass(frozen=True)
class DataResult:
    """What the data stage produced: the three splits, schema.json and data_profile.json."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    schema: dict[str, Any]
    profile: dict[str, Any]
    data_hash: str

    def split(self, name: str) -> pd.DataFrame:
        """The split called `name` (`train`, `val` or `test`)."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def run(cfg: PipelineConfig, rundir: runs.RunDir, frame: pd.DataFrame | None = None) -> DataResult:
    """Run the data stage and write its outputs to `rundir`.

    Args:
        cfg: the pipeline config; its `data` section drives everything here.
        rundir: where data/{train,val,test}.parquet, schema.json and data_profile.json go.
        frame: a table handed in from Python; it replaces `data.source`.

    Raises:
        ConfigError: neither `frame` nor `data.source` is given, or bad generator params.
        DataError: the data do not match the config; the message names field, column, row.

    Example:
        >>> cfg = load_config({"data": {"source": {"builtin": "iris"}}})
        >>> result = run(cfg, RunDir.create("runs/iris"))
        >>> result.schema["task"], len(result.train)
        ('multiclass', 105)
    """
    data = cfg.data
    if data.stream:  # larger than memory: one pass over the file's chunks (data/stream.py)
        if frame is not None:
            raise ConfigError([("data.stream", "a table passed from Python is in memory "
                                               "already; set data.stream: false")])
        from dlpipe.data.stream import run as run_streamed

        return run_streamed(cfg, rundir)  # type: ignore[return-value]
    table, source = _load(data, frame)
    digest = data_hash(table)
    profile: dict[str, Any] = {
        "source": source, "rows_read": len(table), "columns_read": table.shape[1]}
    roles = data.role_columns()
    table, dropped = _before_split(table, data, roles, profile)
    inputs = [c for c in table.columns if c != data.target and c not in roles.values()]
    if not inputs:
        raise DataError(f"data.columns: no input columns are left besides "
                        f"{', '.join(map(repr, roles.values()))}; check data.drop_columns and "
                        f"the columns set to ignore")
    overrides = {c: k for c, k in data.columns.items() if k != "ignore"}
    table, kinds, made_missing = infer_kinds(table, inputs, overrides)
    table = _check_media(table, kinds, data, source, profile,
                         same_size=cfg.features.image.size is None)
    task, classes, table[data.target] = infer_task(table[data.target], data.task, data.target)
    if data.imbalance != "none" and task == "regression":
        raise DataError(f"data.imbalance: {data.imbalance!r} applies to classification; the "
                        f"task is regression; set data.imbalance: none")
    seed = data.split.seed if data.split.seed is not None else cfg.seed
    splits = _split(table, data, task, seed, inputs, profile)
    splits, kinds, fitted = _after_split(splits, data, task, kinds, seed, profile)
    for column, counts in made_missing.items():
        if column in kinds:
            profile["missing"]["columns"][column].update(counts.profile())
            if message := counts.warning(column):
                warnings.warn(message, UserWarning, stacklevel=2)
    profile["rows"] = {s: len(f) for s, f in splits.items()}
    profile["data_hash"] = digest

    keep = [c for c in table.columns if c in kinds or c == data.target or c in roles.values()]
    splits = {s: f[keep].reset_index(drop=True) for s, f in splits.items()}
    schema = {
        "target": data.target,
        "task": task,
        "classes": classes,
        "columns": [{"name": c, "kind": kinds[c], "dtype": str(splits["train"][c].dtype)}
                    for c in keep if c in kinds],
        "missing": fitted["missing"],
        "fill_value": data.clean.missing.fill_value,
        "indicator": data.clean.missing.indicator,
        "clip": fitted["clip"],
        "dropped_columns": {**dropped, "constant": profile["constant_columns_dropped"]},
        "time_column": data.split.time_column,
        "group_column": data.split.group_column,
        "split_column": data.split.column,
    }
    # Every check has passed: only now does anything reach the disk.
    for name, split in splits.items():
        rundir.write_split(name, split)
    rundir.write_json(runs.SCHEMA, schema)
    rundir.write_json(runs.PROFILE, profile)
    return DataResult(splits["train"], splits["val"], splits["test"], schema, profile, digest)


def _before_split(
    table: pd.DataFrame, data: DataConfig, roles: dict[str, str], profile: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Steps on the whole table: drop columns, check the target, drop exact duplicates."""
    _check_roles(table, data, roles)
    table, listed, ignored = clean.drop_columns(table, data.drop_columns, data.columns)
    table, profile["missing_target_dropped"] = clean.check_target(
        table, data.target, drop=data.clean.drop_missing_target)
    duplicates = 0
    if data.clean.drop_duplicates:
        table, duplicates = clean.drop_duplicates(table)
    profile["duplicates_dropped"] = duplicates
    return table, {"listed": listed, "ignored": ignored}


def _split(
    table: pd.DataFrame,
    data: DataConfig,
    task: str,
    seed: int,
    inputs: list[str],
    profile: dict[str, Any],
) -> dict[str, pd.DataFrame]:
    """Split the table, then run the leakage guard over the splits."""
    method = data.split.method
    if method == "auto":
        method = "random" if task == "regression" else "stratified"
    parts = split_indices(
        table, method=method, val=data.split.val, test=data.split.test, seed=seed,
        target=data.target, task=task, group_column=data.split.group_column,
        time_column=data.split.time_column, split_column=data.split.column)
    splits = {name: table.iloc[positions] for name, positions in parts.items()}
    profile["split"] = {"method": method, "seed": seed,
                        "rows": {s: len(f) for s, f in splits.items()}}
    if task != "regression":
        profile["split"]["class_counts"] = {
            s: counts_by_label(f[data.target]) for s, f in splits.items()}
    profile["leakage"] = check_leakage(
        splits, inputs=inputs, group_column=data.split.group_column,
        time_column=data.split.time_column,
        allow_duplicates=data.leakage.allow_duplicates,
        allow_group_overlap=data.leakage.allow_group_overlap,
        allow_time_overlap=data.leakage.allow_time_overlap)
    return splits


def _after_split(
    splits: dict[str, pd.DataFrame],
    data: DataConfig,
    task: str,
    kinds: dict[str, str],
    seed: int,
    profile: dict[str, Any],
) -> tuple[dict[str, pd.DataFrame], dict[str, str], dict[str, Any]]:
    """Missing inputs, outliers, constant columns, imbalance; return what features must fit."""
    tabular = {c: k for c, k in kinds.items() if k not in MEDIA_KINDS}
    splits, profile["missing"], missing = clean.handle_missing(splits, tabular, data.clean.missing)
    splits, profile["outliers"], clip = clean.handle_outliers(splits, tabular, data.clean.outliers)
    constant: list[str] = []
    if data.clean.drop_constant:
        splits, constant = clean.drop_constant(splits, list(kinds))
    profile["constant_columns_dropped"] = constant
    kinds = {c: k for c, k in kinds.items() if c not in constant}
    if not kinds:
        raise DataError("data.clean.drop_constant: every input column is constant on the "
                        "training split; nothing is left to learn from")
    if len(splits["train"]) == 0:
        raise DataError("data.clean: cleaning left no training rows; see data.clean.missing "
                        "and data.clean.outliers")
    profile["imbalance"] = None
    if task != "regression":
        check_train_classes(splits["train"][data.target], "data.clean")
        splits["train"], profile["imbalance"] = clean.resample(
            splits["train"], data.target, data.imbalance, seed)
    fitted = {"missing": {c: s for c, s in missing.items() if c in kinds},
              "clip": {c: b for c, b in clip.items() if c in kinds}}
    return splits, kinds, fitted


def data_hash(frame: pd.DataFrame) -> str:
    """sha256 of a table's column names and cell values (row order matters, index does not)."""
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    try:
        rows = pd.util.hash_pandas_object(frame, index=False)
    except TypeError:  # unhashable cells (lists, dicts) from a hand-made frame: hash their text
        rows = pd.util.hash_pandas_object(frame.astype(str), index=False)
    digest.update(rows.to_numpy().tobytes())
    return digest.hexdigest()


def _load(data: DataConfig, frame: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    if frame is not None:
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"frame: expected a pandas DataFrame; got {type(frame).__name__}; "
                            f"build one from arrays with dlpipe.data.frame_from_arrays")
        table, source = frame.copy(deep=False), {"kind": "frame"}  # copy-on-write: safe
        table.columns = [str(c) for c in table.columns]
        if table.shape[1] == 0 or len(table) == 0:
            raise DataError(f"frame: the table is empty ({len(table)} rows, "
                            f"{table.shape[1]} columns)")
    elif data.source is not None:
        table, src = load_table(data.source), data.source
        if src.builtin is not None:
            source = {"kind": "builtin", "name": src.builtin, "params": dict(src.params)}
        else:
            source = {"kind": "file", "path": str(src.path),
                      "format": resolve_format(Path(str(src.path)), src.format)}
    else:
        raise ConfigError([("data.source", "no data: give data.source (a path or a builtin) "
                                           "or pass a DataFrame as run(..., frame=...)")])
    repeated = sorted(set(table.columns[table.columns.duplicated()]))
    if repeated:
        where = "frame" if frame is not None else "data.source"
        raise DataError(f"{where}: column names appear more than once: {', '.join(repeated)}")
    return table.reset_index(drop=True), source


def _check_media(table: pd.DataFrame, kinds: dict[str, str], data: DataConfig,
                 source: dict[str, Any], profile: dict[str, Any], *,
                 same_size: bool) -> pd.DataFrame:
    """Refuse bad texts; make image paths absolute and refuse (or skip) unreadable images,
    and images of mixed sizes when `same_size` (nothing will resize them).

    Relative image paths are relative to the data file's folder, so a run reads the same
    files wherever it is started from.
    """
    for column, kind in kinds.items():
        if kind == "text":
            from dlpipe.data.text import check_text

            check_text(table[column], column)
        elif kind == "image":
            from dlpipe.data.images import check_images, resolve_paths

            base = Path(source["path"]).parent if source.get("kind") == "file" else Path.cwd()
            table = table.assign(**{column: resolve_paths(table[column], base)})
            table, skipped = check_images(table, column, policy=data.clean.bad_images,
                                          same_size=same_size)
            profile.setdefault("bad_images_skipped", {})[column] = {
                "count": len(skipped), "examples": skipped[:10]}
    if len(table) == 0:
        raise DataError("data.clean.bad_images: every row was skipped; no image could be read")
    return table


def _check_roles(table: pd.DataFrame, data: DataConfig, roles: dict[str, str]) -> None:
    for path, column in roles.items():
        if column not in table.columns:
            raise unknown_column(path, column, table.columns)
        if column in data.drop_columns:
            raise DataError(f"data.drop_columns: {column!r} is {path}; it cannot be dropped")
        if column in data.columns:
            raise DataError(f"data.columns.{column}: {column!r} is {path}, not a model input; "
                            f"remove it from data.columns")
