"""Predictions from a trained run: `dlpipe.load(run_dir).predict(rows)` and `dlpipe predict`.

A `Predictor` holds only what the run directory says: the fitted preprocessing
(features.json), the model spec (model.json) and the weights (safetensors). New rows are
checked against the training schema first, so a missing, extra or mistyped column is an
error that lists what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dlpipe import runs
from dlpipe._prediction import Prediction, prediction_from_scores
from dlpipe.errors import DataError
from dlpipe.features import FittedFeatures
from dlpipe.features import load as load_features
from dlpipe.models.heads import to_scores
from dlpipe.models.spec import load_network
from dlpipe.runs import RunDir

__all__ = ["Prediction", "Predictor", "load", "read_rows", "write_predictions"]


class Predictor:
    """A trained run, ready to predict on raw rows.

    Example:
        >>> predictor = dlpipe.load("runs/quickstart")
        >>> predictor.predict(frame).labels[:3]
    """

    def __init__(self, fitted: FittedFeatures, model: torch.nn.Module, threshold: float = 0.5,
                 target: str | None = None) -> None:
        self.fitted = fitted
        self.model = model.eval()
        self.threshold = threshold
        self.target = target

    @property
    def task(self) -> str:
        return self.fitted.task

    @property
    def classes(self) -> list[Any]:
        return self.fitted.classes

    def predict(self, rows: pd.DataFrame | np.ndarray | Sequence[Mapping[str, Any]]
                ) -> Prediction:
        """Predict raw rows: a DataFrame, a list of dicts, or a 2-D array in column order."""
        frame = self.fitted.validate_input(
            self.fitted.frame_of(rows),
            target=self.target)
        x = torch.as_tensor(self.fitted.transform(frame), dtype=torch.float32)
        with torch.inference_mode():
            outputs = torch.cat([self.model(x[i:i + 4096]) for i in range(0, len(x), 4096)]
                                ) if len(x) else torch.zeros(0, 1)
        scores = to_scores(self.task, outputs).numpy()
        return prediction_from_scores(self.task, scores, self.fitted.target, self.threshold)


    def predict_file(self, source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     chunk_rows: int = 65_536) -> int:
        """Predict every row of a Parquet or CSV file larger than memory; return the count.

        The file is read `chunk_rows` rows at a time and the predictions are appended to
        `output` (.parquet, .csv or .jsonl) as they come, through a temporary file renamed
        at the end, so memory is bounded by the chunk and a failure leaves no output behind.
        The rows come out in the input's order.

        Raises:
            DataError: a bad row, named by its row number in the whole file.
        """
        out = Path(output)
        suffix = out.suffix.lower()
        tmp = out.with_name(f".{out.name}.tmp")
        start, writer = 0, None
        try:
            with open(tmp, "wb") as handle:
                numeric = [c["name"] for c in self.fitted.inputs.columns
                           if c["kind"] == "numeric"]
                for frame in _chunks(Path(source), chunk_rows, numeric):
                    try:
                        predicted = self.predict(frame).to_frame()
                    except DataError as err:
                        raise _offset_rows(err, start) from None
                    start += len(frame)
                    if suffix == ".parquet":
                        import pyarrow as pa
                        import pyarrow.parquet as pq

                        table = pa.Table.from_pandas(predicted, preserve_index=False)
                        if writer is None:
                            writer = pq.ParquetWriter(handle, table.schema)
                        writer.write_table(table)
                    elif suffix in (".jsonl", ".ndjson"):
                        handle.write(predicted.to_json(orient="records", lines=True).encode())
                    else:
                        handle.write(predicted.to_csv(index=False, header=writer is None)
                                     .encode())
                        writer = writer or True
                if writer is not None and writer is not True:
                    writer.close()
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return start


def _chunks(path: Path, rows: int, numeric: list[str]) -> Any:
    """A Parquet or CSV file as DataFrames of at most `rows` rows; in a CSV the `numeric`
    columns are read as floats (not typed by the first block)."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"input: {str(path)!r} is not a file")
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with pq.ParquetFile(path, pre_buffer=False) as handle:
                for batch in handle.iter_batches(batch_size=rows):
                    yield batch.to_pandas()
            return
        import pyarrow.csv as pv

        reader = pv.open_csv(path, read_options=pv.ReadOptions(block_size=1 << 22),
                             convert_options=pv.ConvertOptions(
                                 column_types=dict.fromkeys(numeric, pa.float64())))
        pending: list[Any] = []
        for batch in reader:  # CSV blocks are cut by bytes: regroup them into `rows` rows
            pending.append(batch)
            while sum(len(b) for b in pending) >= rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, rows).to_pandas()
                pending = table.slice(rows).to_batches()
        if pending and sum(len(b) for b in pending):
            yield pa.Table.from_batches(pending).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"input: cannot read {path}: {err}") from None


