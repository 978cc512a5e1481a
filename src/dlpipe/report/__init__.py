"""The report stage: one self-contained report.html per run, every plot also as plots/NAME.png.

It reads the run directory only (it imports no other stage), so `dlpipe report RUN_DIR`
regenerates the page from the files alone. Sections follow what the run holds: tuning when
tune/trials.csv exists, fine-tuning when finetune.json does, compression when
compress/report.json does. `compare` writes one page comparing several runs.

Example:
    >>> path = write_report("runs/quickstart")        # runs/quickstart/report.html
    >>> compare(["runs/a", "runs/b"], "compare.html")
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dlpipe import runs
from dlpipe.report._compare import compare
from dlpipe.report._evaluation import compression, evaluation, metrics_table, tuning
from dlpipe.report._sections import Plots, data, overview, read, training
from dlpipe.report.html import heading, kv_table, page, paragraph
from dlpipe.runs import RunDir

__all__ = ["compare", "run", "write_report"]


def run(cfg: Any, rundir: RunDir) -> Path:
    """The pipeline stage: write the run's report (the config is read from the run itself)."""
    return write_report(rundir)


def write_report(run_dir: str | os.PathLike[str] | RunDir) -> Path:
    """Write report.html and plots/*.png of a run directory; return the report's path.

    Experiment loggers the run used (loggers.json) also receive the report and the plots.
    """
    rundir = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    figs = Plots()
    sections: list[tuple[str, str, list[str]]] = [
        ("overview", "Overview", overview(rundir)),
        ("data", "Data", data(rundir, figs)),
        ("training", "Training", training(rundir, figs)),
        ("evaluation", "Evaluation", evaluation(rundir, figs)),
    ]
    finetuned = _finetune(rundir)
    if finetuned is not None:
        sections.append(("finetune", "Fine-tuning", finetuned))
    tuned = tuning(rundir, figs)
    if tuned is not None:
        sections.append(("tuning", "Tuning", tuned))
    compressed = compression(rundir)
    if compressed is not None:
        sections.append(("compression", "Compression", compressed))

    config = read(rundir, runs.CONFIG) or {}
    schema = read(rundir, runs.SCHEMA) or {}
    title = f"dlpipe report: {config.get('name') or rundir.path.name}"
    subtitle = (f"{schema.get('task', 'unknown')} task · {rundir.path.resolve()} · generated "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    _write_plots(rundir, figs.png)
    path = rundir.write_bytes(runs.REPORT, page(title, sections, subtitle).encode())
    if rundir.has(runs.LOGGERS):
        from dlpipe.report._loggers import log_report

        log_report(rundir, figs.png)
    return path


def _write_plots(rundir: RunDir, pngs: dict[str, bytes]) -> None:
    """Write each plot as plots/NAME.png and remove PNGs of plots this run no longer has."""
    folder = rundir.path / runs.PLOTS.filename
    if folder.is_dir():
        for old in folder.glob("*.png"):
            if old.stem not in pngs:
                old.unlink()
    for name, png in pngs.items():
        rundir.write_bytes(f"{runs.PLOTS.filename}/{name}.png", png)


def _finetune(rundir: RunDir) -> list[str] | None:
    info = read(rundir, runs.FINETUNE)
    if info is None:
        return None
    params = info.get("parameters") or {}
    parts = [kv_table({"parent run": info.get("parent"), "learning rate": info.get("lr"),
                       "epochs run": info.get("epochs_run"),
                       "preprocessing refitted": info.get("refit_features"),
                       "parameters frozen": f"{params.get('frozen')} of {params.get('total')}",
                       "frozen": ", ".join(info.get("frozen") or []) or "none"})]
    for when in ("before", "after"):
        if isinstance(info.get(when), dict):
            parts += [heading(f"On the new data, {when} fine-tuning"),
                      metrics_table(info[when], prefix=f"finetune.{when}.")]
    if len(parts) == 1:
        parts.append(paragraph("finetune.json holds no metrics."))
    return parts
