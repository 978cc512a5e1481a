"""The leakage guard, run right after splitting: what one split can tell about another.

Three findings: identical input rows in two splits (the model is tested on rows it trained
on), a group id in two splits, and validation/test rows older than the newest training row.
Each is recorded; each fails the run unless its `data.leakage.allow_*` switch is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.data._messages import jsonable, rows_text
from dlpipe.errors import DataError

_EXAMPLES = 3  # example rows/groups kept in the profile and the message


def check_leakage(
    splits: Mapping[str, pd.DataFrame],
    *,
    inputs: Sequence[str],
    group_column: str | None,
    time_column: str | None,
    allow_duplicates: bool,
    allow_group_overlap: bool,
    allow_time_overlap: bool,
) -> dict[str, Any]:
    """Return the `leakage` section of the profile; raise for each finding not allowed.

    Args:
        splits: split name → rows, indexed by row number in the loaded file.
        inputs: the input (feature) columns compared for duplicates.

    Raises:
        DataError: listing every finding that is not allowed, with its `allow_*` switch.
    """
    report: dict[str, Any] = {
        "duplicates": _duplicates(splits, inputs),
        "group_overlap": None if group_column is None else _groups(splits, group_column),
        "time_overlap": None if time_column is None else _times(splits, time_column),
    }
    allowed = {"duplicates": allow_duplicates, "group_overlap": allow_group_overlap,
               "time_overlap": allow_time_overlap}
    problems = []
    for key, finding in report.items():
        if finding is None:
            continue
        finding["allowed"] = allowed[key]
        if finding["count"] and not allowed[key]:
            problems.append(finding.pop("message"))
        else:
            finding.pop("message")
    if problems:
        raise DataError("data.leakage: " + "\n  ".join(problems))
    return report


def _labelled(splits: Mapping[str, pd.DataFrame], values: Mapping[str, Any]) -> pd.DataFrame:
    """One frame of (split, row, value) over every split, in split then row order."""
    return pd.concat(
        [pd.DataFrame({"split": name, "row": frame.index.to_numpy(), "value": values[name]})
         for name, frame in splits.items()],
        ignore_index=True,
    )


def _duplicates(splits: Mapping[str, pd.DataFrame], inputs: Sequence[str]) -> dict[str, Any]:
    hashes = {name: pd.util.hash_pandas_object(frame[list(inputs)], index=False).to_numpy()
              for name, frame in splits.items()}
    table = _labelled(splits, hashes)
    spread = table.groupby("value", sort=False)["split"].transform("nunique")
    shared = table[spread.to_numpy() > 1]
    examples = []
    for _, rows in shared.groupby("value", sort=False):
        if len(examples) == _EXAMPLES:
            break
        first = rows.drop_duplicates("split")
        examples.append({s: int(r) for s, r in zip(first["split"], first["row"], strict=True)})
    shown = "; ".join(" = ".join(f"row {r} ({s})" for s, r in e.items()) for e in examples)
    return {
        "count": len(shared),
        "examples": examples,
        "message": (f"{len(shared)} rows have identical input columns to a row in another "
                    f"split (e.g. {shown}), so test rows were seen in training; drop the "
                    f"duplicate inputs, split by group, or set data.leakage.allow_duplicates: "
                    f"true"),
    }


def _groups(splits: Mapping[str, pd.DataFrame], column: str) -> dict[str, Any]:
    table = _labelled(splits, {name: frame[column].to_numpy() for name, frame in splits.items()})
    per_group = table.groupby("value", sort=True)["split"].unique()
    shared = per_group[per_group.map(len) > 1]
    examples = [{"group": jsonable(g), "splits": list(s)}
                for g, s in shared.iloc[:_EXAMPLES].items()]
    shown = "; ".join(f"{e['group']!r} in {', '.join(e['splits'])}" for e in examples)
    return {
        "count": len(shared),
        "examples": examples,
        "message": (f"{len(shared)} values of group column {column!r} are in more than one "
                    f"split (e.g. {shown}); use data.split.method: group, or set "
                    f"data.leakage.allow_group_overlap: true"),
    }


def _times(splits: Mapping[str, pd.DataFrame], column: str) -> dict[str, Any]:
    train = splits["train"][column]
    latest = train.max() if len(train) else None
    held_out = {name: frame[column] for name, frame in splits.items() if name != "train"}
    early = {name: times[(times < latest).to_numpy()] if latest is not None else times.iloc[:0]
             for name, times in held_out.items()}
    rows = np.concatenate([times.index.to_numpy() for times in early.values()])
    examples = [{"split": name, "row": int(r), "time": jsonable(t)}
                for name, times in early.items()
                for r, t in times.iloc[:_EXAMPLES].items()][:_EXAMPLES]
    return {
        "count": len(rows),
        "latest_train": jsonable(latest),
        "examples": examples,
        "message": (f"{len(rows)} validation/test rows ({rows_text(rows)}) are earlier than the "
                    f"latest training row ({jsonable(latest)}) in time column {column!r}; use "
                    f"data.split.method: time, or set data.leakage.allow_time_overlap: true"),
    }
