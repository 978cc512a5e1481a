"""The features stage: preprocessing fitted on the training split only, saved as features.json.

`run` reads schema.json and the train split, fits the input transformer and the target
encoder, and writes both to features.json (plain JSON, never pickle); `load` reads them back
for train, evaluate and predict.

Example:
    >>> fitted = features.run(cfg, rundir)            # or features.load(rundir) later
    >>> x, y = fitted.arrays(rundir.read_split("val"))  # (N, F) float32, (N,) int64 / float32
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dlpipe import runs
from dlpipe.errors import RunDirError
from dlpipe.features.base import NotFittedError, Transformer
from dlpipe.features.categorical import BinaryEncoder, CategoricalEncoder
from dlpipe.features.numeric import NumericTransformer
from dlpipe.features.tabular import TabularFeatures, TargetEncoder

if TYPE_CHECKING:
    from dlpipe.config import FeaturesConfig, PipelineConfig
    from dlpipe.runs import RunDir

__all__ = [
    "FORMAT_VERSION",
    "BinaryEncoder",
    "CategoricalEncoder",
    "FittedFeatures",
    "NotFittedError",
    "NumericTransformer",
    "TabularFeatures",
    "TargetEncoder",
    "Transformer",
    "fit_features",
    "load",
    "run",
]

FORMAT_VERSION = 1
"""Version of the features.json layout; `load` refuses any other."""


@dataclass
class FittedFeatures:
    """The fitted input transformer and target encoder of a run."""

    inputs: TabularFeatures
    target: TargetEncoder
    task: str

    @property
    def columns(self) -> list[str]:
        """The input columns the model reads, in training order."""
        return [c["name"] for c in self.inputs.columns]

    def validate_input(self, frame: pd.DataFrame, *, target: str | None = None) -> pd.DataFrame:
        """Check raw rows before prediction; return their input columns in training order.

        Raises:
            DataError: a missing or unexpected column, or a bad value, naming column and row.
        """
        return self.inputs.validate_input(frame, target=target)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The model input of raw rows: float32 (N, F), laid out as docs/CONTRACTS.md says."""
        return self.inputs.transform(frame)

    def arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Return X (N, F) float32 and y (N,) int64 or float32 (None without a target column)."""
        x = self.transform(frame)
        if self.target.name not in frame.columns:
            return x, None
        return x, self.target.transform(frame[self.target.name])

    def to_json(self) -> dict[str, Any]:
        """The features.json document."""
        return {
            "version": FORMAT_VERSION,
            "task": self.task,
            "inputs": self.inputs.to_json(),
            "target": self.target.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FittedFeatures:
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise RunDirError(
                f"features.json has format version {version!r}, this dlpipe reads version "
                f"{FORMAT_VERSION}; refit it with `dlpipe features RUN_DIR`"
            )
        return cls(
            inputs=TabularFeatures.from_json(data["inputs"]),
            target=TargetEncoder.from_json(data["target"]),
            task=data["task"],
        )


def fit_features(
    schema: Mapping[str, Any], section: FeaturesConfig, train: pd.DataFrame
) -> FittedFeatures:
    """Fit the inputs and the target described by `schema` on the training rows `train`.

    The stage calls this on the train split; k-fold evaluation calls it on each fold.
    """
    inputs = TabularFeatures(
        schema["columns"],
        numeric=section.numeric,
        categorical=section.categorical,
        overrides=dict(section.columns),
        min_frequency=section.min_frequency,
        unseen=section.unseen,
        missing=schema.get("missing") or {},
        fill_value=schema.get("fill_value"),
        indicator=bool(schema.get("indicator", False)),
        clip=schema.get("clip") or {},
    )
    target = TargetEncoder(
        schema["task"],
        classes=schema.get("classes") or None,
        scale=section.scale_target,
        name=schema["target"],
    )
    if schema["target"] not in train.columns:
        raise RunDirError(f"the train split has no target column {schema['target']!r}; "
                          f"rerun `dlpipe data RUN_DIR`")
    inputs.fit(train)
    target.fit(train[schema["target"]])
    return FittedFeatures(inputs=inputs, target=target, task=schema["task"])


def run(cfg: PipelineConfig, rundir: RunDir) -> FittedFeatures:
    """Fit on the train split only and write features.json."""
    schema = rundir.read_json(runs.SCHEMA)
    fitted = fit_features(schema, cfg.features, rundir.read_split("train"))
    rundir.write_json(runs.FEATURES, fitted.to_json())
    return fitted


def load(rundir: RunDir) -> FittedFeatures:
    """Read the fitted features of a run (features.json)."""
    return FittedFeatures.from_json(rundir.read_json(runs.FEATURES))
