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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

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
    """A CSV, Parquet, JSON Lines or .npz file, or a folder with one sub-folder per class of
    images or `.txt` files; relative to the config file's folder."""

    format: Literal["auto", "csv", "parquet", "jsonl", "npz", "images", "text"] = "auto"
    """File format; `auto` goes by the file's extension, or for a folder by what it holds."""

    encoding: str = "utf-8"
    """Text encoding of a CSV file (`latin-1`, `cp1252`, ...); bytes that are not text in it
    are an error naming the line and the byte."""

    sep: str = ","
    """Field separator of a CSV file: one character, e.g. `;`, `|` or a tab (`"\\t"`)."""

    builtin: (
        Literal[
            "breast_cancer", "wine", "iris", "diabetes", "digits",
            "make_classification", "make_regression", "reviews", "returns",
        ]
        | None
    ) = None
    """A data set that ships with scikit-learn, one of its generators, `reviews` (a generated
    sentiment corpus whose labels need word order; target `target`) or `returns` (orders with
    numeric, categorical, binary and text columns; target `returned`)."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the generator (`n_samples`, `n_features`, `random_state`, ...);
    `digits` takes `as_images: true` (8x8 images instead of 64 pixel columns); `reviews` and
    `returns` take `n` and `seed`."""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, latin-1, cp1252, "
                             f"utf-16") from None
        return value

    @field_validator("sep")
    @classmethod
    def _one_character(cls, value: str) -> str:
        from dlpipe._csv import separator

        return separator(value)

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("give exactly one of `path` or `builtin`")
        if self.params and self.builtin not in _TAKES_PARAMS:
            raise ValueError(f"`params` only applies to builtin {', '.join(_TAKES_PARAMS)}")
        return self


_TAKES_PARAMS = ("make_classification", "make_regression", "digits", "reviews", "returns")

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

    bad_images: Literal["error", "skip"] = "error"
    """An unreadable image: fail naming its path and row, or drop the row and count it."""


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


ColumnKind = Literal["numeric", "categorical", "binary", "text", "image", "ignore"]


class DataConfig(Section):
    """Loading, cleaning, splitting and resampling: everything before features are fitted."""

    source: SourceConfig | None = None
    """Where the table comes from. May be omitted when data is passed from Python."""

    target: str = "target"
    """The column to predict."""

    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    """`auto` infers it from the target: text, bool or few integer values → classification."""

    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    """Override the inferred kind of a column; `ignore` drops it. `text` (free text, tokenized)
    and `image` (paths, or image bytes) are inferred from the values when they are clear."""

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

    stream: bool = False
    """Read a Parquet (or CSV) file larger than memory in chunks instead of loading it: the
    split is decided row by row from a seeded hash (identical inputs always share a split),
    the features are fitted in one streaming pass, and training reads the prepared rows from
    disk through a shuffle buffer. Tabular columns only; see docs/STREAMING.md for what
    changes."""

    chunk_rows: int = Field(default=131_072, ge=1_000)
    """Rows per chunk when streaming (`stream: true`): memory grows with this, not the file."""

    def role_columns(self) -> dict[str, str]:
        """The columns that are not model inputs, by field path: the target and the split's
        own columns (group, time, split column)."""
        named = {"data.target": self.target, "data.split.group_column": self.split.group_column,
                 "data.split.time_column": self.split.time_column,
                 "data.split.column": self.split.column}
        return {path: column for path, column in named.items() if column is not None}


# -- features, model ---------------------------------------------------------------------

NumericScaling = Literal["standardize", "minmax", "robust", "none"]
CategoricalEncoding = Literal["onehot", "embedding"]


