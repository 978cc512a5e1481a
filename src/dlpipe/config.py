"""The pipeline's configuration: one typed section per stage, validated before any work starts.

A YAML file maps onto `PipelineConfig`. Unknown keys are errors (with a did-you-mean), every
problem is reported at once with its dotted path, and each field's docstring becomes its
description in the JSON Schema that `dlpipe schema` prints. Components (model, optimizer,
loss, scheduler) are a registry `name` plus the builder's keyword arguments; those are
checked against the builder's signature by `pipeline.check`, so this module imports no stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlpipe.errors import ConfigError, suggest

Task = Literal["binary", "multiclass", "regression"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, fields document themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Component(BaseModel):
    """A registry name and the keyword arguments of its builder.

    The extra keys are the builder's kwargs; `pipeline.check` binds them to the builder's
    signature, so the builder is the single source of truth. A bare string is shorthand for
    ``{name: ...}``.
    """

    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)

    name: str
    """A registry key (`adamw`) or an import path to a builder (`my_pkg.module:function`)."""

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments: every key but `name` (and a section's own fields)."""
        own = set(type(self).model_fields)
        return {k: v for k, v in (self.model_extra or {}).items() if k not in own}


# -- data --------------------------------------------------------------------------------


class SourceConfig(Section):
    """Where the table comes from: a file, or a data set bundled with scikit-learn."""

    path: str | None = None
    """A CSV, Parquet, JSON Lines or .npz file, relative to the config file's folder."""

    format: Literal["auto", "csv", "parquet", "jsonl", "npz"] = "auto"
    """File format; `auto` goes by the file's extension."""

    builtin: (
        Literal[
            "breast_cancer", "wine", "iris", "diabetes", "digits",
            "make_classification", "make_regression",
        ]
        | None
    ) = None
    """A data set that ships with scikit-learn, or one of its generators (target: `target`)."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the generator (`n_samples`, `n_features`, `random_state`, ...)."""

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("give exactly one of `path` or `builtin`")
        if self.params and self.builtin not in ("make_classification", "make_regression"):
            raise ValueError("`params` only applies to builtin make_classification/make_regression")
        return self


MissingStrategy = Literal["mean", "median", "most_frequent", "constant", "drop"]


class MissingConfig(Section):
    """What to do with missing values in input columns (the target has its own switch)."""

    numeric: MissingStrategy = "mean"
    """Strategy for numeric columns; fill statistics are fitted on the training split."""

    categorical: Literal["most_frequent", "constant", "drop"] = "most_frequent"
    """Strategy for categorical and binary columns."""

    columns: dict[str, MissingStrategy] = Field(default_factory=dict)
    """Per-column strategies that override the per-type ones."""

    fill_value: float | str | None = None
    """The value for `constant` (default 0 for numeric columns, `"missing"` for categorical)."""

    indicator: bool = False
    """Add a 0/1 column `<name>_missing` for every column that had missing training values."""


class OutlierConfig(Section):
    """Outlier handling for numeric columns, with thresholds fitted on the training split."""

    method: Literal["iqr", "zscore"] = "iqr"
    """`iqr`: outside [Q1 - t·IQR, Q3 + t·IQR]; `zscore`: |x - mean| > t·std."""

    action: Literal["clip", "drop"] = "clip"
    """`clip` the value to the bounds (everywhere, also at predict time) or `drop` the
    training row (validation and test rows are never dropped, so evaluation stays honest)."""

    threshold: float | None = Field(default=None, gt=0)
    """t above; default 1.5 for `iqr`, 3.0 for `zscore`."""

    columns: list[str] | None = None
    """Columns to treat; default every numeric column."""


class CleanConfig(Section):
    """Cleaning; every action is counted in data_profile.json."""

    drop_duplicates: bool = True
    """Drop exact duplicate rows before splitting, so no row is in two splits."""

    drop_missing_target: bool = False
    """Drop rows whose target is missing or not finite, instead of failing."""

    drop_constant: bool = True
    """Drop input columns that are constant on the training split (with a warning)."""

    missing: MissingConfig = MissingConfig()
    """Missing values in input columns."""

    outliers: OutlierConfig | None = None
    """Outlier handling; off when absent."""


