"""The model-input matrix of a table (`TabularFeatures`) and the target encoding (`TargetEncoder`).

Layout of the float32 (N, F) matrix (docs/CONTRACTS.md)::

    [ numeric (scaled) | binary 0/1 | one-hot | missing indicators | embedding indices ]
      └──────────────────── n_numeric_ columns ────────────────────┘  └ cardinalities_ ┘
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from dlpipe._running import RESERVOIR_SIZE, Moments
from dlpipe.data._messages import beyond_float32, beyond_float32_text
from dlpipe.errors import ConfigError, DataError, suggest
from dlpipe.features.base import (
    as_objects,
    check_fitted,
    describe_columns,
    json_scalar,
    plain,
    require_columns,
    sorted_values,
    to_float,
)
from dlpipe.features.categorical import ENCODINGS, UNSEEN, BinaryEncoder, CategoricalEncoder
from dlpipe.features.numeric import SCALINGS, NumericTransformer

KINDS = ("numeric", "categorical", "binary")
TASKS = ("binary", "multiclass", "regression")

# Fill strategies per kind; `drop` (rows dropped by the data stage) falls back at predict
# time to the kind's default: the mean, the most frequent value, or the unseen bucket.
_STRATEGIES = {
    "numeric": ("mean", "median", "most_frequent", "constant", "drop"),
    "categorical": ("most_frequent", "constant", "drop"),
}
_PARTS = ("numeric", "binary", "onehot", "embedding")
_LOADERS = {
    "numeric": NumericTransformer,
    "binary": BinaryEncoder,
    "onehot": CategoricalEncoder,
    "embedding": CategoricalEncoder,
}


class TabularFeatures:
    """Turn a table's input columns into the model's float32 (N, F) matrix.

    Args:
        columns: schema.json's ``columns``: ``[{"name", "kind", "dtype"}, ...]`` in table order.
        numeric: scaling of numeric columns (``standardize``, ``minmax``, ``robust``, ``none``).
        categorical: ``onehot`` or ``embedding`` for categorical columns.
        overrides: per-column scaling or encoding (``features.columns``); an encoding on a
            binary column makes it categorical.
        min_frequency: categories seen fewer times in training go to the unseen bucket.
        unseen: ``bucket`` or ``error`` for a category never seen in training.
        missing: schema.json's ``missing``: fill strategy per column (numeric default
            ``mean``, binary ``most_frequent``, categorical: the unseen bucket).
        fill_value: the value for the ``constant`` strategy.
        indicator: add a 0/1 ``<name>_missing`` column for each column with missing
            training values.
        clip: schema.json's ``clip``: ``{column: [low, high]}`` for numeric columns.

    Example:
        >>> features = TabularFeatures(schema["columns"], missing=schema["missing"])
        >>> x = features.fit(train).transform(test)    # (N, F) float32
        >>> features.n_numeric_, features.cardinalities_, features.feature_names_[:2]
    """

    def __init__(
        self,
        columns: Sequence[Mapping[str, Any]],
        *,
        numeric: str = "standardize",
        categorical: str = "onehot",
        overrides: Mapping[str, str] | None = None,
        min_frequency: int = 1,
        unseen: str = "bucket",
        missing: Mapping[str, str] | None = None,
        fill_value: float | str | None = None,
        indicator: bool = False,
        clip: Mapping[str, Sequence[float | None]] | None = None,
    ) -> None:
        self.columns = columns
        self.numeric = numeric
        self.categorical = categorical
        self.overrides = overrides
        self.min_frequency = min_frequency
        self.unseen = unseen
        self.missing = missing
        self.fill_value = fill_value
        self.indicator = indicator
        self.clip = clip

    # -- fit / transform ---------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame) -> Self:
        """Fit every encoder on the training rows `frame`; sets the attributes ending in `_`."""
        self.__dict__.pop("_stream_missing", None)  # a later partial_fit starts afresh
        plan = self._plan()
        require_columns(frame, self.columns)
        if len(frame) == 0:
            raise DataError("the training split has no rows; features are fitted on it")
        parts = self._parts(plan)
        for part in parts.values():
            part.fit(frame)
        self.parts_ = parts
        self.indicators_ = (
            [c["name"] for c in self.columns if frame[c["name"]].isna().any()]
            if self.indicator else []
        )
        self._set_layout()
        return self

    def partial_fit(self, frame: pd.DataFrame, *, seed: int = 0,
                    reservoir_size: int = RESERVOIR_SIZE) -> Self:
        """Fold one chunk of training rows into the fit, as scikit-learn's `partial_fit`.

        After every call the fitted attributes, the layout and `to_json` are those of `fit`
        on all the rows seen so far: exactly for counts, means, variances, min/max,
        categories and indicators; approximately for the numeric ``median`` and
        ``most_frequent`` fills and ``robust`` scaling, which come from a seeded sample of
        at most `reservoir_size` values per column (see `NumericTransformer.partial_fit`).
        Call `check_complete` after the last chunk.

        Args:
            frame: the next chunk of training rows; an empty chunk changes nothing.
            seed: seeds the numeric samples (first call only, as `reservoir_size`).
            reservoir_size: values sampled per numeric column for the approximate statistics.

        Raises:
            DataError: a missing column, a non-numeric value, a third value in a binary
                column (rows are counted within the chunk).

        Example:
            >>> features = TabularFeatures(schema["columns"], missing=schema["missing"])
            >>> for chunk in chunks:
            ...     features.partial_fit(chunk)
            >>> features.check_complete()
        """
        plan = self._plan()
        require_columns(frame, self.columns)
        if len(frame) == 0:
            return self
        if "_stream_missing" not in self.__dict__:
            self.parts_ = self._parts(plan)
            self._stream_missing: set[str] = set()
        for part in self.parts_.values():
            if isinstance(part, NumericTransformer):
                part.partial_fit(frame, seed=seed, reservoir_size=reservoir_size)
            else:
                part.partial_fit(frame)
        names = [c["name"] for c in self.columns]
        self._stream_missing.update(c for c in names if frame[c].isna().any())
        self.indicators_ = ([c for c in names if c in self._stream_missing]
                            if self.indicator else [])
        self._set_layout()
        return self

    def check_complete(self) -> None:
        """After the last `partial_fit`: refuse what `fit` refuses only on the whole split.

        Raises:
            NotFittedError: no chunk had a row.
            DataError: a numeric or binary column with no value in any chunk.
        """
        check_fitted(self, "parts_")
        for part in self.parts_.values():
            if hasattr(part, "check_complete"):
                part.check_complete()

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the float32 (N, F) model input for the rows of `frame`.

        Columns other than the schema's (target, ids) are ignored; use `validate_input` to
        refuse them.

        Raises:
            DataError: a missing column, a non-numeric value in a numeric column, or (with
                ``unseen="error"``) an unseen category, each naming the column and row.
        """
        check_fitted(self, "parts_")
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        require_columns(frame, self.columns)
        blocks = [self.parts_[p].transform(frame) for p in _PARTS[:3] if p in self.parts_]
        if self.indicators_:
            blocks.append(frame[self.indicators_].isna().to_numpy(dtype=np.float32))
        if "embedding" in self.parts_:
            blocks.append(self.parts_["embedding"].transform(frame))
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1, dtype=np.float32)  # (N, F)

    def validate_input(self, frame: pd.DataFrame, *, target: str | None = None) -> pd.DataFrame:
        """Check user data before prediction; return its columns in training order.

        Raises:
            DataError: a missing column (listing the expected ``name: kind`` schema), an
                extra column (the `target` column is dropped silently), or a non-numeric
                value in a numeric column (naming the column and the first bad row).
        """
        require_columns(frame, self.columns)
        expected = [c["name"] for c in self.columns]
        known = {*expected, target}
        extra = [c for c in frame.columns if c not in known]
        if extra:
            raise DataError(
                f"input has {len(extra)} unexpected column(s): {', '.join(map(str, extra))}; "
                f"the model expects {describe_columns(self.columns)}; remove the others"
            )
        for column in self.columns:
            if column["kind"] == "numeric":
                to_float(frame[column["name"]], column["name"])
        return frame[expected]

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Constructor arguments and fitted state as plain JSON data."""
        check_fitted(self, "parts_")
        return {
            "params": {
                "columns": plain(list(self.columns)),
                "numeric": self.numeric,
                "categorical": self.categorical,
                "overrides": plain(self.overrides),
                "min_frequency": int(self.min_frequency),
                "unseen": self.unseen,
                "missing": plain(self.missing),
                "fill_value": json_scalar(self.fill_value),
                "indicator": bool(self.indicator),
                "clip": plain(self.clip),
            },
            "fitted": {
                "parts": {name: part.to_json() for name, part in self.parts_.items()},
                "indicators": self.indicators_,
                "feature_names": self.feature_names_,
                "n_numeric": self.n_numeric_,
                "cardinalities": self.cardinalities_,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a fitted TabularFeatures from `to_json`'s output."""
        obj = cls(**data["params"])
        fitted = data["fitted"]
        obj.parts_ = {name: _LOADERS[name].from_json(part)
                      for name, part in fitted["parts"].items()}
        obj.indicators_ = list(fitted["indicators"])
        obj._set_layout()
        return obj

    # -- helpers ---------------------------------------------------------------------------------

    def _parts(self, plan: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
        """The unfitted encoders of the plan, by part name (`_PARTS`)."""
        missing, common = dict(self.missing or {}), {"fill_value": self.fill_value}
        parts: dict[str, Any] = {}
        if plan["numeric"]:
            names = [name for name, _ in plan["numeric"]]
            parts["numeric"] = NumericTransformer(
                names, scaling=dict(plan["numeric"]), missing=_subset(missing, names),
                clip=_subset(dict(self.clip or {}), names), **common)
        if plan["binary"]:
            names = [name for name, _ in plan["binary"]]
            parts["binary"] = BinaryEncoder(
                names, unseen=self.unseen, missing=_subset(missing, names), **common)
        for encoding in ENCODINGS:
            names = [name for name, setting in plan["categorical"] if setting == encoding]
            if names:
                strategies = {k: "none" if v == "drop" else v
                              for k, v in _subset(missing, names).items()}
                parts[encoding] = CategoricalEncoder(
                    names, encoding=encoding, min_frequency=self.min_frequency,
                    unseen=self.unseen, missing=strategies, **common)
        return parts

    def _set_layout(self) -> None:
        names = [n for p in _PARTS[:3] if p in self.parts_ for n in self.parts_[p].feature_names_]
        names += [f"{c}_missing" for c in self.indicators_]
        self.n_numeric_ = len(names)
        embedding = self.parts_.get("embedding")
        self.feature_names_ = names + (embedding.feature_names_ if embedding else [])
        self.cardinalities_ = list(embedding.cardinalities_) if embedding else []

    def _plan(self) -> dict[str, list[tuple[str, str]]]:
        """Check the settings; group the columns as numeric / binary / categorical."""
        problems = []
        if self.numeric not in SCALINGS:
            problems.append(("features.numeric", _choice(self.numeric, SCALINGS)))
        if self.categorical not in ENCODINGS:
            problems.append(("features.categorical", _choice(self.categorical, ENCODINGS)))
        if self.unseen not in UNSEEN:
            problems.append(("features.unseen", _choice(self.unseen, UNSEEN)))
        if not isinstance(self.min_frequency, int) or self.min_frequency < 1:
            problems.append(("features.min_frequency",
                             f"must be an integer of at least 1; got {self.min_frequency!r}"))
        kinds = {c["name"]: c["kind"] for c in self.columns}
        overrides = dict(self.overrides or {})
        for name, setting in overrides.items():
            if name not in kinds:
                problems.append((f"features.columns.{name}", f"unknown column {name!r}. "
                                 f"{suggest(name, kinds)}"))
            elif (message := _override_problem(name, kinds[name], setting)) is not None:
                problems.append((f"features.columns.{name}", message))
        for name, strategy in (self.missing or {}).items():
            allowed = _STRATEGIES["numeric" if kinds.get(name) == "numeric" else "categorical"]
            if strategy not in allowed:
                problems.append((f"data.clean.missing.columns.{name}",
                                 f"strategy {strategy!r} does not apply to {name!r} "
                                 f"({kinds.get(name, 'not an input column')}); use one of "
                                 f"{', '.join(allowed)}"))
        if problems:
            raise ConfigError(problems)
        plan: dict[str, list[tuple[str, str]]] = {"numeric": [], "binary": [], "categorical": []}
        for name, kind in kinds.items():
            if kind not in KINDS:
                raise DataError(f"schema.json: column {name!r} has kind {kind!r}; tabular "
                                f"features handle {', '.join(KINDS)}")
            setting = overrides.get(name)
            if kind == "binary" and setting in ENCODINGS:
                kind = "categorical"
            default = self.numeric if kind == "numeric" else self.categorical
            plan[kind].append((name, setting or default))
        return plan


class TargetEncoder:
    """Encode the target: class labels → int64 indices, or a float32 (standardized) value.

    Args:
        task: ``binary``, ``multiclass`` or ``regression``.
        classes: the class labels in index order (schema.json's ``classes``); default the
            sorted labels seen by `fit`. For ``binary`` the second class is the positive one.
        scale: standardize a regression target (`mean_`, `scale_`); predictions are mapped
            back by `inverse_transform`.
        name: the target column, for error messages.

    Example:
        >>> encoder = TargetEncoder("binary", classes=["no", "yes"]).fit(train["label"])
        >>> encoder.transform(["yes", "no"]).tolist(), encoder.inverse_transform([1]).tolist()
        ([1, 0], ['yes'])
    """

    def __init__(self, task: str, *, classes: Sequence[Any] | None = None, scale: bool = True,
                 name: str = "target") -> None:
        self.task = task
        self.classes = classes
        self.scale = scale
        self.name = name

    def fit(self, y: Any) -> Self:
        """Learn `classes_` (classification) or `mean_` / `scale_` (regression) from `y`."""
        self.__dict__.pop("_stream", None)  # a later partial_fit starts afresh
        if self.task not in TASKS:
            raise ConfigError([("data.task", _choice(self.task, TASKS))])
        y = _series(y)
        if self.task == "regression":
            values = self._floats(y)
            if self.scale and len(values):
                std = float(values.std())
                self.mean_, self.scale_ = float(values.mean()), (std if std > 0 else 1.0)
            else:
                self.mean_, self.scale_ = 0.0, 1.0
            return self
        if self.classes:
            self.classes_ = [json_scalar(c) for c in self.classes]
        else:
            self.classes_ = sorted_values(as_objects(y).dropna().unique())
        self._check_classes(complete=True)
        self.transform(y)  # every training label must be known
        return self

    def partial_fit(self, y: Any) -> Self:
        """Fold one chunk of target values into the fit, as scikit-learn's `partial_fit`.

        Exact: after every call `mean_` / `scale_` (count, mean and variance combined with
        Chan's formulas in float64) or `classes_` (the labels seen so far, or the given
        `classes`) are those of `fit` on all the values seen so far. A binary task that has
        seen one label so far is refused only by `check_complete`, after the last chunk.

        Raises:
            DataError: a missing, unknown or non-numeric value (row counted within the
                chunk), or a third label for a binary task.
        """
        if self.task not in TASKS:
            raise ConfigError([("data.task", _choice(self.task, TASKS))])
        y = _series(y)
        if len(y) == 0:
            return self
        if self.task == "regression":
            moments = self.__dict__.setdefault("_stream", Moments(1))
            moments.update(self._floats(y)[:, None])
            std = float(np.sqrt(moments.var[0]))
            self.mean_, self.scale_ = ((float(moments.mean[0]), std if std > 0 else 1.0)
                                       if self.scale else (0.0, 1.0))
            return self
        if self.classes:
            self.classes_ = [json_scalar(c) for c in self.classes]
        else:
            labels = self.__dict__.setdefault("_stream", set())
            labels.update(json_scalar(v) for v in as_objects(y).dropna().unique())
            self.classes_ = sorted_values(labels)
        self._check_classes(complete=False)
        self.transform(y)  # every training label must be known
        return self

    def check_complete(self) -> None:
        """After the last `partial_fit`: refuse a binary task with fewer than 2 labels."""
        if self.task != "regression":
            check_fitted(self, "classes_")
            self._check_classes(complete=True)

    def _check_classes(self, *, complete: bool) -> None:
        n_classes = len(self.classes_)
        if self.task == "binary" and (n_classes > 2 or (complete and n_classes != 2)):
            raise DataError(f"target column {self.name!r}: a binary task needs 2 classes; got "
                            f"{n_classes} ({', '.join(map(str, self.classes_))})")

    def transform(self, y: Any) -> np.ndarray:
        """Return (N,) int64 class indices, or (N,) float32 (standardized) targets.

        Raises:
            DataError: a missing, unknown or non-numeric target value, naming its row.
        """
        y = _series(y)
        if self.task == "regression":
            check_fitted(self, "scale_")
            return ((self._floats(y) - self.mean_) / self.scale_).astype(np.float32)
        check_fitted(self, "classes_")
        values = as_objects(y)
        codes = pd.Index(self.classes_, dtype=object).get_indexer(values)
        bad = np.flatnonzero(codes < 0)
        if len(bad):
            row, more = int(bad[0]), f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            if values.iloc[row] is None:
                raise DataError(f"target column {self.name!r}, row {row}: missing value{more}; "
                                f"set data.clean.drop_missing_target: true to drop such rows")
            raise DataError(f"target column {self.name!r}, row {row}: unknown label "
                            f"{values.iloc[row]!r}{more}; known: "
                            f"{', '.join(map(str, self.classes_))}")
        return codes.astype(np.int64)

    def inverse_transform(self, encoded: Any) -> np.ndarray:
        """Map class indices back to labels, or model outputs back to the target's scale."""
        if self.task == "regression":
            check_fitted(self, "scale_")
            return np.asarray(encoded, dtype=np.float64) * self.scale_ + self.mean_
        check_fitted(self, "classes_")
        return np.asarray(self.classes_)[np.asarray(encoded, dtype=np.int64)]

    @property
    def n_outputs(self) -> int:
        """Width of the model's output: 1 for binary and regression, K for multiclass."""
        return len(self.classes_) if self.task == "multiclass" else 1

    def to_json(self) -> dict[str, Any]:
        fitted: dict[str, Any]
        if self.task == "regression":
            check_fitted(self, "scale_")
            fitted = {"mean": self.mean_, "scale": self.scale_}
        else:
            check_fitted(self, "classes_")
            fitted = {"classes": self.classes_}
        params = {"task": self.task, "classes": plain(self.classes), "scale": bool(self.scale),
                  "name": self.name}
        return {"params": params, "fitted": fitted}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        params = dict(data["params"])
        obj = cls(params.pop("task"), **params)
        fitted = data["fitted"]
        if obj.task == "regression":
            obj.mean_, obj.scale_ = float(fitted["mean"]), float(fitted["scale"])
        else:
            obj.classes_ = list(fitted["classes"])
        return obj

    def _floats(self, y: pd.Series) -> np.ndarray:
        values = to_float(y, self.name)
        bad = np.flatnonzero(~np.isfinite(values) | beyond_float32(values))
        if len(bad):
            row = int(bad[0])
            value = values[row]
            what = ("missing value" if np.isnan(value) else f"{value} is not a finite number"
                    if np.isinf(value) else beyond_float32_text(value))
            raise DataError(f"target column {self.name!r}, row {row}: {what}; set "
                            f"data.clean.drop_missing_target: true to drop such rows")
        return values


def _override_problem(name: str, kind: str, setting: str) -> str | None:
    if kind == "numeric" and setting not in SCALINGS:
        return (f"{setting!r} does not apply to numeric column {name!r}; use one of "
                f"{', '.join(SCALINGS)}, or set data.columns.{name}: categorical to encode it "
                f"as categories")
    if kind == "categorical" and setting not in ENCODINGS:
        return (f"{setting!r} does not apply to categorical column {name!r}; use one of "
                f"{', '.join(ENCODINGS)}")
    if kind == "binary" and setting not in ENCODINGS:
        return (f"{setting!r} does not apply to binary column {name!r}, which is encoded "
                f"0/1; use one of {', '.join(ENCODINGS)}, or set data.columns.{name}: numeric "
                f"to scale it")
    return None


def _choice(value: Any, allowed: Sequence[str]) -> str:
    return f"must be one of {', '.join(allowed)}; got {value!r}"


def _subset(mapping: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: mapping[name] for name in names if name in mapping}


def _series(y: Any) -> pd.Series:
    if isinstance(y, pd.Series):
        return y.reset_index(drop=True)
    return pd.Series(np.asarray(y) if not isinstance(y, list) else y)