class TextFeaturesConfig(Section):
    """Tokenization of text columns, fitted on the training split (vocabulary or subwords)."""

    tokenizer: Literal["word", "bpe", "wordpiece"] = "word"
    """`word`: regex split into words; `bpe` / `wordpiece`: subwords trained with Hugging Face
    tokenizers."""

    lowercase: bool = True
    """Lowercase texts before tokenizing."""

    pattern: str = r"\w+|[^\w\s]"
    """Regular expression matching one word-level token."""

    min_frequency: int = Field(default=1, ge=1)
    """Tokens seen fewer times in training map to the out-of-vocabulary id."""

    max_vocab: int = Field(default=20000, ge=10)
    """Largest vocabulary, special tokens included."""

    max_length: int | None = Field(default=None, ge=1)
    """Tokens kept per text (longer ones are truncated, shorter ones padded); default: the
    `length_percentile` of the training lengths."""

    length_percentile: float = Field(default=95.0, gt=0, le=100)
    """Percentile of training token counts used as the length when `max_length` is unset."""

    truncation: Literal["end", "start"] = "end"
    """Which end of a long text is cut."""


class ImageFeaturesConfig(Section):
    """Preprocessing of image columns, fitted on the training split."""

    size: tuple[int, int] | None = None
    """[height, width] every image is resized to; unset: all images must share one size."""

    channels: Literal["auto", "grayscale", "rgb"] = "auto"
    """Colour channels fed to the model; `auto`: 1 if every training image is grayscale."""

    scale: Literal["auto", "none"] | float = "auto"
    """To [0, 1]: `auto` divides 8-bit images by 255 and maps other arrays by the training
    minimum and maximum; a number divides by it; `none` leaves values as they are."""

    normalize: bool = True
    """Subtract the per-channel training mean and divide by the standard deviation."""


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

    text: TextFeaturesConfig = TextFeaturesConfig()
    """Tokenization of text columns."""

    image: ImageFeaturesConfig = ImageFeaturesConfig()
    """Preprocessing of image columns."""


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

    fit_on: Literal["train", "train+val"] = "train"
    """Rows to train on. `train+val` is a final fit after model selection (`tune.retrain`):
    no rows are held out, so there is no early stopping and the last epoch's weights are kept."""

    deterministic: bool = False
    """Use only deterministic algorithms (`torch.use_deterministic_algorithms`)."""

    device: str = "cpu"
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto`."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision: forward passes under bf16 / fp16 autocast (fp16 with a gradient
    scaler); weights and optimizer state stay fp32."""

    sync_batchnorm: bool = False
    """Under torchrun on GPUs: batch norm layers take their batch statistics over the global
    batch (SyncBatchNorm, one more all-reduce per layer and step) instead of each process's
    share, which matters when those shares are small. Ignored in a single process; PyTorch
    has it for GPUs only, so a job of CPU processes refuses it."""

    compile: bool = False
    """Train the network through `torch.compile` (the first epoch pays for compiling). Weights
    and checkpoints are the plain network's; evaluation, prediction and export never compile."""

    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """`torch.compile`'s mode, with `train.compile`."""

    data_on_device: Literal["auto", "always", "never"] = "auto"
    """On a GPU, keep the training and validation tensors in GPU memory (`always`; `auto` when
    they take at most half its free memory) and slice batches there, or keep them in pinned
    host memory and copy each batch over, one batch ahead (`never`). No effect on the CPU."""

    shuffle_buffer: int = Field(default=262_144, ge=1)
    """Streamed data (`data.stream: true`): rows held and shuffled together. Each epoch reads
    the prepared rows in blocks of `data.chunk_rows`, in a fresh random block order, and
    shuffles the rows of as many blocks as fill this buffer."""

    threads: int | None = Field(default=None, ge=1)
    """CPU threads for PyTorch; default PyTorch's choice."""

    checkpoint_every: int = Field(default=1, ge=1)
    """Write a resumable checkpoint every this many epochs."""

    progress: Literal["auto", "always", "never"] = "auto"
    """Progress bar: `auto` shows it only on a terminal."""

    log_param_stats: bool = True
    """Record every parameter's weight histogram and gradient norm each epoch in
    param_stats.jsonl, for the report (train stage only; gradients of each epoch's last step)."""

    augment: list[Component] = Field(default_factory=list)
    """Image augmentations applied to training batches, in order (`random_crop`, `hflip`,
    `rotation`, `mixup`, ...; see `dlpipe.train.augment`); never to validation or test."""

    loggers: list[Component] = Field(default_factory=list)
    """Experiment loggers: `tensorboard` (needs `pip install 'dlpipe[tensorboard]'`),
    `mlflow` (needs `dlpipe[mlflow]`) or `my_pkg.module:function` returning a Callback, each
    with its builder's arguments, e.g. `{name: mlflow, experiment: churn}`."""


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


# -- tune -------------------------------------------------------------------------------

_PARAM_KEYS = ("float", "int", "choice", "log", "step")
# Sections a trial cannot change: the splits are made once before the search (and the test
# split must stay unseen), evaluation is not part of a trial, the search cannot search itself.
_UNSEARCHABLE = {"data", "evaluate", "tune", "name"}


class ParamSpace(Section):
    """One searched field: `{float: [low, high]}`, `{int: [low, high]}` or `{choice: [...]}`.

    A bare list is shorthand for `{choice: [...]}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              populate_by_name=True)

    float_: tuple[float, float] | None = Field(default=None, alias="float")
    """`[low, high]`: a real number in the closed range."""

    int_: tuple[int, int] | None = Field(default=None, alias="int")
    """`[low, high]`: an integer in the closed range."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    """One of these values: numbers, strings, booleans, null, or lists such as `[128, 64]`."""

    log: bool = False
    """Sample on a log scale (low must be above 0): learning rates, weight decays."""

    step: float | None = Field(default=None, gt=0)
    """Sample only low, low + step, low + 2·step, ... (a whole number for `int`)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"choice": value}
        if isinstance(value, Mapping):
            for key in value:
                if key not in _PARAM_KEYS:
                    raise ValueError(f"unknown key {key!r}. {suggest(str(key), _PARAM_KEYS)}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpace:
        kinds = [k for k, v in (("float", self.float_), ("int", self.int_),
                                ("choice", self.choice)) if v is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of `float: [low, high]`, `int: [low, high]` or "
                             f"`choice: [...]`; got {', '.join(kinds) or 'none'}")
        bounds = self.float_ or self.int_
        if bounds is None:
            if self.log or self.step is not None:
                raise ValueError("`log` and `step` apply to `float` and `int` ranges, not to "
                                 "`choice`")
            return self
        low, high = bounds
        if not low < high:
            raise ValueError(f"low must be below high; got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"a log scale needs low > 0; got low = {low}")
        if self.log and self.step is not None:
            raise ValueError("give `log` or `step`, not both")
        if self.int_ is not None and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an `int` range needs a whole-number step; got {self.step}")
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any) -> dict[str, Any]:
        """Dump with the YAML's keys (`float`, not `float_`) and without unset options, so a
        written config.yaml reads back."""
        data = handler(self)
        keys = {"float_": "float", "int_": "int"}
        return {keys.get(k, k): v for k, v in data.items()
                if v is not None and not (k == "log" and v is False)}


class TuneConfig(Section):
    """Hyperparameter search with Optuna (`pip install 'dlpipe[tune]'`).

    Every trial trains the pipeline's model on the train split with a sampled config and is
    scored on the val split; the test split is never seen. `dlpipe run` then retrains the best
    config and evaluates it on test.
    """

    space: dict[str, ParamSpace] = Field(min_length=1)
    """The searched fields by dotted path (`train.optimizer.lr`, `model.hidden`), each a range
    or a list of choices. Every sampled config is validated like a hand-written one."""

    metric: str = "loss"
    """The validation metric to optimize: `loss` or a metric name (`accuracy`, `f1`, `r2`);
    `val.accuracy` and `val_accuracy` mean the same. A trial scores its best epoch."""

    direction: Literal["auto", "maximize", "minimize"] = "auto"
    """`auto`: minimize losses and errors, maximize everything else."""

    n_trials: int | None = Field(default=20, ge=1)
    """Trials in the study, counted across workers and resumed runs; null: until `timeout_s`."""

    timeout_s: float | None = Field(default=None, gt=0)
    """Start no new trial after this many seconds."""

    sampler: Literal["tpe", "random", "grid", "cmaes", "qmc"] = "tpe"
    """How trials pick values. `grid` needs a finite space (choices, ints, floats with `step`)."""

    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    """How unpromising trials are stopped early from their per-epoch validation metric."""

    startup_trials: int = Field(default=5, ge=0)
    """Trials sampled at random before TPE models the space, and never pruned by `median`."""

    warmup_epochs: int = Field(default=1, ge=0)
    """Epochs every trial trains before the median pruner may stop it."""

    seed: int | None = None
    """Seed of the sampler; default the pipeline's `seed`. One worker then repeats a study."""

    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    """Points to try first, e.g. the hand-tuned values: `[{train.optimizer.lr: 0.001}]`."""

    retrain: Literal["train", "train+val"] = "train"
    """What the final model trains on: the train split (early stopping on val as usual), or
    train+val for the best trial's number of epochs (val metrics are then not held out)."""

    workers: int = Field(default=1, ge=1)
    """Worker processes on this machine sharing the study (`--workers`)."""

    storage: str | None = None
    """Where the study lives: an SQLAlchemy URL (`postgresql://...`; `sqlite:///x.db` for one
    worker only) or a journal file path; default `tune/journal.log` in the run directory."""

    study: str | None = None
    """Study name; default the pipeline's name. Runs naming the same storage and study join it."""

    heartbeat_s: int = Field(default=10, ge=1)
    """A running trial records a heartbeat this often."""

    grace_s: int | None = Field(default=None, ge=1)
    """A running trial with no heartbeat for this long is marked failed (its worker died);
    default 3 × `heartbeat_s`."""

    plots: bool = True
    """Write PNG plots of the study: history, parameter importances, parallel coordinates."""

    @model_validator(mode="before")
    @classmethod
    def _plain_metric(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and isinstance(value.get("metric"), str):
            metric = value["metric"]
            for split in ("test", "train"):
                if metric.startswith((f"{split}.", f"{split}_")):
                    raise ValueError(f"metric: {metric!r} is not a validation metric; trials "
                                     f"are scored on the val split (e.g. "
                                     f"val.{metric[len(split) + 1:]})")
            value = {**value, "metric": metric.removeprefix("val.").removeprefix("val_")}
        return value

    @field_validator("space")
    @classmethod
    def _searchable(cls, space: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        for path in space:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", path):
                raise ValueError(f"{path!r} is not a dotted field path such as "
                                 f"train.optimizer.lr")
            if path.split(".")[0] in _UNSEARCHABLE:
                raise ValueError(f"{path!r} cannot be searched: the data is split once before "
                                 f"the search and {', '.join(sorted(_UNSEARCHABLE))} stay fixed; "
                                 f"search model, train, features or seed fields")
        return space

    @model_validator(mode="after")
    def _budget(self) -> TuneConfig:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give n_trials or timeout_s (or both); otherwise the search never "
                             "ends")
        if self.storage is not None and self.storage.startswith("sqlite") and self.workers > 1:
            raise ValueError(
                f"storage: {self.storage}: SQLite cannot be shared by parallel workers: "
                f"concurrent writes lock the database file (Optuna FAQ, 'How can I solve the "
                f"error that occurs when performing parallel optimization with SQLite3?'). Use "
                f"the default journal file storage (omit --storage), a PostgreSQL/MySQL URL, or "
                f"one worker (got workers={self.workers})")
        if self.grace_s is not None and self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s must exceed heartbeat_s; got {self.grace_s} <= "
                             f"{self.heartbeat_s}")
        return self

    @property
    def grace(self) -> int:
        """Seconds without a heartbeat after which a running trial counts as dead."""
        return self.grace_s if self.grace_s is not None else 3 * self.heartbeat_s


# -- finetune ---------------------------------------------------------------------------


class FinetuneConfig(Section):
    """Fine-tuning: start from a trained run's network and preprocessing, train on new data.

    `dlpipe finetune RUN_DIR --data NEW` writes this section into the new run's config. The
    run's `train` section (its parent's, unless overridden) drives the loop, with `epochs`
    and the optimizer's `lr` taken from here. The `finetune` stage replaces the features,
    tune and train stages.
    """

    parent: str
    """The trained run directory to start from (its weights.safetensors and features.json)."""

    parent_config_sha256: str | None = None
    """The parent's config hash (fingerprint.json) when this run was made; checked if set."""

    parent_data_sha256: str | None = None
    """The parent's data hash (fingerprint.json) when this run was made; checked if set."""

    parent_weights_sha256: str | None = None
    """sha256 of the parent's weights.safetensors when this run was made; checked if set."""

    lr: float | None = Field(default=None, gt=0)
    """Learning rate; default the parent's learning rate / 10. A scheduler's own absolute
    rates (onecycle `max_lr`) are kept as the parent set them."""

    epochs: int = Field(default=5, ge=1)
    """Passes over the new training split."""

    freeze: list[str] | Literal["all_but_head"] = Field(default_factory=list)
    """Parameters to freeze: glob patterns on parameter names (`["block0.*"]`, `["0.*"]`), or
    `all_but_head` (every block but the last). Frozen batch-norm layers keep their running
    statistics. Frozen parameters get no optimizer and stay byte-identical."""

    unfreeze_every: int | None = Field(default=None, ge=1)
    """Gradual unfreezing: every this many epochs, unfreeze the frozen block nearest the
    output. Off when absent."""

    refit_features: bool = False
    """Refit the preprocessing on the new training split instead of keeping the parent's.
    This changes what each input means to the network, so it is refused when the model input
    width would change."""

    @field_validator("freeze", mode="before")
    @classmethod
    def _one_pattern(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) and value != "all_but_head" else value


# -- compress, export --------------------------------------------------------------------

CompressMethod = Literal["structured", "prune", "int8", "fp16", "bf16"]
_PRUNING = ("structured", "prune")


class CompressConfig(Section):
    """Make the trained model smaller and faster; keep each result only within the guard.

    The pruning methods (`structured`, `prune`) run in the order listed, each on the model the
    previous one kept; `int8`, `fp16` and `bf16` then convert that model. Every variant is
    scored on the validation split (ONNX Runtime on this machine) and rejected when the guarded
    metric drops more than `max_metric_drop` below the original's; the kept ones are scored on
    test once at the end.
    """

    methods: list[CompressMethod] = Field(
        default_factory=lambda: ["structured", "prune", "int8"], min_length=1)
    """`structured`: remove the hidden neurons (`mlp`) or conv channels (`cnn`) of smallest L1
    norm (the layers shrink; other models are skipped with the reason); `prune`: zero the
    smallest Linear/Conv/LSTM/GRU weights (the file keeps its size); `int8`: ONNX Runtime
    quantization; `fp16`: an fp16 ONNX graph; `bf16`: bf16 safetensors weights."""

    max_metric_drop: float = Field(default=0.005, ge=0)
    """Largest allowed drop of the guarded metric on validation, absolute (0.005 = half a
    point of accuracy), against the uncompressed model."""

    metric: str | None = None
    """The guarded metric; default `accuracy` for classification, `r2` for regression. For a
    lower-is-better metric (`rmse`) a rise counts as the drop."""

    sparsities: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95],
                                    min_length=1)
    """Fractions of zero weights `prune` tries, in increasing order: each step prunes the last
    kept model further and fine-tunes it; the search stops at the first step the guard rejects,
    so the strongest sparsity within the guard is kept."""

    scope: Literal["global", "layer"] = "global"
    """`global`: one magnitude threshold over every Linear/Conv/LSTM/GRU weight; `layer`: each
    layer pruned to the same sparsity."""

    structured_amounts: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75],
                                            min_length=1)
    """Fractions of each hidden layer's neurons `structured` removes, tried in increasing
    order like `sparsities`."""

    structured_step: float = Field(default=0.125, gt=0, le=1)
    """Largest fraction of the ORIGINAL widths `structured` removes at once: each amount is
    reached in steps of at most this much, fine-tuned after each (0.125: 50% in four steps;
    1: one step per amount)."""

    finetune_epochs: int = Field(default=3, ge=0)
    """Epochs of fine-tuning after each pruning step (0: none); the epoch of lowest
    validation loss is kept."""

    finetune_lr_factor: float = Field(default=1.0, gt=0, le=1)
    """Fine-tuning learning rate as a fraction of `train.optimizer.lr` (constant, no
    schedule). 1 (the training rate, "learning-rate rewinding") recovered structured 50% within
    the guard where 0.1 did not (benchmarks/RESULTS.md, bench_compress)."""

    quantization: Literal["auto", "dynamic", "static"] = "auto"
    """int8 scheme: `dynamic` (weights int8, activations quantized on the fly: Linear,
    LSTM), `static` (activations calibrated on training batches, per-channel weights: what
    convolutions need); `auto` picks static when the graph has a convolution."""

    calibration_rows: int = Field(default=512, ge=1)
    """Training rows used to calibrate static quantization."""

    per_channel: bool | None = None
    """One int8 scale per output channel of each weight instead of one per tensor; default
    per channel for static (convolutions), per tensor for dynamic (ONNX Runtime's defaults;
    per-tensor scales keep a small MLP's int8 file leanest)."""

    latency_runs: int = Field(default=100, ge=1)
    """Timed runs per variant and batch size for the latency columns (the median is kept)."""

    @field_validator("sparsities", "structured_amounts")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        bad = [v for v in value if not 0 < v < 1]
        if bad:
            raise ValueError(f"every value must be between 0 and 1 (exclusive); got {bad}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _order(self) -> CompressConfig:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"each method may appear once; got {self.methods}")
        last_pruning = max((i for i, m in enumerate(self.methods) if m in _PRUNING), default=-1)
        first_format = min((i for i, m in enumerate(self.methods) if m not in _PRUNING),
                           default=len(self.methods))
        if last_pruning > first_format:
            raise ValueError("list the pruning methods (structured, prune) before the formats "
                             f"(int8, fp16, bf16), which convert the pruned model; got "
                             f"{self.methods}")
        return self


class ExportConfig(Section):
    """The deployable bundle: ONNX graphs, preprocessing, signature, weights, model card."""

    opset: int = Field(default=18, ge=18, le=23)
    """ONNX opset of the exported graph: 18 (what torch's exporter writes natively) to 23.
    Older opsets would need a version conversion that fails for some layers."""

    out: str | None = None
    """Folder of the bundle; default `export/` in the run directory."""

    include_int8: bool = True
    """Ship compress's int8 graph as model.int8.onnx when the guard kept one."""

    include_fp16: bool = True
    """Ship compress's fp16 graph as model.fp16.onnx when the guard kept one."""

    version: str | None = None
    """Version written to manifest.json; default the first 12 hex digits of the config hash."""

    parity_rows: int = Field(default=256, ge=2)
    """Held-out rows in the larger of the two parity-check batches (the other has 1 row)."""


class ReportConfig(Section):
    """The run's report: report.html and plots/ written at the end of `dlpipe run`."""

    enabled: bool = True
    """Write the report (a few seconds of plotting); `dlpipe report RUN_DIR` writes it later."""


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

    report: ReportConfig = ReportConfig()
    """The HTML report and its plots."""

    tune: TuneConfig | None = None
    """Hyperparameter search before training; off when absent."""

    finetune: FinetuneConfig | None = None
    """Start from a trained run instead of training from scratch; off when absent."""

    compress: CompressConfig | None = None
    """Pruning, int8 quantization, half precision after evaluation; off when absent."""

    export: ExportConfig | None = None
    """The deployable bundle (ONNX, preprocessing, signature) at the end; off when absent."""


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
