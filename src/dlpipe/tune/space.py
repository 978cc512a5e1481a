"""The search space: `tune.space` entries → Optuna distributions, sampled values → a config.

Each entry names a config field by its dotted path and gives a range or a list of choices.
`Space.sample` draws one value per path from an Optuna trial; `trial_config` patches them
into the base config the way ``--set`` does and validates the result like a hand-written
config (`load_config`, then `pipeline.check`). `check_space` does that up front for every
range end and every choice, so a misspelt path fails before the first trial.

Example:
    >>> space = Space.from_config(cfg.tune)
    >>> values = space.sample(trial)          # {"train.optimizer.lr": 0.0031, ...}
    >>> trial_cfg = trial_config(base_config(cfg), values)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlpipe.config import PipelineConfig, TuneConfig, apply_overrides, load_config, to_dict
from dlpipe.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "Space", "base_config", "check_space", "trial_config"]

# Values Optuna stores as they are; anything else (a list of layer widths, a mapping) is
# stored as its JSON text and decoded on the way out.
_SCALARS = (type(None), bool, int, float, str)
# A grid over a float range with a step may not be longer than this (a typo guard).
_MAX_GRID = 10_000


@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range, or a list of choices."""

    path: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def encoded(self) -> bool:
        """Whether the choices are stored in Optuna as JSON text."""
        return self.kind == "choice" and not all(isinstance(c, _SCALARS) for c in self.choices)

    def stored_choices(self) -> list[Any]:
        return [json.dumps(c) for c in self.choices] if self.encoded else list(self.choices)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return CategoricalDistribution(self.stored_choices())

    def decode(self, stored: Any) -> Any:
        """The config value of a value Optuna stored."""
        return json.loads(stored) if self.encoded else stored

    def encode(self, value: Any) -> Any:
        """The value Optuna stores for config value `value`."""
        return json.dumps(value) if self.encoded else value

    def endpoints(self) -> list[Any]:
        """The values that validate the whole range: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def grid(self) -> list[Any]:
        """Every value a grid search visits (stored form)."""
        if self.kind == "choice":
            return self.stored_choices()
        if self.log or (self.kind == "float" and self.step is None):
            raise ConfigError([(f"tune.space.{self.path}", "the grid sampler needs a finite set "
                                "of values: give a `step` (without `log`) or use `choice`")])
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1  # 1e-9: float round-off
        if count > _MAX_GRID:
            raise ConfigError([(f"tune.space.{self.path}", f"the grid would have {count} values "
                                f"(more than {_MAX_GRID}); use a larger step")])
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else values


class Space:
    """The searched fields of `tune.space`, in a fixed order (parents before children)."""

    def __init__(self, params: list[Param]) -> None:
        # A path inside another searched path ("train.optimizer" and "train.optimizer.lr")
        # must be applied after it, so sort by depth; the sort is stable otherwise.
        self.params = tuple(sorted(params, key=lambda p: p.path.count(".")))

    @classmethod
    def from_config(cls, section: TuneConfig) -> Space:
        params = []
        for path, spec in section.space.items():
            if spec.choice is not None:
                params.append(Param(path, "choice", choices=tuple(spec.choice)))
            else:
                kind = "float" if spec.float_ is not None else "int"
                low, high = spec.float_ if spec.float_ is not None else spec.int_ or (0, 0)
                params.append(Param(path, kind, low=low, high=high, log=spec.log, step=spec.step))
        return cls(params)

    def __iter__(self):
        return iter(self.params)

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.params]

    def touches(self, section: str) -> bool:
        """Whether any searched path lies in config section `section` (e.g. ``features``)."""
        return any(p.path == section or p.path.startswith(f"{section}.") for p in self.params)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest one value per path; return them as config values."""
        values = {}
        for p in self.params:
            if p.kind == "float":
                stored = trial.suggest_float(p.path, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                stored = trial.suggest_int(p.path, int(p.low), int(p.high), log=p.log,
                                           step=int(p.step or 1))
            else:
                stored = trial.suggest_categorical(p.path, p.stored_choices())
            values[p.path] = p.decode(stored)
        return values

    def decode(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Config values of a trial's stored params (only the paths of this space)."""
        return {p.path: p.decode(stored[p.path]) for p in self.params if p.path in stored}

    def encode(self, values: Mapping[str, Any], where: str = "tune.enqueue") -> dict[str, Any]:
        """Stored params of config values, checking each lies in the space."""
        by_path = {p.path: p for p in self.params}
        stored = {}
        for path, value in values.items():
            param = by_path.get(path)
            if param is None:
                raise ConfigError([(where, f"{path!r} is not in tune.space; searched: "
                                           f"{', '.join(self.paths)}")])
            if not param.contains(value):
                raise ConfigError([(where, f"{path}: {value!r} is outside its search space "
                                           f"{_describe(param)}")])
            stored[path] = param.encode(value)
        return stored

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.path: p.distribution() for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        return {p.path: p.grid() for p in self.params}

    def grid_size(self) -> int:
        """How many points a grid search visits."""
        return math.prod(len(values) for values in self.grid().values())


def base_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The config every trial starts from: `cfg` as plain data, without its `tune` section."""
    raw = to_dict(cfg)
    raw.pop("tune", None)
    return raw


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any]) -> PipelineConfig:
    """`base` with `values` set by dotted path, validated like a hand-written config.

    Raises:
        ConfigError: the combination is not a valid config (every problem, with its path).
    """
    from dlpipe.pipeline import check

    # JSON text is YAML, so the values round-trip exactly through `--set`'s parser.
    overrides = [f"{path}={json.dumps(value)}" for path, value in values.items()]
    cfg = load_config(apply_overrides(dict(base), overrides))
    check(cfg)
    return cfg


def check_space(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """Problems of `cfg.tune` that only a built config shows, each under ``tune.space.<path>``.

    Every range end and every choice is set into the config on its own and validated, so a
    path that names no field, or a value its field rejects, is found before any trial runs.
    """
    section = cfg.tune
    if section is None:
        return []
    problems: list[tuple[str, str]] = []
    base = base_config(cfg)
    space = Space.from_config(section)
    for param in space:
        for value in param.endpoints():
            try:
                trial_config(base, {param.path: value})
            except ConfigError as exc:
                where = f"tune.space.{param.path}"
                problems.extend(
                    (where, message if path == param.path else f"{path}: {message}")
                    for path, message in exc.problems
                )
                break  # one value's problems say what is wrong with the path
    for i, point in enumerate(section.enqueue):
        try:
            space.encode(point, where=f"tune.enqueue[{i}]")
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_metric_problems(section.metric))
    return problems


def _metric_problems(metric: str) -> list[tuple[str, str]]:
    from dlpipe.metrics import METRICS

    if metric == "loss" or metric in METRICS or ":" in metric:
        return []
    try:
        METRICS.get(metric, path="tune.metric")
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _describe(param: Param) -> str:
    if param.kind == "choice":
        return f"(choices: {', '.join(map(repr, param.choices))})"
    return f"[{param.low}, {param.high}]"
