"""`Prediction`: what every predictor returns, shared by the torch and the ONNX Runtime ones.

Kept free of torch so that loading an exported bundle needs none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


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
