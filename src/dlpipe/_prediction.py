"""What the torch predictor (a run) and the ONNX Runtime one (a bundle) share: `Prediction`,
what they return, and `RowPredictor`, how they go from raw rows (or a file of them) to it.

Kept free of torch so that loading an exported bundle needs none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlpipe._csv import (
    check_decoded,
    not_text_error,
    parse_options,
    predict_hint,
    read_options,
)
from dlpipe.errors import DataError
from dlpipe.runs import replacing


@dataclass
class Prediction:
    """Predicted labels (or values) and, for classification, one probability column a class."""

    labels: np.ndarray
    """(N,) predicted class labels as in the training data, or predicted values."""

    probabilities: np.ndarray | None
    """(N, K) class probabilities in the order of `classes`; None for regression."""

    classes: list[Any]

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"prediction": self.labels})
        if self.probabilities is not None:
            for i, cls in enumerate(self.classes):
                frame[f"probability_{cls}"] = self.probabilities[:, i]
        return frame


def rows_to_frame(rows: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Rows to predict as a DataFrame: a DataFrame, a 2-D array in `columns` order, or dicts.

    A model with a single input column also takes a plain list of its values (texts, image
    paths or bytes).
    """
    if isinstance(rows, pd.DataFrame):
        return rows
    single = list(columns)[0] if len(columns) == 1 else None
    if (single is not None and isinstance(rows, Sequence) and not isinstance(rows, str | bytes)
            and len(rows) and all(isinstance(r, str | bytes) for r in rows)):
        return pd.DataFrame({single: list(rows)})
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2 or rows.shape[1] != len(columns):
            raise DataError(f"predict: expected a 2-D array with {len(columns)} columns "
                            f"({', '.join(columns)}); got shape {rows.shape}")
        return pd.DataFrame(rows, columns=list(columns))
    if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        return pd.DataFrame(list(rows))
    raise DataError(f"predict: expected a DataFrame, a 2-D array or a list of dicts; got "
                    f"{type(rows).__name__}")


def scores_from_outputs(task: str, outputs: np.ndarray) -> np.ndarray:
    """A model's raw (N, out) outputs as scores: sigmoid (N,) for binary, softmax (N, K) for
    multiclass, (N,) values for regression. NumPy's twin of `dlpipe.models.heads.to_scores`,
    for the predictors that run without torch."""
    outputs = outputs.astype(np.float32, copy=False)
    if task == "binary":
        from scipy.special import expit

        return expit(outputs.reshape(-1))
    if task == "multiclass":
        z = np.exp(outputs - outputs.max(axis=1, keepdims=True))  # stable
        return z / z.sum(axis=1, keepdims=True)
    return outputs.reshape(-1)


def prediction_from_scores(task: str, scores: np.ndarray, target: Any,
                           threshold: float) -> Prediction:
    """Labels and probabilities from scores: (N,) positive-class probability for binary,
    (N, K) probabilities for multiclass, (N,) values on the training scale for regression.
    `target` is the fitted target encoder (`inverse_transform`, `classes_`)."""
    if task == "regression":
        return Prediction(target.inverse_transform(scores.reshape(-1)), None, [])
    if task == "binary":
        probabilities = np.stack([1 - scores, scores], axis=1)  # (N, 2)
        indices = (scores >= threshold).astype(np.int64)
    else:
        probabilities = scores
        indices = scores.argmax(axis=1)
    return Prediction(target.inverse_transform(indices), probabilities, list(target.classes_))


