"""Data sets bundled with scikit-learn, and its generators, as tables with a `target` column.

Nothing is downloaded: `breast_cancer`, `wine`, `iris`, `diabetes` and `digits` ship inside
scikit-learn. Column names are made YAML-friendly (`sepal length (cm)` → `sepal_length_cm`;
digits: `pixel_0` .. `pixel_63`, or with ``as_images: true`` an `image` column of 8x8 arrays
as NPY bytes). Generators get `random_state=0` unless given, so a config
always yields the same table.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from dlpipe.errors import ConfigError, suggest

TARGET = "target"
LOADERS = ("breast_cancer", "wine", "iris", "diabetes", "digits")
GENERATORS = ("make_classification", "make_regression")
TEXT_GENERATORS = ("reviews", "returns")  # dlpipe's own: data/reviews.py, data/returns.py
_SET_BY_DLPIPE = ("return_X_y", "coef")  # they change what the generator returns
_PARAMS = "data.source.params"


def load_builtin(name: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Return a bundled data set or a generated one as a DataFrame with a `target` column.

    Args:
        name: one of `LOADERS`, `GENERATORS` or `TEXT_GENERATORS` (`reviews`, a sentiment
            corpus, and `returns`, orders with numeric, categorical, binary and text columns:
            params `n`, `seed`; see dlpipe.data.reviews and dlpipe.data.returns).
        params: keyword arguments of the generator (`n_samples`, `n_features`, ...).

    Raises:
        ConfigError: an unknown name, or a parameter the generator does not take or accept,
            named as ``data.source.params.<name>``.

    Example:
        >>> load_builtin("digits").shape
        (1797, 65)
        >>> load_builtin("make_classification", {"n_samples": 50, "n_features": 4}).shape
        (50, 5)
    """
    params = dict(params or {})
    if name in GENERATORS:
        return _generate(name, params)
    if name in TEXT_GENERATORS:
        return _reviews(name, params)
    if name not in LOADERS:
        raise ConfigError.unknown("builtin data set", name,
                                  LOADERS + GENERATORS + TEXT_GENERATORS,
                                  path="data.source.builtin")
    if name == "digits" and _as_images(params):
        return _digits_images()
    if params:
        raise ConfigError([(_PARAMS, f"builtin {name!r} takes no params; got "
                                     f"{', '.join(sorted(params))}")])
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.reset_index(drop=True)
    if name == "digits":
        features = [f"pixel_{i}" for i in range(frame.shape[1] - 1)]
    else:
        features = [_sanitize(c) for c in frame.columns[:-1]]
    frame.columns = [*features, TARGET]
    return frame


def _as_images(params: dict[str, Any]) -> bool:
    """Pop digits' one param, `as_images` (a bool); other params are refused by the caller."""
    value = params.pop("as_images", False)
    if not isinstance(value, bool):
        raise ConfigError([(f"{_PARAMS}.as_images", f"must be true or false; got {value!r}")])
    if value and params:
        raise ConfigError([(_PARAMS, f"builtin 'digits' takes only as_images; got "
                                     f"{', '.join(sorted(params))}")])
    return value


def _digits_images() -> pd.DataFrame:
    """Digits as an `image` column of NPY bytes, (8, 8) float64 arrays of values 0..16."""
    import sklearn.datasets

    from dlpipe.data.images import arrays_to_cells

    bunch = sklearn.datasets.load_digits()
    return pd.DataFrame({"image": arrays_to_cells(bunch.images), TARGET: bunch.target})


def _reviews(name: str, params: dict[str, Any]) -> pd.DataFrame:
    """`reviews`: generated product reviews (`text`, `target`); `returns`: orders (`price`,
    `category`, `verified`, `review`, `returned`); params `n`, `seed`."""
    from dlpipe.data.returns import make_returns
    from dlpipe.data.reviews import make_reviews

    make = make_reviews if name == "reviews" else make_returns
    _bind(make, name, params)
    for key in params:
        if not isinstance(params[key], int) or isinstance(params[key], bool):
            raise ConfigError([(f"{_PARAMS}.{key}", f"must be an integer; got {params[key]!r}")])
    try:
        return make(**params)
    except ValueError as exc:
        raise ConfigError([(f"{_PARAMS}.n", str(exc))]) from None


def _generate(name: str, params: dict[str, Any]) -> pd.DataFrame:
    import sklearn.datasets
    from sklearn.utils._param_validation import InvalidParameterError

    generator: Callable[..., Any] = getattr(sklearn.datasets, name)
    _bind(generator, name, params)
    params.setdefault("random_state", 0)
    try:
        X, y = generator(**params)[:2]
    except InvalidParameterError as exc:
        # sklearn says: "The 'n_samples' parameter of make_classification must be ..."
        found = re.search(r"The '(\w+)' parameter", str(exc))
        path = f"{_PARAMS}.{found.group(1)}" if found else _PARAMS
        raise ConfigError([(path, str(exc))]) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError([(_PARAMS, f"{name} refused these params: {exc}")]) from None
    if y.ndim != 1:
        raise ConfigError([(f"{_PARAMS}.n_targets", f"dlpipe predicts one target; got "
                                                    f"{params.get('n_targets')}")])
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame[TARGET] = y
    return frame


def _bind(generator: Callable[..., Any], name: str, params: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(generator).parameters if p not in _SET_BY_DLPIPE]
    problems = []
    for key in params:
        if key in _SET_BY_DLPIPE:
            problems.append((f"{_PARAMS}.{key}", "is set by dlpipe and cannot be changed"))
        elif key not in accepted:
            problems.append((f"{_PARAMS}.{key}",
                             f"{name} has no parameter {key!r}. {suggest(key, accepted)}"))
    if problems:
        raise ConfigError(problems)


def _sanitize(name: str) -> str:
    """`sepal length (cm)` → `sepal_length_cm`; `od280/od315_x` → `od280_od315_x`."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_")
