"""The features stage: preprocessing fitted on the training split only, saved as features.json.

`run` reads schema.json and the train split, fits the input transformers (one for the
tabular columns, a tokenizer per text column, an image preprocessor per image column) and the
target encoder, and writes them to features.json (plain JSON, never pickle); `load` reads
them back for train, evaluate and predict.

The model input is one float32 (N, F) matrix laid out in blocks (`FittedFeatures.layout`,
docs/CONTRACTS.md)::

    [ tabular: numeric | binary | one-hot | indicators | embedding indices ]
    [ per text column: L token ids (0 = padding) ] [ per image column: C*H*W pixels ]

Example:
    >>> fitted = features.run(cfg, rundir)            # or features.load(rundir) later
    >>> x, y = fitted.arrays(rundir.read_split("val"))  # (N, F) float32, (N,) int64 / float32
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dlpipe import runs
from dlpipe._prediction import rows_to_frame
from dlpipe.data.images import arrays_to_cells
from dlpipe.data.text import check_text
from dlpipe.errors import DataError, RunDirError
from dlpipe.features.base import NotFittedError, Transformer
from dlpipe.features.categorical import BinaryEncoder, CategoricalEncoder
from dlpipe.features.images import ImageFeatures
from dlpipe.features.numeric import NumericTransformer
from dlpipe.features.tabular import TabularFeatures, TargetEncoder

if TYPE_CHECKING:
    from dlpipe.config import FeaturesConfig, PipelineConfig
    from dlpipe.features.text import TextFeatures  # imported when used: it loads tokenizers
    from dlpipe.runs import RunDir

__all__ = [
    "FORMAT_VERSION",
    "BinaryEncoder",
    "CategoricalEncoder",
    "FittedFeatures",
    "ImageFeatures",
    "NotFittedError",
    "NumericTransformer",
    "TabularFeatures",
    "TargetEncoder",
    "Transformer",
    "fit_features",
    "fit_features_stream",
    "load",
    "run",
]

FORMAT_VERSION = 2
"""Version of the features.json layout; `load` reads it and version 1 (tabular only)."""

MEDIA_KINDS = ("text", "image")


@dataclass
class FittedFeatures:
    """The fitted input transformers and target encoder of a run.

    Attributes:
        inputs: the tabular columns (numeric, binary, categorical); may have none.
        text: a fitted tokenizer per text column.
        images: a fitted preprocessor per image column.
        order: every input column in the table's order (for arrays given in column order).
    """

    inputs: TabularFeatures
    target: TargetEncoder
    task: str
    text: dict[str, TextFeatures] = field(default_factory=dict)
    images: dict[str, ImageFeatures] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[Any]:
        """The class labels in output order; empty for regression."""
        return list(self.target.classes_) if self.task != "regression" else []

    @property
    def columns(self) -> list[str]:
        """The input columns the model reads, in the table's order."""
        tabular = [c["name"] for c in self.inputs.columns]
        known = {*tabular, *self.text, *self.images}
        ordered = [c for c in self.order if c in known]
        return ordered + [c for c in [*tabular, *self.text, *self.images] if c not in ordered]

    @property
    def layout(self) -> list[dict[str, Any]]:
        """The blocks of the model input, in order: what each column range holds.

        Every block has ``name``, ``kind`` (``tabular``, ``text`` or ``image``), ``start``
        and ``width``; tabular blocks add ``n_numeric`` and ``cardinalities``, text blocks
        ``vocab_size`` and ``length``, image blocks ``shape`` ([C, H, W]).
        """
        blocks: list[dict[str, Any]] = []
        n_numeric, cards = self.inputs.n_numeric_, list(self.inputs.cardinalities_)
        if n_numeric + len(cards):
            blocks.append({"name": "tabular", "kind": "tabular", "start": 0,
                           "width": n_numeric + len(cards), "n_numeric": n_numeric,
                           "cardinalities": cards})
        start = n_numeric + len(cards)
        for name, text in self.text.items():
            blocks.append({"name": name, "kind": "text", "start": start, "width": text.length_,
                           "vocab_size": text.vocab_size_, "length": text.length_})
            start += text.length_
        for name, image in self.images.items():
            width = math.prod(image.shape_)
            blocks.append({"name": name, "kind": "image", "start": start, "width": width,
                           "shape": list(image.shape_)})
            start += width
        return blocks

    def frame_of(self, rows: Any) -> pd.DataFrame:
        """Rows to predict as a table: a DataFrame, a list of dicts, a 2-D array in column
        order; for a model with one input column a list of its values (texts, image paths or
        bytes), and for one image column an array of images, (N, H, W) or (N, H, W, C)."""
        columns = self.columns
        if (isinstance(rows, np.ndarray) and rows.ndim in (3, 4) and len(columns) == 1
                and columns[0] in self.images):
            return pd.DataFrame({columns[0]: arrays_to_cells(rows)})
        return rows_to_frame(rows, columns)

    def validate_input(self, frame: pd.DataFrame, *, target: str | None = None) -> pd.DataFrame:
        """Check raw rows before prediction; return their input columns in training order.

        Raises:
            DataError: a missing or unexpected column, or a bad value, naming column and row.
        """
        media = [*self.text, *self.images]
        if not media:
            return self.inputs.validate_input(frame, target=target)
        missing = [c for c in media if c not in frame.columns]
        if missing:
            raise DataError(f"input has no column {missing[0]!r}; the model expects "
                            f"{', '.join(self.columns)}")
        self.inputs.validate_input(frame.drop(columns=media), target=target)
        for name in self.text:
            check_text(frame[name], name)
        return frame[self.columns]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The model input of raw rows: float32 (N, F), laid out as `layout` says."""
        x = self.inputs.transform(frame)
        if not self.text and not self.images:
            return x
        blocks = [x, *(t.transform(frame) for t in self.text.values()),
                  *(i.transform(frame) for i in self.images.values())]
        return np.concatenate(blocks, axis=1, dtype=np.float32)

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
            "text": {name: text.to_json() for name, text in self.text.items()},
            "images": {name: image.to_json() for name, image in self.images.items()},
            "order": list(self.order),
            "layout": self.layout,
            "target": self.target.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FittedFeatures:
        version = data.get("version")
        if version not in (1, FORMAT_VERSION):
            raise RunDirError(
                f"features.json has format version {version!r}, this dlpipe reads version "
                f"{FORMAT_VERSION}; refit it with `dlpipe features RUN_DIR`"
            )
        if data.get("text"):
            from dlpipe.features.text import TextFeatures
        return cls(
            inputs=TabularFeatures.from_json(data["inputs"]),
            target=TargetEncoder.from_json(data["target"]),
            task=data["task"],
            text={k: TextFeatures.from_json(v) for k, v in data.get("text", {}).items()},
            images={k: ImageFeatures.from_json(v) for k, v in data.get("images", {}).items()},
            order=list(data.get("order", [])),
        )


def encoders(schema: Mapping[str, Any], section: FeaturesConfig,
             tabular: Sequence[Mapping[str, Any]]) -> tuple[TabularFeatures, TargetEncoder]:
    """The unfitted tabular transformer (of the `tabular` columns) and target encoder that
    `schema` and the features section describe."""
    inputs = TabularFeatures(
        tabular,
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
    return inputs, target


def fit_features(
    schema: Mapping[str, Any], section: FeaturesConfig, train: pd.DataFrame
) -> FittedFeatures:
    """Fit the inputs and the target described by `schema` on the training rows `train`.

    The stage calls this on the train split; k-fold evaluation calls it on each fold.
    """
    tabular = [c for c in schema["columns"] if c["kind"] not in MEDIA_KINDS]
    ts, ims = section.text, section.image
    if any(c["kind"] == "text" for c in schema["columns"]):
        from dlpipe.features.text import TextFeatures
    text = {c["name"]: TextFeatures(
        c["name"], tokenizer=ts.tokenizer, lowercase=ts.lowercase, pattern=ts.pattern,
        min_frequency=ts.min_frequency, max_vocab=ts.max_vocab, max_length=ts.max_length,
        length_percentile=ts.length_percentile, truncation=ts.truncation)
        for c in schema["columns"] if c["kind"] == "text"}
    images = {c["name"]: ImageFeatures(
        c["name"], size=ims.size, channels=ims.channels, scale=ims.scale,
        normalize=ims.normalize)
        for c in schema["columns"] if c["kind"] == "image"}
    inputs, target = encoders(schema, section, tabular)
    if schema["target"] not in train.columns:
        raise RunDirError(f"the train split has no target column {schema['target']!r}; "
                          f"rerun `dlpipe data RUN_DIR`")
    inputs.fit(train)
    for transformer in [*text.values(), *images.values()]:
        transformer.fit(train)
    target.fit(train[schema["target"]])
    return FittedFeatures(inputs=inputs, target=target, task=schema["task"], text=text,
                          images=images, order=[c["name"] for c in schema["columns"]])


def fit_features_stream(
    schema: Mapping[str, Any], section: FeaturesConfig, chunks: Iterable[pd.DataFrame],
    *, seed: int = 0,
) -> FittedFeatures:
    """`fit_features` in one pass over `chunks` (the train split, target column included).

    Each chunk is folded in with `partial_fit`; memory is a chunk plus the running state.
    Tabular columns only. Counts, means, variances, min/max, categories, indicators and the
    target are exact; the numeric median / most_frequent fills and robust scaling come from
    a seeded sample of 100,000 values per column (`dlpipe.features.stream`).

    Raises:
        DataError: a text or image column, an empty stream, or what `fit_features` raises.
        RunDirError: a chunk without the target column.
    """
    from dlpipe.features.stream import fit_tabular_stream

    inputs, target = fit_tabular_stream(*encoders(schema, section, schema["columns"]), chunks,
                                        schema=schema, seed=seed)
    return FittedFeatures(inputs=inputs, target=target, task=schema["task"],
                          order=[c["name"] for c in schema["columns"]])


def run(cfg: PipelineConfig, rundir: RunDir) -> FittedFeatures:
    """Fit on the train split only and write features.json.

    A streaming run (`data.stream: true`) is fitted in one pass over the train split's
    chunks, and every split is then transformed once into prepared/ (`features.prepared`).
    """
    schema = rundir.read_json(runs.SCHEMA)
    if cfg.data.stream:
        from dlpipe.features.prepared import prepare

        chunks = rundir.iter_split("train", cfg.data.chunk_rows)
        fitted = fit_features_stream(schema, cfg.features, chunks, seed=cfg.seed)
        prepare(rundir, fitted, cfg.data.chunk_rows)
        rundir.write_json(runs.FEATURES, fitted.to_json())
        return fitted
    fitted = fit_features(schema, cfg.features, rundir.read_split("train"))
    rundir.write_json(runs.FEATURES, fitted.to_json())
    return fitted


def load(rundir: RunDir) -> FittedFeatures:
    """Read the fitted features of a run (features.json)."""
    return FittedFeatures.from_json(rundir.read_json(runs.FEATURES))
