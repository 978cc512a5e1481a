"""`Prediction`: what every predictor returns, shared by the torch and the ONNX Runtime ones.

Kept free of torch so that loading an exported bundle needs none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.errors import DataError


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