def _offset_rows(err: DataError, offset: int) -> DataError:
    """`err` with the row numbers of a chunk turned into row numbers of the whole file."""
    import re

    text = re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + offset}", str(err))
    return type(err)(text)


def load(run_dir: str | os.PathLike[str] | RunDir) -> Predictor:
    """Load a trained run for prediction."""
    rundir = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    fitted = load_features(rundir)
    model = load_network(rundir)
    threshold = 0.5
    if rundir.has(runs.METRICS):
        threshold = rundir.read_json(runs.METRICS).get("test", {}).get("threshold", 0.5)
    target = rundir.read_json(runs.SCHEMA)["target"]
    return Predictor(fitted, model, threshold=threshold, target=target)


def read_rows(path: str | os.PathLike[str], fitted: FittedFeatures | None = None
              ) -> pd.DataFrame:
    """Read rows to predict on: CSV, Parquet, JSON Lines or .npz (arrays of images too), or,
    for a model whose one input is an image column, an image file or a folder of them (every
    image below it, in sorted order; the table's column is named after the model's)."""
    from dlpipe.config import SourceConfig
    from dlpipe.data import load_table
    from dlpipe.data.images import IMAGE_EXTENSIONS

    where = Path(path)
    image_input = fitted is not None and len(fitted.columns) == 1 and bool(fitted.images)
    if image_input and (where.is_dir() or where.suffix.lower() in IMAGE_EXTENSIONS):
        files = [where] if where.is_file() else sorted(
            f for f in where.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(where).parts))
        if not files:
            raise DataError(f"input: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                            f"{str(where)!r}")
        return pd.DataFrame({fitted.columns[0]: [str(f.resolve()) for f in files]})
    if where.is_dir():
        raise DataError(f"input: {str(where)!r} is a folder; predict reads a CSV, Parquet, "
                        f"JSON Lines or .npz file (a folder of images only for an image model)")
    frame = load_table(SourceConfig(path=str(path)))
    if fitted is not None and list(frame.columns[:1]) == ["image"] and len(fitted.images) == 1:
        frame = frame.rename(columns={"image": next(iter(fitted.images))})  # arrays from .npz
    return frame


def write_predictions(prediction: Prediction, path: str | os.PathLike[str], *,
                      inputs: pd.DataFrame | None = None) -> Path:
    """Write predictions as CSV, Parquet or JSON Lines (by extension), atomically; `inputs`
    columns (e.g. the image paths) come first, to tell the rows apart."""
    import io

    from dlpipe.runs import atomic_write

    out = Path(path)
    frame = prediction.to_frame()
    if inputs is not None:
        frame = pd.concat([inputs.reset_index(drop=True), frame], axis=1)
    buffer = io.BytesIO()
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(buffer, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        buffer.write(frame.to_json(orient="records", lines=True).encode())
    else:
        buffer.write(frame.to_csv(index=False).encode())
    atomic_write(out, buffer.getvalue())
    return out
