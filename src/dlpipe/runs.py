"""The run directory: the contract between stages, and the only module that knows file names.

Every stage reads what earlier stages wrote and writes its own outputs here, in documented,
non-pickle formats (YAML, JSON, JSONL, Parquet, safetensors). Every file is written to a
temporary name, flushed to disk and renamed, so a reader never sees half a file; a
checkpoint is a folder that only counts once the pointer to it is renamed into place.

Layout::

    config.yaml           the resolved config the run was made with
    fingerprint.json      config hash, data hash, package versions
    data_profile.json     what the data stage read, dropped, filled and checked
    schema.json           input columns with their kinds, the target, the task, the classes
    data/{train,val,test}.parquet   the cleaned splits
    data/source.parquet   streaming runs from a CSV: the file converted once, in blocks
    prepared/             streaming runs: {train,val,test}.{x,y}.npy, the transformed rows
    features.json         preprocessing fitted on the training split
    tune/                 the search: trials.csv, best_config.yaml, summary.json, journal.log
                          (the Optuna study), history / importances / parallel_coordinates.png
    model.json            the model's builder name, keyword arguments and shapes
    training.json         epochs run, why training stopped, the kept epoch and its source
    weights.safetensors   the deliverable (best) weights
    checkpoints/          resume state: epoch-NNNN/ folders and last.json pointing at one
    history.jsonl         one line of metrics per epoch
    param_stats.jsonl     per epoch: weight histogram and gradient norm of each parameter
    loggers.json          where the experiment loggers (TensorBoard, MLflow) wrote
    metrics.json          {"val": {...}, "test": {...}, "cv": {...}}
    finetune.json         a fine-tuned run: the new data's val/test metrics of the parent as is
                          ("before") and fine-tuned ("after"), the parent, what was frozen
    curves.json           ROC / PR / calibration / confusion / residuals / worst examples
    predictions/test.parquet   true value, prediction and probabilities of each test row
    report.html           the self-contained report of the run (plots/ holds its PNGs)
    compress/             report.json (every variant: size, parameters, latency, metrics,
                          kept or rejected); the kept fp32 model (model.json,
                          weights.safetensors, model.onnx) when pruning was kept;
                          model.int8.onnx, model.fp16.onnx, weights.bf16.safetensors when kept
    export/               the deployable bundle (layout in dlpipe/export/bundle.py)
    run.json              the command and per-stage timings
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from dlpipe.errors import RunDirError


class Artifact(NamedTuple):
    """A file of the run directory and the stage that writes it (None: written by `run`)."""

    filename: str
    stage: str | None


CONFIG = Artifact("config.yaml", None)
FINGERPRINT = Artifact("fingerprint.json", "data")
PROFILE = Artifact("data_profile.json", "data")
SCHEMA = Artifact("schema.json", "data")
FEATURES = Artifact("features.json", "features")
MODEL = Artifact("model.json", "train")
TRAINING = Artifact("training.json", "train")
WEIGHTS = Artifact("weights.safetensors", "train")
HISTORY = Artifact("history.jsonl", "train")
METRICS = Artifact("metrics.json", "evaluate")
FINETUNE = Artifact("finetune.json", "finetune")
CURVES = Artifact("curves.json", "evaluate")
PREDICTIONS = Artifact("predictions/test.parquet", "evaluate")
PARAM_STATS = Artifact("param_stats.jsonl", "train")
LOGGERS = Artifact("loggers.json", "train")
REPORT = Artifact("report.html", "report")
PLOTS = Artifact("plots", "report")  # a folder: plots/<name>.png
TUNE_TRIALS = Artifact("tune/trials.csv", "tune")
TUNE_BEST_CONFIG = Artifact("tune/best_config.yaml", "tune")
TUNE_SUMMARY = Artifact("tune/summary.json", "tune")
TUNE_JOURNAL = Artifact("tune/journal.log", "tune")
TUNE_PLOTS = {name: Artifact(f"tune/{name}.png", "tune")
              for name in ("history", "importances", "parallel_coordinates")}
COMPRESS_DIR = Artifact("compress", "compress")  # a folder, replaced by each compress run
COMPRESS_REPORT = Artifact("compress/report.json", "compress")
COMPRESSED_MODEL = Artifact("compress/model.json", "compress")
COMPRESSED_WEIGHTS = Artifact("compress/weights.safetensors", "compress")
COMPRESSED_ONNX = Artifact("compress/model.onnx", "compress")
COMPRESSED_INT8 = Artifact("compress/model.int8.onnx", "compress")
COMPRESSED_FP16 = Artifact("compress/model.fp16.onnx", "compress")
COMPRESSED_BF16 = Artifact("compress/weights.bf16.safetensors", "compress")
EXPORT = Artifact("export", "export")  # a folder: the bundle
RUN_INFO = Artifact("run.json", None)
SOURCE = Artifact("data/source.parquet", "data")  # a streamed CSV, converted once
PREPARED = Artifact("prepared", "features")  # a folder: <split>.x.npy and <split>.y.npy
SPLITS = ("train", "val", "test")
ARTIFACTS: tuple[Artifact, ...] = (
    *(v for v in list(globals().values()) if isinstance(v, Artifact)), *TUNE_PLOTS.values())
"""Every file and folder of the layout above, with the stage that writes it."""

_TMP_SUFFIX = ".tmp"
_CHECKPOINTS = "checkpoints"
_LAST = "last.json"


class RunDir:
    """A run directory on disk, with a small in-memory cache of what was just written.

    Example:
        >>> rundir = RunDir.create("runs/quickstart")
        >>> rundir.write_json(METRICS, {"test": {"accuracy": 0.97}})
        >>> RunDir.open("runs/quickstart").read_json(METRICS)["test"]["accuracy"]
        0.97
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable
        """False in the other processes of a torchrun job: they read what rank 0 writes and
        their writes are skipped (rank 0 writes the same content)."""
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RunDir:
        """Make a new run directory; refuse one that already holds a run."""
        rundir = cls(path)
        if (rundir.path / CONFIG.filename).exists():
            raise RunDirError(
                f"run directory: {rundir.path} already holds a run; choose another --run-dir "
                f"or remove it first"
            )
        if rundir.path.exists() and not rundir.path.is_dir():
            raise RunDirError(f"run directory: {rundir.path} exists and is not a folder")
        rundir.path.mkdir(parents=True, exist_ok=True)
        return rundir

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = True) -> RunDir:
        """Open an existing run directory and sweep temporary files a crash left behind."""
        rundir = cls(path, writable=writable)
        if not rundir.path.is_dir():
            raise RunDirError(f"run directory: {rundir.path} does not exist")
        if not (rundir.path / CONFIG.filename).is_file():
            raise RunDirError(
                f"run directory: {rundir.path} is not a dlpipe run (no {CONFIG.filename}); "
                f"create one with `dlpipe run CONFIG --run-dir {rundir.path}`"
            )
        rundir.sweep()
        return rundir

    # -- generic file access ----------------------------------------------------------

    def file(self, artifact: Artifact) -> Path:
        return self.path / artifact.filename

    def has(self, artifact: Artifact) -> bool:
        return self.file(artifact).exists()

    def require(self, artifact: Artifact) -> Path:
        """Return the path of `artifact`, or say which stage must run first."""
        path = self.file(artifact)
        if not path.exists():
            stage = artifact.stage or "run"
            raise RunDirError(
                f"{self.path} has no {artifact.filename}; run `dlpipe {stage} {self.path}` first"
            )
        return path

    def write_bytes(self, artifact: Artifact | str, data: bytes) -> Path:
        path = self.path / (artifact.filename if isinstance(artifact, Artifact) else artifact)
        if self.writable:
            atomic_write(path, data)
        return path

    def write_json(self, artifact: Artifact, obj: Any) -> Path:
        self._cache[artifact.filename] = obj
        return self.write_bytes(artifact, dumps_json(obj).encode())

    def read_json(self, artifact: Artifact) -> Any:
        if artifact.filename not in self._cache:
            self._cache[artifact.filename] = json.loads(self.require(artifact).read_text())
        return self._cache[artifact.filename]

    def write_yaml(self, artifact: Artifact, obj: Any) -> Path:
        self._cache[artifact.filename] = obj
        return self.write_bytes(artifact, yaml.safe_dump(obj, sort_keys=False).encode())

    def read_yaml(self, artifact: Artifact) -> Any:
        if artifact.filename not in self._cache:
            self._cache[artifact.filename] = yaml.safe_load(self.require(artifact).read_text())
        return self._cache[artifact.filename]

    def write_jsonl(self, artifact: Artifact, rows: list[Mapping[str, Any]]) -> Path:
        text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows)
        return self.write_bytes(artifact, text.encode())

    def read_jsonl(self, artifact: Artifact) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.require(artifact).read_text().splitlines()]

    def write_tensors(self, artifact: Artifact, tensors: Mapping[str, Any]) -> Path:
        from safetensors.torch import save

        return self.write_bytes(artifact, save(_contiguous(tensors)))

    def read_tensors(self, artifact: Artifact) -> dict[str, Any]:
        from safetensors.torch import load

        return load(self.require(artifact).read_bytes())

    # -- data splits ----------------------------------------------------------------

    def split_file(self, split: str) -> Path:
        return self.path / "data" / f"{split}.parquet"

    def write_split(self, split: str, frame: Any) -> Path:
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self._cache[f"split:{split}"] = frame
        return self.write_bytes(f"data/{split}.parquet", buffer.getvalue())

    def read_split(self, split: str) -> Any:
        key = f"split:{split}"
        if key not in self._cache:
            import pandas as pd

            path = self.split_file(split)
            if not path.exists():
                raise RunDirError(
                    f"{self.path} has no data/{split}.parquet; run `dlpipe data {self.path}` first"
                )
            self._cache[key] = pd.read_parquet(path)
        return self._cache[key]

    # -- streamed (larger than memory) data -----------------------------------------

    @contextmanager
    def writing(self, artifact: Artifact | str) -> Iterator[Path]:
        """A temporary path to stream a large file into; renamed to `artifact` when the block
        ends without an error, deleted when it raises. Nothing half-written is left."""
        path = self.path / (artifact.filename if isinstance(artifact, Artifact) else artifact)
        with replacing(path) as tmp:
            yield tmp
        self._cache.pop(f"split:{path.stem}", None)

    def split_rows(self, split: str) -> int:
        """Rows of a split, from the Parquet footer (nothing else is read)."""
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(self._split_path(split)).metadata.num_rows)

    def iter_split(self, split: str, rows: int, columns: list[str] | None = None
                   ) -> Iterator[Any]:
        """A split as pandas DataFrames of at most `rows` rows, in file order; each frame's
        index holds the rows' positions in the split, so errors can name the row."""
        import pandas as pd
        import pyarrow.parquet as pq

        start = 0
        # pre_buffer=False: pyarrow's pre-buffering keeps the bytes of every chunk already
        # read until the file is closed (RSS grew by the whole file on 10M rows).
        with pq.ParquetFile(self._split_path(split), pre_buffer=False) as handle:
            floats = _nullable_integers(handle)
            for batch in handle.iter_batches(batch_size=rows, columns=columns):
                # An integer column with a missing value anywhere reads as floats in every
                # chunk, as it does when the whole file is read at once.
                for name in floats & set(batch.schema.names):
                    i = batch.schema.get_field_index(name)
                    batch = batch.set_column(i, name, batch.column(i).cast("float64"))
                frame = batch.to_pandas()
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield frame

    def sample_split(self, split: str, rows: int, seed: int = 0) -> Any:
        """At most `rows` random rows of a split, read from randomly chosen row groups, in
        file order: a bounded sample of a split too large to load (export checks, drift)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetFile(self._split_path(split)) as handle:
            meta = handle.metadata
            order = np.random.default_rng(seed).permutation(meta.num_row_groups)
            chosen, total = [], 0
            for group in order:
                if total >= rows:
                    break
                chosen.append(int(group))
                total += meta.row_group(int(group)).num_rows
            if not chosen:
                return handle.schema_arrow.empty_table().to_pandas()
            table = pa.concat_tables(handle.read_row_group(g) for g in sorted(chosen))
        if len(table) > rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(table), rows, replace=False))
            table = table.take(keep)
        return table.to_pandas()

    def read_split_bounded(self, split: str, rows: int, seed: int = 0) -> Any:
        """The split, whole when it has at most `rows` rows, else `sample_split` of it."""
        if self.split_rows(split) <= rows:
            return self.read_split(split)
        return self.sample_split(split, rows, seed)

    def prepared_file(self, split: str, part: str) -> Path:
        """prepared/<split>.<part>.npy of a streaming run; `part` is ``x`` or ``y``."""
        return self.path / PREPARED.filename / f"{split}.{part}.npy"

    def _split_path(self, split: str) -> Path:
        path = self.split_file(split)
        if not path.exists():
            raise RunDirError(
                f"{self.path} has no data/{split}.parquet; run `dlpipe data {self.path}` first")
        return path

    # -- checkpoints ----------------------------------------------------------------

    def write_checkpoint(self, epoch: int, tensors: dict[str, dict[str, Any]], state: Any) -> Path:
        """Write one complete checkpoint folder, then point `last.json` at it.

        `tensors` maps a file stem (``model``, ``optimizer``) to its tensors. The folder is
        built under a temporary name and renamed; only then is the pointer replaced, so an
        interrupted write leaves the previous checkpoint in charge. Older folders are removed.
        """
        root = self.path / _CHECKPOINTS
        name = f"epoch-{epoch:04d}"
        if not self.writable:
            return root / name
        tmp = root / f".{name}{_TMP_SUFFIX}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        from safetensors.torch import save

        for stem, group in tensors.items():
            _write_synced(tmp / f"{stem}.safetensors", save(_contiguous(group)))
        _write_synced(tmp / "state.json", dumps_json(state).encode())
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write(root / _LAST, dumps_json({"epoch": epoch, "folder": name}).encode())
        for old in root.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def read_checkpoint(self) -> tuple[dict[str, dict[str, Any]], Any] | None:
        """Return (tensors by file stem, state) of the last complete checkpoint, or None."""
        pointer = self.path / _CHECKPOINTS / _LAST
        if not pointer.exists():
            return None
        folder = self.path / _CHECKPOINTS / json.loads(pointer.read_text())["folder"]
        from safetensors.torch import load

        tensors = {p.stem: load(p.read_bytes()) for p in sorted(folder.glob("*.safetensors"))}
        return tensors, json.loads((folder / "state.json").read_text())

    def clear_checkpoints(self) -> None:
        if self.writable:
            shutil.rmtree(self.path / _CHECKPOINTS, ignore_errors=True)

    def remove_outputs(self, stages: Sequence[str]) -> list[str]:
        """Delete what `stages` wrote (their files and folders; train's checkpoints too) and
        their run.json entries: results that describe a model or data no longer there.

        Returns:
            The stages that had something to delete.
        """
        if not self.writable:
            return []
        removed = set()
        for artifact in ARTIFACTS:
            path = self.file(artifact)
            if artifact.stage not in stages or not path.exists():
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
                if path.parent != self.path and not any(path.parent.iterdir()):
                    path.parent.rmdir()  # predictions/, tune/ once empty
            self._cache.pop(artifact.filename, None)
            removed.add(artifact.stage)
        if "train" in stages and (self.path / _CHECKPOINTS).exists():
            self.clear_checkpoints()
            removed.add("train")
        if self.has(RUN_INFO):
            info = self.read_json(RUN_INFO)
            done = info.get("stages", {})
            removed |= set(done) & set(stages)
            info["stages"] = {k: v for k, v in done.items() if k not in stages}
            self.write_json(RUN_INFO, info)
        return [stage for stage in stages if stage in removed]

    # -- housekeeping -------------------------------------------------------------------

    def sweep(self) -> list[Path]:
        """Remove temporary files and folders an interrupted write left behind."""
        if not self.writable:  # they may be rank 0's writes in progress
            return []
        stray = list(self.path.rglob(f".*{_TMP_SUFFIX}"))
        for path in stray:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stray

    def forget(self) -> None:
        """Drop the in-memory cache (after another process wrote to the folder)."""
        self._cache.clear()

    @contextmanager
    def stage_timer(self, stage: str) -> Iterator[None]:
        """Record the wall time of `stage` in run.json."""
        import time

        start = time.perf_counter()
        yield
        info = self.read_json(RUN_INFO) if self.has(RUN_INFO) else {"stages": {}}
        info.setdefault("stages", {})[stage] = {"seconds": round(time.perf_counter() - start, 3)}
        self.write_json(RUN_INFO, info)


def dumps_json(obj: Any) -> str:
    """JSON with sorted-free, stable formatting; numpy scalars and arrays become plain values."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _nullable_integers(handle: Any) -> set[str]:
    """Integer columns of a Parquet file with a missing value in some row group."""
    import pyarrow as pa

    schema, meta = handle.schema_arrow, handle.metadata
    found = set()
    for i, field in enumerate(schema):
        if not pa.types.is_integer(field.type):
            continue
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(i).statistics
            if stats is None or not stats.has_null_count or stats.null_count > 0:
                found.add(field.name)
                break
    return found


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to stream a file into: when the block ends without an
    error it is fsynced and renamed to `path` (then the folder fsynced); when it raises it is
    deleted, and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_SUFFIX}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_SUFFIX}")
    _write_synced(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(tensors: Mapping[str, Any]) -> dict[str, Any]:
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
