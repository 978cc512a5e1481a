"""The data stage for a table larger than memory (`data.stream: true`).

The table is never whole in memory. A Parquet file is read in record batches of
`data.chunk_rows` rows (a CSV is first converted to data/source.parquet in the run directory,
block by block). One pass over the batches does what `dlpipe.data.run` does to a whole table
and writes data/{train,val,test}.parquet as it goes, to temporary files renamed only when
every check has passed. What differs (docs/STREAMING.md):

- Column kinds and, with `task: auto`, classification vs regression are inferred from the
  first chunk; later chunks must agree (a numeric column holding text fails naming the row).
  The classes are all labels seen in the whole pass.
- The split is decided row by row: a seeded hash of the row's input values (of its group
  with `split.method: group`; `split.column` is read as is) picks train / val / test with
  the configured fractions. Rows with identical inputs always share a split, so duplicates
  cannot leak across splits, and groups never straddle splits. `stratified` becomes this
  random split: on large data each class's share differs from the target by sampling noise.
- Exact duplicates are kept (in one split, together). A `time` split, outliers `drop`,
  over/undersampling and text or image columns need the whole table and are refused.
- Outlier bounds: `zscore` bounds are exact; `iqr` bounds are quantiles of a seeded sample
  of `SAMPLE` training values per column.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlpipe import runs
from dlpipe._csv import (
    check_decoded,
    config_hint,
    not_text_error,
    parse_options,
    read_options,
)
from dlpipe._running import Moments, Reservoir, column_seed
from dlpipe.config import DataConfig, PipelineConfig
from dlpipe.data._infer import MEDIA_KINDS, MadeMissing, infer_kinds, infer_task
from dlpipe.data._messages import jsonable, unknown_column
from dlpipe.data.clean import DEFAULT_THRESHOLD, check_target, missing_strategies
from dlpipe.data.load import resolve_format
from dlpipe.errors import ConfigError, DataError

__all__ = ["SAMPLE", "StreamedData", "run"]

SAMPLE = 100_000
"""Training values per column sampled for the `iqr` outlier bounds."""
_SPLITS = ("train", "val", "test")
_MAX_CLASSES = 1000  # labels beyond this: not a classification target


@dataclass(frozen=True)
class StreamedData:
    """What the streaming data stage produced (the splits stay on disk)."""

    schema: dict[str, Any]
    profile: dict[str, Any]
    data_hash: str
    rows: dict[str, int]


def run(cfg: PipelineConfig, rundir: runs.RunDir) -> StreamedData:
    """Split, clean and check the file `data.source.path` chunk by chunk; write the run's
    data/{train,val,test}.parquet, schema.json and data_profile.json.

    Raises:
        ConfigError: the source is not a Parquet or CSV file, or a setting needs the whole
            table (named, with what to use instead).
        DataError: the data do not match the config; the message names the column and row.
    """
    data = cfg.data
    _refuse_whole_table_settings(cfg)
    path = _parquet_source(data, rundir)
    seed = data.split.seed if data.split.seed is not None else cfg.seed
    with ExitStack() as stack:
        pass_ = _Pass(data, path, seed, rundir.path)
        tmp = {s: stack.enter_context(rundir.writing(f"data/{s}.parquet")) for s in _SPLITS}
        pass_.run(tmp)
        schema, profile = pass_.finish()
        # Every check has passed; leaving the block renames the splits into place.
    profile["data_hash"] = pass_.digest.hexdigest()
    rundir.write_json(runs.SCHEMA, schema)
    rundir.write_json(runs.PROFILE, profile)
    return StreamedData(schema, profile, profile["data_hash"], dict(profile["rows"]))


def _refuse_whole_table_settings(cfg: PipelineConfig) -> None:
    data, problems = cfg.data, []
    if data.split.method == "time":
        problems.append(("data.split.method", "a time split orders the whole table; with "
                         "data.stream use random, group or column"))
    if data.clean.outliers is not None and data.clean.outliers.action == "drop":
        problems.append(("data.clean.outliers.action", "drop needs the bounds before the "
                         "training rows are written; with data.stream use clip"))
    if data.imbalance in ("oversample", "undersample"):
        problems.append(("data.imbalance", f"{data.imbalance} resamples the whole training "
                         f"split; with data.stream use class_weight"))
    if data.source is None or data.source.path is None:
        problems.append(("data.source.path", "data.stream reads a Parquet or CSV file; give "
                         "its path"))
    for name in ("tune", "finetune", "compress"):
        if getattr(cfg, name) is not None:
            problems.append((name, f"the {name} stage loads whole splits; it does not run "
                             f"on streamed data (data.stream: true) yet"))
    if cfg.evaluate.cv_folds >= 2:
        problems.append(("evaluate.cv_folds", "cross-validation loads the whole table; set "
                         "it to 0 with data.stream"))
    if cfg.train.fit_on != "train":
        problems.append(("train.fit_on", "streamed data trains on the train split; set it "
                         "to train with data.stream"))
    if problems:
        raise ConfigError(problems)


def _parquet_source(data: DataConfig, rundir: runs.RunDir) -> Path:
    """The Parquet file to stream: the source itself, or the CSV converted block by block."""
    path = Path(str(data.source.path if data.source is not None else ""))
    if not path.exists():
        raise DataError(f"data.source.path: {path} does not exist")
    fmt = resolve_format(path, data.source.format)
    if fmt == "parquet":
        return path
    if fmt != "csv":
        raise ConfigError([("data.stream", f"streaming reads Parquet or CSV files; "
                                           f"{path.name} is {fmt}")])
    import pyarrow as pa
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    encoding = data.source.encoding if data.source is not None else "utf-8"
    sep = data.source.sep if data.source is not None else ","
    with rundir.writing(runs.SOURCE) as tmp:
        try:
            reader = pv.open_csv(path, read_options=read_options(encoding, block_size=1 << 24),
                                 parse_options=parse_options(sep))
            check_decoded(path, reader.schema, encoding, "data.source.path", config_hint)
            with pq.ParquetWriter(tmp, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as err:
            if error := not_text_error(path, encoding, "data.source.path", config_hint):
                raise error from None
            raise DataError(f"data.source.path: cannot read {path} as CSV: {err}; a column "
                            f"whose first rows are numbers must hold numbers throughout") from None
    return rundir.file(runs.SOURCE)


class _Pass:
    """One pass over the source's record batches: split, clean, count, write."""

    def __init__(self, data: DataConfig, path: Path, seed: int, base: Path) -> None:
        import pyarrow.parquet as pq

        self.data, self.path, self.seed = data, path, seed
        self.file = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every chunk read
        names = self.file.schema_arrow.names
        self.roles = data.role_columns()
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DataError(f"data.source: column names appear more than once: "
                            f"{', '.join(repeated)}")
        for where, column in self.roles.items():
            if column not in names:
                raise unknown_column(where, column, names)
        for name in data.drop_columns:
            if name not in names:
                raise unknown_column("data.drop_columns", name, names)
        for name in data.columns:
            if name not in names:
                raise unknown_column("data.columns", name, names)
        ignored = [c for c, k in data.columns.items() if k == "ignore"]
        dropped = set(data.drop_columns) | set(ignored)
        self.dropped = {"listed": list(data.drop_columns),
                        "ignored": [c for c in ignored if c not in data.drop_columns]}
        self.inputs = [n for n in names if n not in dropped and n not in self.roles.values()]
        if not self.inputs:
            raise DataError("data.columns: no input columns are left besides the target and "
                            "the split's columns; check data.drop_columns")
        self.keep = [n for n in names if n in self.inputs or n in self.roles.values()]
        self.digest = hashlib.sha256("\x1f".join(names).encode())
        self.kinds: dict[str, str] = {}
        self.task = data.task
        self.integral_target = False
        self.writers: dict[str, Any] = {}
        self.rows_read = 0
        self.target_dropped = 0
        self.made_missing: dict[str, MadeMissing] = {}
        self.labels: dict[str, Counter[Any]] = {s: Counter() for s in _SPLITS}
        self.rows = dict.fromkeys(_SPLITS, 0)
        self.chunks = 0

    # -- the pass ------------------------------------------------------------------------------

    def run(self, tmp: dict[str, Path]) -> None:
        import pyarrow.parquet as pq

        data = self.data
        offset = 0
        try:
            for batch in self.file.iter_batches(batch_size=data.chunk_rows, columns=self.keep):
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(offset, offset + len(frame))  # rows as in the file
                offset += len(frame)
                self.digest.update(pd.util.hash_pandas_object(
                    frame, index=False).to_numpy().tobytes())
                if not self.kinds:
                    self._first(frame)
                frame = self._clean(frame)
                where = self._split_of(frame)
                for code, split in enumerate(_SPLITS):
                    part = frame[where == code]
                    if not len(part):
                        continue
                    table = self._arrow(part)
                    if split not in self.writers:
                        self.writers[split] = pq.ParquetWriter(tmp[split], table.schema)
                    self.writers[split].write_table(table)
                    self._count(split, part)
                self.chunks += 1
        finally:
            for writer in self.writers.values():
                writer.close()
        self.rows_read = offset
        if offset == 0:
            raise DataError(f"data.source.path: {self.path} has no rows")
        for split in _SPLITS:  # an empty split is still a valid (empty) file
            if split not in self.writers:
                pq.write_table(self._out_schema.empty_table(), tmp[split])

    def _first(self, frame: pd.DataFrame) -> None:
        """Column kinds and the task, from the first chunk."""
        data = self.data
        overrides = {c: k for c, k in data.columns.items() if k != "ignore"}
        frame, _ = check_target(frame, data.target, drop=True)
        _, self.kinds, _ = infer_kinds(frame, self.inputs, overrides)
        media = [(c, k) for c, k in self.kinds.items() if k in MEDIA_KINDS]
        if media:
            column, kind = media[0]
            raise ConfigError([(f"data.columns.{column}", f"column {column!r} is {kind}; "
                                f"data.stream supports tabular columns only")])
        task, _, y = infer_task(frame[data.target], data.task, data.target)
        self.task = "classification" if task in ("binary", "multiclass") and (
            data.task == "auto") else task
        self.integral_target = task != "regression" and pd.api.types.is_integer_dtype(y.dtype)
        self.numeric = [c for c, k in self.kinds.items() if k == "numeric"]
        self.moments = Moments(len(self.numeric))
        outliers = data.clean.outliers
        self.outlier_columns = ([] if outliers is None else list(
            outliers.columns if outliers.columns is not None else self.numeric))
        for name in self.outlier_columns:
            if self.kinds.get(name) != "numeric":
                raise DataError(f"data.clean.outliers.columns: column {name!r} is "
                                f"{self.kinds.get(name, 'not an input')}; outliers apply to "
                                f"numeric columns only")
        self.reservoirs = ([Reservoir(SAMPLE, column_seed(self.seed, c)) for c in self.numeric]
                           if outliers is not None and outliers.method == "iqr" else [])
        self.others = [c for c in self.kinds if c not in self.numeric]
        self.distinct: dict[str, set[Any]] = {c: set() for c in self.others}
        self.missing = {s: Counter() for s in _SPLITS}
        self.missing_dropped = 0
        self.strategies = missing_strategies(self.kinds, data.clean.missing)
        self._out_schema = self._schema()

    def _schema(self) -> Any:
        import pyarrow as pa

        source = self.file.schema_arrow
        fields = []
        for name in self.keep:
            kind = self.kinds.get(name)
            if kind == "numeric" or (name == self.data.target and self.task == "regression"):
                fields.append(pa.field(name, pa.float64()))
            elif name == self.data.target and self.integral_target:
                fields.append(pa.field(name, pa.int64()))
            else:
                fields.append(source.field(name))
        return pa.schema(fields)

    def _clean(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Target check, numeric conversion, rows dropped for missing values."""
        data = self.data
        frame, dropped = check_target(frame, data.target, drop=data.clean.drop_missing_target)
        self.target_dropped += dropped
        frame, _, made_missing = infer_kinds(frame, self.inputs, self.kinds)
        for column, counts in made_missing.items():
            self.made_missing.setdefault(column, MadeMissing()).add(counts)
        y = frame[data.target]
        if self.task == "regression":
            _, _, y = infer_task(y, "regression", data.target)
        elif self.integral_target and not pd.api.types.is_integer_dtype(y.dtype):
            values = y.to_numpy(dtype=float)
            bad = np.flatnonzero(np.mod(values, 1) != 0)
            if len(bad):
                raise DataError(f"data.target: column {data.target!r} held whole numbers in "
                                f"the first chunk but row {y.index[bad[0]]} holds "
                                f"{values[bad[0]]!r}; set data.task: regression")
            y = y.astype("int64")
        frame = frame.assign(**{data.target: y})
        for column in self.others:
            if len(self.distinct[column]) <= 2:  # enough to know the column is not constant
                self.distinct[column].update(frame[column].head(1000).map(jsonable).unique())
        dropping = [c for c, s in self.strategies.items() if s == "drop"]
        if dropping:
            gone = frame[dropping].isna().any(axis=1).to_numpy()
            if gone.any():
                self.missing_dropped += int(gone.sum())
                frame = frame[~gone]
        return frame

    def _split_of(self, frame: pd.DataFrame) -> np.ndarray:
        """0 (train), 1 (val) or 2 (test) for each row."""
        split = self.data.split
        if split.method == "column":
            values = frame[str(split.column)].astype(str).str.lower().to_numpy()
            codes = np.select([values == s for s in _SPLITS], [0, 1, 2], default=-1)
            bad = np.flatnonzero(codes < 0)
            if len(bad):
                row = frame.index[bad[0]]
                raise DataError(f"data.split.column: column {split.column!r} must hold train, "
                                f"val or test; row {row} holds {frame[split.column][row]!r}")
            return codes
        columns = [split.group_column] if split.method == "group" else self.inputs
        if split.method == "group" and split.group_column is None:
            raise ConfigError([("data.split.group_column", "a group split needs the column")])
        u = _uniform(_row_hashes(frame[columns], self.kinds), self.seed)
        return np.where(u < split.test, 2, np.where(u < split.test + split.val, 1, 0))

    def _arrow(self, part: pd.DataFrame) -> Any:
        import pyarrow as pa

        try:
            return pa.Table.from_pandas(part[self.keep], schema=self._out_schema,
                                        preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"data.source.path: rows {part.index[0]}–{part.index[-1]} do not "
                            f"match the column types of the first chunk: {err}") from None

    def _count(self, split: str, part: pd.DataFrame) -> None:
        self.rows[split] += len(part)
        self.missing[split].update({c: int(n) for c, n in part[list(self.kinds)].isna().sum()
                                    .items() if n})
        if self.task != "regression":
            counts = part[self.data.target].value_counts(sort=False)
            self.labels[split].update({jsonable(k): int(n) for k, n in counts.items()})
            if len(self.labels[split]) > _MAX_CLASSES:
                raise DataError(f"data.target: column {self.data.target!r} has more than "
                                f"{_MAX_CLASSES} distinct labels; set data.task: regression")
        if split == "train" and self.numeric:
            x = part[self.numeric].to_numpy(dtype=np.float64, na_value=np.nan)
            self.moments.update(x)
            for j, reservoir in enumerate(self.reservoirs):
                values = x[:, j]
                reservoir.add(values[~np.isnan(values)])

    # -- after the pass ------------------------------------------------------------------------

    def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Checks that need the whole pass; schema.json and data_profile.json."""
        data = self.data
        task, classes = self._task()
        if self.rows["train"] == 0:
            raise DataError("data.split: the training split has no rows")
        if task != "regression":
            seen = [c for c in classes if self.labels["train"][c]]
            if len(seen) < 2:
                raise DataError(f"data.split: the training split holds a single class "
                                f"({seen[0]!r}); a classifier needs at least two")
        constant = self._constant() if data.clean.drop_constant else []
        kinds = {c: k for c, k in self.kinds.items() if c not in constant}
        if not kinds:
            raise DataError("data.clean.drop_constant: every input column is constant on the "
                            "training split; nothing is left to learn from")
        clip, outliers = self._outliers(kinds)
        missing = {c: s for c, s in self.strategies.items() if s != "drop" and c in kinds}
        method = data.split.method
        if method in ("auto", "stratified", "random"):
            method = "hash"
        profile: dict[str, Any] = {
            "source": {"kind": "file", "path": str(data.source.path) if data.source else None,
                       "format": "parquet" if self.path.suffix != ".csv" else "csv"},
            "rows_read": self.rows_read, "columns_read": len(self.file.schema_arrow.names),
            "missing_target_dropped": self.target_dropped,
            "duplicates_dropped": None,
            "split": {"method": method, "seed": self.seed, "rows": dict(self.rows)},
            "leakage": {"duplicates": {"method": "hash", "note": "rows with identical inputs "
                                       "share a split by construction"},
                        "group_overlap": None if data.split.group_column is None else 0,
                        "time_overlap": None},
            "missing": {"columns": {c: {"strategy": self.strategies[c],
                                        "counts": {s: self.missing[s][c] for s in _SPLITS}}
                                    for c in self.kinds},
                        "rows_dropped": {"before_split": self.missing_dropped}},
            "outliers": outliers,
            "constant_columns_dropped": constant,
            "imbalance": None,
            "rows": dict(self.rows),
            "stream": {"chunk_rows": data.chunk_rows, "chunks": self.chunks,
                       "kinds_from_rows": min(data.chunk_rows, self.rows_read)},
        }
        for column, counts in self.made_missing.items():
            if column in kinds:
                profile["missing"]["columns"][column].update(counts.profile())
                if message := counts.warning(column):
                    warnings.warn(message, UserWarning, stacklevel=3)
        if task != "regression":
            profile["split"]["class_counts"] = {
                s: {str(c): self.labels[s][c] for c in classes} for s in _SPLITS}
            if data.imbalance == "class_weight":
                counts = self.labels["train"]
                n = sum(counts.values())
                profile["imbalance"] = {
                    "method": "class_weight",
                    "class_counts_before": {str(c): counts[c] for c in classes},
                    "class_weights": {str(c): n / (len(classes) * counts[c])
                                      for c in classes if counts[c]}}
        schema = {
            "target": data.target, "task": task, "classes": classes,
            "columns": [{"name": c, "kind": kinds[c], "dtype": _dtype(self._out_schema, c)}
                        for c in self.keep if c in kinds],
            "missing": missing, "fill_value": data.clean.missing.fill_value,
            "indicator": data.clean.missing.indicator, "clip": clip,
            "dropped_columns": {**self.dropped, "constant": constant},
            "time_column": None, "group_column": data.split.group_column,
            "split_column": data.split.column, "stream": True,
        }
        return schema, profile

    def _task(self) -> tuple[str, list[Any]]:
        if self.task == "regression":
            return "regression", []
        labels = set().union(*(set(c) for c in self.labels.values()))
        try:
            classes = sorted(labels)
        except TypeError:
            raise DataError(f"data.target: column {self.data.target!r} mixes value types; "
                            f"make it one type") from None
        if len(classes) < 2:
            raise DataError(f"data.target: column {self.data.target!r} holds a single value "
                            f"({classes[0]!r}); there is nothing to learn")
        if self.task == "binary" and len(classes) != 2:
            raise DataError(f"data.task: 'binary' needs exactly 2 classes, but column "
                            f"{self.data.target!r} has {len(classes)}; set data.task: multiclass")
        task = self.task if self.task != "classification" else (
            "binary" if len(classes) == 2 else "multiclass")
        return task, classes

    def _constant(self) -> list[str]:
        constant = []
        for j, column in enumerate(self.numeric):
            some_missing = self.missing["train"][column] > 0
            seen = self.moments.count[j] > 0
            single = seen and self.moments.min[j] == self.moments.max[j]
            if (single and not some_missing) or not seen:
                constant.append(column)
        constant += [c for c in self.others if len(self.distinct[c]) <= 1]
        return [c for c in self.kinds if c in constant]

    def _outliers(self, kinds: dict[str, str]) -> tuple[dict[str, list[float]],
                                                         dict[str, Any] | None]:
        config = self.data.clean.outliers
        if config is None:
            return {}, None
        threshold = config.threshold or DEFAULT_THRESHOLD[config.method]
        bounds: dict[str, list[float]] = {}
        for column in self.outlier_columns:
            if column not in kinds:
                continue
            j = self.numeric.index(column)
            if config.method == "iqr":
                sample = self.reservoirs[j].values
                if not len(sample):
                    continue
                q1, q3 = np.percentile(sample, [25, 75])
                low, high = q1 - threshold * (q3 - q1), q3 + threshold * (q3 - q1)
            else:
                mean, std = self.moments.mean[j], float(np.sqrt(self.moments.var[j]))
                low, high = mean - threshold * std, mean + threshold * std
            if np.isfinite(low) and np.isfinite(high):
                bounds[column] = [float(low), float(high)]
        section = {"method": config.method, "action": config.action,
                   "threshold": float(threshold), "train_rows_dropped": 0,
                   "columns": {c: {"low": b[0], "high": b[1], "outside": None}
                               for c, b in bounds.items()},
                   "approximate": config.method == "iqr"}
        return bounds, section


def _row_hashes(frame: pd.DataFrame, kinds: dict[str, str]) -> np.ndarray:
    """A 64-bit hash of each row's values that does not depend on how a chunk typed them
    (an integer column with a missing value arrives as floats)."""
    typed = {c: (frame[c].astype(np.float64) if kinds.get(c) == "numeric" or
                 pd.api.types.is_numeric_dtype(frame[c].dtype) and
                 not pd.api.types.is_bool_dtype(frame[c].dtype)
                 else frame[c].astype(object)) for c in frame.columns}
    return pd.util.hash_pandas_object(pd.DataFrame(typed), index=False).to_numpy()


def _uniform(hashes: np.ndarray, seed: int) -> np.ndarray:
    """Map 64-bit hashes to [0, 1), seeded (splitmix64's finalizer)."""
    with np.errstate(over="ignore"):
        z = hashes.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _dtype(schema: Any, name: str) -> str:
    import pyarrow as pa

    kind = schema.field(name).type
    if pa.types.is_floating(kind):
        return "float64"
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_boolean(kind):
        return "bool"
    return "object"
