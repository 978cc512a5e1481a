"""Fit the tabular features and the target in one pass over chunks of the train split.

With ``data.stream: true`` the train split may be larger than memory; it arrives as an
iterable of pandas DataFrames and each chunk is folded in with `partial_fit`, so memory is
bounded by a chunk plus the running state: per numeric column a few float64 numbers and, for
the ``median`` / ``most_frequent`` fills and ``robust`` scaling only, a sample of at most
`RESERVOIR_SIZE` values; per categorical column the count of each distinct value.

Exact (equal to fitting on the concatenated chunks, to ~1e-12 relative in float64): counts,
the ``mean`` and ``constant`` fills, ``standardize`` and ``minmax`` scaling (after imputing
and clipping), missing indicators, categories with `min_frequency`, the categorical and
binary ``most_frequent`` fill, class labels, and the regression target's mean and std.
Approximate (from a seeded uniform sample, exact while a column has had at most
`RESERVOIR_SIZE` values): the numeric ``median`` and ``most_frequent`` fills and ``robust``
scaling.

Example:
    >>> inputs, target = fit_tabular_stream(schema, cfg.features, chunks, seed=0)
    >>> inputs.to_json() == TabularFeatures(...).fit(pd.concat(chunks)).to_json()  # exact parts
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from dlpipe._running import RESERVOIR_SIZE
from dlpipe.errors import DataError, RunDirError
from dlpipe.features.tabular import TabularFeatures, TargetEncoder

__all__ = ["RESERVOIR_SIZE", "check_streamable", "fit_tabular_stream"]

_MEDIA_KINDS = ("text", "image")


def check_streamable(schema: Mapping[str, Any]) -> None:
    """Refuse a schema with text or image columns: streaming fits tabular columns only.

    Raises:
        DataError: naming the first such column and its kind.
    """
    for column in schema["columns"]:
        if column["kind"] in _MEDIA_KINDS:
            raise DataError(
                f"streaming (data.stream: true) supports tabular columns; column "
                f"{column['name']!r} is {column['kind']}; set data.stream: false to fit "
                f"{column['kind']} features in memory"
            )


def fit_tabular_stream(
    inputs: TabularFeatures,
    target: TargetEncoder,
    chunks: Iterable[pd.DataFrame],
    *,
    schema: Mapping[str, Any],
    seed: int = 0,
    reservoir_size: int = RESERVOIR_SIZE,
) -> tuple[TabularFeatures, TargetEncoder]:
    """Fit `inputs` and `target` (built by `dlpipe.features.encoders`) over `chunks` in one
    pass; return them.

    Args:
        chunks: the train split, chunk by chunk, target column included; consumed once.
        schema: schema.json of the run (tabular columns only).
        seed: seeds the samples of the approximate statistics (deterministic given it).
        reservoir_size: values sampled per numeric column for those statistics.

    Raises:
        DataError: a text or image column, no rows in the whole stream, a column with no
            value in any chunk, or any error `fit` raises on a bad value.
        RunDirError: a chunk without the target column.
    """
    check_streamable(schema)
    rows = 0
    for chunk in chunks:
        if schema["target"] not in chunk.columns:
            raise RunDirError(f"the train split has no target column {schema['target']!r}; "
                              f"rerun `dlpipe data RUN_DIR`")
        inputs.partial_fit(chunk, seed=seed, reservoir_size=reservoir_size)
        target.partial_fit(chunk[schema["target"]])
        rows += len(chunk)
    if rows == 0:
        raise DataError("the training split has no rows (the stream of chunks was empty); "
                        "features are fitted on it")
    inputs.check_complete()
    target.check_complete()
    return inputs, target
