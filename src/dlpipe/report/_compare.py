"""One page comparing runs: where their configs differ, their metrics side by side, and their
learning curves overlaid. Reads each run directory only."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlpipe import runs
from dlpipe.errors import DlpipeError
from dlpipe.report import plots
from dlpipe.report.html import Html, cell, heading, image, page, paragraph, table
from dlpipe.runs import RunDir, atomic_write

_MISSING = "(not set)"


def compare(run_dirs: Sequence[str | os.PathLike[str] | RunDir],
            output: str | os.PathLike[str] = "compare.html") -> Path:
    """Write a self-contained HTML page comparing `run_dirs`; return its path.

    Raises:
        DlpipeError: fewer than two runs were given.
        RunDirError: a folder is not a run directory.
    """
    if len(run_dirs) < 2:
        raise DlpipeError(f"compare: give at least two run directories; got {len(run_dirs)}")
    rundirs = [r if isinstance(r, RunDir) else RunDir.open(r) for r in run_dirs]
    names = _names(rundirs)
    configs = {n: flatten(r.read_yaml(runs.CONFIG)) for n, r in zip(names, rundirs, strict=True)}
    metrics = {n: r.read_json(runs.METRICS) if r.has(runs.METRICS) else {}
               for n, r in zip(names, rundirs, strict=True)}
    histories = {n: r.read_jsonl(runs.HISTORY) if r.has(runs.HISTORY) else []
                 for n, r in zip(names, rundirs, strict=True)}
    runs_table = table(["run", "folder", "epochs run", "best epoch", "stopped because"], [
        [n, str(r.path), *_training(r)] for n, r in zip(names, rundirs, strict=True)])
    sections = [
        ("runs", "Runs", [runs_table]),
        ("config", "Config differences", config_differences(configs)),
        ("metrics", "Metrics", [metrics_by_run(metrics, split) for split in ("test", "val")
                                if any(split in m for m in metrics.values())]
         or [paragraph("No run has metrics.json.")]),
        ("curves", "Learning curves", _curves(histories)),
    ]
    text = page(f"dlpipe comparison of {len(names)} runs", sections,
                f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    path = Path(output)
    atomic_write(path, text.encode())
    return path


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: `{"train": {"epochs": 5}}` → `{"train.epochs": 5}`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A table of the config fields whose values differ between runs (`name` left out)."""
    keys = sorted({k for c in configs.values() for k in c} - {"name"})
    differing = [k for k in keys
                 if len({repr(c.get(k, _MISSING)) for c in configs.values()}) > 1]
    if not differing:
        return [paragraph("The runs have the same config (apart from their names).")]
    rows = [[k, *(_show(c.get(k, _MISSING)) for c in configs.values())] for k in differing]
    return [table(["field", *configs], rows)]


def metrics_by_run(metrics: Mapping[str, Mapping[str, Any]], split: str) -> Html:
    """One row per metric of `split`, one column per run; cells carry exact ``data-value``s."""
    names = list(dict.fromkeys(k for m in metrics.values() for k, v in m.get(split, {}).items()
                               if v is None or isinstance(v, int | float)))
    rows = []
    for name in names:
        row: list[Any] = [name]
        for run, m in metrics.items():
            value = m.get(split, {}).get(name)
            row.append(cell(value, data_metric=f"{run}.{split}.{name}",
                            data_value="null" if value is None else value))
        rows.append(row)
    return Html(f"{heading(f'{split} split')}{table(['metric', *metrics], rows, css='metrics')}")


def _curves(histories: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    present = {k for h in histories.values() for row in h for k in row}
    keys = [k for k in ("train_loss", "val_loss") if k in present]
    keys += sorted(k for k in present if k.startswith("val_") and k != "val_loss")
    if not keys:
        return [paragraph("No run has history.jsonl.")]
    fig = plots.overlaid_learning_curves(histories, keys)
    return [image(plots.to_png(fig), "learning curves of every run, overlaid")]


def _training(rundir: RunDir) -> list[Any]:
    if not rundir.has(runs.TRAINING):
        return [None, None, None]
    info = rundir.read_json(runs.TRAINING)
    return [info.get("epochs_run"), info.get("best_epoch"), info.get("stop_reason") or "epochs"]


def _names(rundirs: Sequence[RunDir]) -> list[str]:
    """Folder names, numbered where two are the same."""
    names = [r.path.name for r in rundirs]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _show(value: Any) -> Any:
    return str(value) if isinstance(value, list | dict) else value