class SplitConfig(Section):
    """How rows are divided into train / val / test."""

    method: Literal["auto", "random", "stratified", "group", "time", "column"] = "auto"
    """`auto`: stratified for classification, random for regression. `group` keeps each value of
    `group_column` in one split; `time` orders by `time_column` (train earliest); `column`
    reads the split name of each row from `column`."""

    val: float = Field(default=0.15, ge=0, lt=1)
    """Fraction of rows for validation (early stopping, model selection)."""

    test: float = Field(default=0.15, ge=0, lt=1)
    """Fraction of rows held out for the final test metrics."""

    seed: int | None = None
    """Seed of the split; default the pipeline's `seed`."""

    group_column: str | None = None
    """Column of group ids, for `group`."""

    time_column: str | None = None
    """Column to order by, for `time`."""

    column: str | None = None
    """Column naming each row's split (`train`, `val`, `test`), for `column`."""

    @model_validator(mode="after")
    def _fractions_and_columns(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be below 1; got {self.val} + {self.test}")
        needs = {"group": "group_column", "time": "time_column", "column": "column"}
        field = needs.get(self.method)
        if field and getattr(self, field) is None:
            raise ValueError(f"method {self.method!r} needs `{field}`")
        return self


class LeakageConfig(Section):
    """The leakage guard, run after splitting. Each finding fails the run unless allowed."""

    allow_duplicates: bool = False
    """Allow identical input rows in two different splits."""

    allow_group_overlap: bool = False
    """Allow a value of `split.group_column` in two splits."""

    allow_time_overlap: bool = False
    """Allow validation/test rows earlier than the latest training row under a time split."""


ColumnKind = Literal["numeric", "categorical", "binary", "ignore"]


class DataConfig(Section):
    """Loading, cleaning, splitting and resampling: everything before features are fitted."""

    source: SourceConfig | None = None
    """Where the table comes from. May be omitted when data is passed from Python."""

    target: str = "target"
    """The column to predict."""

    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    """`auto` infers it from the target: text, bool or few integer values → classification."""

    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    """Override the inferred kind of a column; `ignore` drops it."""

    drop_columns: list[str] = Field(default_factory=list)
    """Columns dropped on load (ids, leaky fields)."""

    clean: CleanConfig = CleanConfig()
    """Duplicates, missing values, outliers, constant columns."""

    split: SplitConfig = SplitConfig()
    """Train / val / test split."""

    leakage: LeakageConfig = LeakageConfig()
    """Checks across splits after splitting."""

    imbalance: Literal["none", "oversample", "undersample", "class_weight"] = "none"
    """Class imbalance, on the training split only: resample it, or weight the loss."""


# -- features, model ---------------------------------------------------------------------

NumericScaling = Literal["standardize", "minmax", "robust", "none"]
CategoricalEncoding = Literal["onehot", "embedding"]


class FeaturesConfig(Section):
    """Preprocessing fitted on the training split only and saved as features.json."""

    numeric: NumericScaling = "standardize"
    """Scaling of numeric columns."""

    categorical: CategoricalEncoding = "onehot"
    """One-hot columns, or integer indices fed to embeddings in the model."""

    columns: dict[str, NumericScaling | CategoricalEncoding] = Field(default_factory=dict)
    """Per-column overrides of `numeric` / `categorical`."""

    min_frequency: int = Field(default=1, ge=1)
    """Categories seen fewer times in training go to the unseen bucket."""

    unseen: Literal["bucket", "error"] = "bucket"
    """A category not seen in training: map it to the unseen bucket, or fail (naming row)."""

    scale_target: bool = True
    """Standardize a regression target for training; predictions are mapped back."""


class ModelConfig(Component):
    """The network: a name in the model registry plus its builder's keyword arguments."""

    name: str = "mlp"
    """`mlp`, `linear`, or `my_pkg.module:function` returning an `nn.Module`."""

    init: str | None = None
    """Weight initialisation scheme (`xavier_uniform`, `kaiming_normal`, ...); default PyTorch's."""


# -- train ------------------------------------------------------------------------------


class EarlyStoppingConfig(Section):
    """Stop when the monitored value stops improving."""

    monitor: str = "val_loss"
    """`val_loss` or `val_<metric>` (e.g. `val_accuracy`)."""

    mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower or higher is better; `auto` knows losses and errors are lower-better."""

    patience: int = Field(default=5, ge=1)
    """Epochs without improvement before stopping."""

    min_delta: float = Field(default=0.0, ge=0)
    """Smallest change that counts as an improvement."""

    restore_best: bool = True
    """Deliver the best epoch's weights rather than the last epoch's."""


class EmaConfig(Section):
    """Exponential moving average of the weights, evaluated next to the raw weights."""

    decay: float = Field(default=0.999, gt=0, lt=1)
    """Weight of the running average at each step."""


class TrainConfig(Section):
    """The training loop: optimizer, loss, schedule, regularization, callbacks, checkpoints."""

    epochs: int = Field(default=20, ge=1)
    """Passes over the training split."""

    batch_size: int = Field(default=64, ge=1)
    """Examples per forward pass."""

    optimizer: Component = Component(name="adamw", lr=1e-3)
    """Any name in OPTIMIZERS (`sgd`, `rmsprop`, `adam`, `adamw`, `adagrad`, `adadelta`)."""

    loss: Component | None = None
    """Any name in LOSSES; default the task's natural loss (binary / categorical
    cross-entropy, MSE)."""

    scheduler: Component | None = None
    """Any name in SCHEDULERS (`step`, `cosine`, `onecycle`, `plateau`, `exponential`)."""

    warmup_epochs: int = Field(default=0, ge=0)
    """Linear learning-rate warmup before the scheduler takes over."""

    l1: float = Field(default=0.0, ge=0)
    """L1 penalty on weights (not biases or norm parameters), added to the loss."""

    l2: float = Field(default=0.0, ge=0)
    """L2 penalty on weights (not biases or norm parameters), added to the loss."""

    grad_clip: float | None = Field(default=None, gt=0)
    """Clip the global gradient norm to this value."""

    grad_accumulation: int = Field(default=1, ge=1)
    """Batches whose gradients are summed before each optimizer step."""

    early_stopping: EarlyStoppingConfig | None = None
    """Early stopping; off when absent."""

    ema: EmaConfig | None = None
    """Exponential moving average of the weights; off when absent."""

    keep: Literal["best", "last"] = "best"
    """Deliver the best epoch's weights (by the early-stopping monitor, or val_loss) or the last."""

    deterministic: bool = False
    """Use only deterministic algorithms (`torch.use_deterministic_algorithms`)."""

    device: str = "cpu"
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto`."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision: forward passes under bf16 / fp16 autocast (fp16 with a gradient
    scaler); weights and optimizer state stay fp32."""

    threads: int | None = Field(default=None, ge=1)
    """CPU threads for PyTorch; default PyTorch's choice."""

    checkpoint_every: int = Field(default=1, ge=1)
    """Write a resumable checkpoint every this many epochs."""

    progress: Literal["auto", "always", "never"] = "auto"
    """Progress bar: `auto` shows it only on a terminal."""


class EvaluateConfig(Section):
    """Metrics on the validation and test splits, and optional k-fold cross-validation."""

    metrics: list[str] | None = None
    """Extra metric names on top of the task's standard set."""

    threshold: float | Literal["optimize"] = 0.5
    """Binary decision threshold; `optimize` picks the one maximising F1 on validation."""

    top_k: int = Field(default=3, ge=1)
    """k of the multiclass top-k accuracy."""

    cv_folds: int = Field(default=0, ge=0)
    """k-fold cross-validation on train+val when ≥ 2, reported as mean ± std."""

    @model_validator(mode="after")
    def _folds(self) -> EvaluateConfig:
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (off) or at least 2; got 1")
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1; got {self.threshold}")
        return self


class PipelineConfig(Section):
    """A whole pipeline: one section per stage."""

    name: str | None = None
    """Run name; default the config file's name."""

    seed: int = 0
    """Seed of everything random: split, initialisation, shuffling, dropout."""

    data: DataConfig
    """Loading, cleaning, splitting."""

    features: FeaturesConfig = FeaturesConfig()
    """Preprocessing fitted on the training split."""

    model: ModelConfig = ModelConfig()
    """The network."""

    train: TrainConfig = TrainConfig()
    """The training loop."""

    evaluate: EvaluateConfig = EvaluateConfig()
    """Metrics."""


# -- loading ------------------------------------------------------------------------------


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | PipelineConfig,
    overrides: Iterable[str] = (),
) -> PipelineConfig:
    """Read and validate a pipeline config; apply `a.b.c=VALUE` overrides first.

    Relative data paths are resolved against the config file's folder.

    Raises:
        ConfigError: listing every problem with its dotted path.

    Example:
        >>> cfg = load_config("examples/quickstart.yaml", ["train.epochs=5"])
    """
    if isinstance(source, PipelineConfig):
        raw: dict[str, Any] = source.model_dump(exclude_unset=True)
        base = None
    elif isinstance(source, Mapping):
        raw, base = _plain(source), None
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError([("", f"config file {str(path)!r} does not exist")])
        try:
            raw = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([("", f"{path} is not valid YAML: {exc}")]) from None
        if not isinstance(raw, dict):
            raise ConfigError([("", f"{path} must hold a mapping of sections; got "
                                    f"{type(raw).__name__}")])
        raw.setdefault("name", path.stem)
        base = path.parent
    raw = apply_overrides(raw, overrides)
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, raw)) from None
    if base is not None and config.data.source is not None and config.data.source.path:
        resolved = _resolve(config.data.source.path, base)
        config = config.model_copy(update={"data": config.data.model_copy(update={
            "source": config.data.source.model_copy(update={"path": resolved})})})
    return config


def to_dict(config: PipelineConfig) -> dict[str, Any]:
    """The config as plain data (what config.yaml holds), defaults included."""
    return config.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, with each field's docstring as its description."""
    return PipelineConfig.model_json_schema()


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set `a.b.c=VALUE` items (VALUE parsed as YAML) into a copy of `raw`."""
    raw = _plain(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError([("--set", f"expected KEY=VALUE (e.g. train.epochs=5); "
                                         f"got {item!r}")])
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:  # not in the file: start from the section's default
                child = _default_at(parts[: depth + 1])
                node[part] = child
            elif isinstance(child, str):  # bare component name: `loss: mse`
                child = {"name": child}
                node[part] = child
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError([(key, f"cannot set inside {where}, which is {child!r}")])
            node = child
        node[parts[-1]] = value
    return raw


def _default_at(loc: list[str]) -> dict[str, Any]:
    model: Any = PipelineConfig
    default: Any = None
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return {}
        default = field.get_default(call_default_factory=True)
        model = _model_in(field.annotation)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json", exclude_unset=False)
    return {}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _problems(exc: ValidationError, raw: Any) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = _user_path(err["loc"], raw, err["type"] == "missing")
        path = ".".join(loc)
        if err["type"] == "extra_forbidden":
            fields = _fields_at(loc[:-1])
            message = f"unknown key {loc[-1]!r}. {suggest(loc[-1], fields)}" if fields else (
                f"unknown key {loc[-1]!r}")
        elif err["type"] == "missing":
            message = "required field is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("value_error", "assertion_error"):
                message += f"; got {err['input']!r}"
        problems.append((path, message))
    # One message per path: unions report each failed branch, the first is the useful one.
    seen: dict[str, str] = {}
    for path, message in problems:
        seen.setdefault(path, message)
    return list(seen.items())


def _user_path(loc: tuple[Any, ...], raw: Any, missing: bool) -> list[str]:
    """Pydantic's error location in the user's keys. Union-branch tags ('float',
    'SourceConfig', "literal['x']") are not keys of the input, so walking the input drops them;
    only a missing field's name is kept though it is not in the input."""
    path, node = [], raw
    for depth, part in enumerate(loc):
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            node = node[part]
        elif not (missing and depth == len(loc) - 1):
            continue
        path.append(str(part))
    return path


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-3` (YAML 1.1 needs `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = PipelineConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