class RowPredictor:
    """Raw rows → checked against the training schema → transformed → scored → `Prediction`.

    Subclasses set `fitted`, `threshold` and `target` and say how a model scores the
    transformed (N, F) float32 inputs (`_scores`).
    """

    fitted: Any
    """The fitted preprocessing (`dlpipe.features.FittedFeatures`; a shared module names no
    stage)."""
    threshold: float
    """Positive-class probability from which a binary prediction is the positive class."""
    target: str | None
    """The training target's column name: an input column of that name is refused."""

    @property
    def task(self) -> str:
        return self.fitted.task

    @property
    def classes(self) -> list[Any]:
        return self.fitted.classes

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """(N,) positive-class probabilities (binary), (N, K) probabilities (multiclass) or
        (N,) values on the model's scale (regression), for (N, F) inputs."""
        raise NotImplementedError

    def predict(self, rows: pd.DataFrame | np.ndarray | Sequence[Mapping[str, Any]]
                ) -> Prediction:
        """Predict raw rows: a DataFrame, a list of dicts, or a 2-D array in column order."""
        frame = self.fitted.validate_input(self.fitted.frame_of(rows), target=self.target)
        scores = self._scores(self.fitted.transform(frame))
        return prediction_from_scores(self.task, scores, self.fitted.target, self.threshold)

    def predict_file(self, source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                     chunk_rows: int = 65_536, encoding: str = "utf-8", sep: str = ",") -> int:
        """Predict every row of a Parquet or CSV file larger than memory; return the count.

        The file is read `chunk_rows` rows at a time and the predictions are appended to
        `output` (.parquet, .csv or .jsonl) as they come, through a temporary file renamed
        at the end, so memory is bounded by the chunk and a failure leaves no output behind.
        The rows come out in the input's order. `encoding` and `sep` are a CSV's text
        encoding and field separator.

        Raises:
            DataError: a bad row, named by its row number in the whole file.
        """
        numeric = [c["name"] for c in self.fitted.inputs.columns if c["kind"] == "numeric"]

        def predicted() -> Iterator[pd.DataFrame]:
            start = 0
            for frame in read_chunks(Path(source), chunk_rows, numeric, encoding=encoding,
                                     sep=sep):
                try:
                    yield self.predict(frame).to_frame()
                except DataError as err:
                    raise _offset_rows(err, start) from None
                start += len(frame)

        return write_frames(predicted(), output)


def write_frames(frames: Iterable[pd.DataFrame], path: str | os.PathLike[str]) -> int:
    """Write `frames`, one after the other, as one CSV, Parquet or JSON Lines file (by
    extension) through a temporary file renamed at the end; return the rows written. Memory
    holds one frame at a time; an error leaves no file behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(path)
    suffix = out.suffix.lower()
    rows = 0
    with replacing(out) as tmp, open(tmp, "wb") as handle:
        writer = None
        for i, frame in enumerate(frames):
            if suffix == ".parquet":
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
            elif suffix in (".jsonl", ".ndjson"):
                handle.write(frame.to_json(orient="records", lines=True).encode())
            else:
                handle.write(frame.to_csv(index=False, header=i == 0).encode())
            rows += len(frame)
        if writer is not None:
            writer.close()
    return rows


def read_chunks(path: Path, rows: int, numeric: Sequence[str] = (), *,
                encoding: str = "utf-8", sep: str = ",") -> Iterator[pd.DataFrame]:
    """A Parquet or CSV file as DataFrames of at most `rows` rows, in file order; in a CSV the
    `numeric` columns are read as floats (not typed by the first block); its fields are
    separated by `sep`.

    Raises:
        DataError: a CSV that is not text in `encoding`, naming the line and the byte.
    """
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

        reader = pv.open_csv(path, read_options=read_options(encoding, block_size=1 << 22),
                             parse_options=parse_options(sep),
                             convert_options=pv.ConvertOptions(
                                 column_types=dict.fromkeys(numeric, pa.float64())))
        check_decoded(path, reader.schema, encoding, "input", predict_hint)
        pending: list[Any] = []
        for batch in reader:  # CSV blocks are cut by bytes: regroup them into `rows` rows
            pending.append(batch)
            while sum(len(b) for b in pending) >= rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, rows).to_pandas()
                pending = table.slice(rows).to_batches()
        if pending and sum(len(b) for b in pending):
            yield pa.Table.from_batches(pending).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as err:
        if suffix not in (".parquet", ".pq") and (
                error := not_text_error(path, encoding, "input", predict_hint)):
            raise error from None
        raise DataError(f"input: cannot read {path}: {err}") from None


def _offset_rows(err: DataError, offset: int) -> DataError:
    """`err` with the row numbers of a chunk turned into row numbers of the whole file."""
    text = re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + offset}", str(err))
    return type(err)(text)
