"""The report's first sections, read from the run directory: overview, data, training.

Each function takes the run directory and the `Plots` collector and returns the HTML parts
of its section; a file an earlier stage did not write leaves its part out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from dlpipe import runs
from dlpipe.report import plots
from dlpipe.report.html import Html, details, fmt, heading, image, kv_table, paragraph, pre
from dlpipe.report.html import table as html_table
from dlpipe.runs import RunDir

MAX_FEATURES = 8
"""Most feature distributions drawn (the ones that differ most between train and test)."""

MAX_ROWS = 20_000
"""Most rows of a split read for the feature distributions (a seeded sample)."""


class Plots:
    """Renders figures to PNG once, keeping the bytes for plots/ and the experiment loggers."""

    def __init__(self) -> None:
        self.png: dict[str, bytes] = {}

    def add(self, name: str, fig: Any, alt: str, caption: str | None = None) -> Html:
        png = plots.to_png(fig)
        self.png[name] = png
        return image(png, alt, caption)


def read(rundir: RunDir, artifact: runs.Artifact) -> Any:
    """The content of a JSON / JSONL / YAML artifact, or None when it was not written."""
    if not rundir.has(artifact):
        return None
    if artifact.filename.endswith(".jsonl"):
        return rundir.read_jsonl(artifact)
    if artifact.filename.endswith((".yaml", ".yml")):
        return rundir.read_yaml(artifact)
    return rundir.read_json(artifact)


# -- overview -------------------------------------------------------------------------------


def overview(rundir: RunDir) -> list[str]:
    """Config summary, the exact command, environment and the time each stage took."""
    config = read(rundir, runs.CONFIG) or {}
    schema = read(rundir, runs.SCHEMA) or {}
    info = read(rundir, runs.RUN_INFO) or {}
    finger = read(rundir, runs.FINGERPRINT) or {}
    train = trained_with(config, read(rundir, runs.FINETUNE))
    data = config.get("data", {})
    model = config.get("model", {})
    summary = {
        "run directory": str(rundir.path),
        "task": schema.get("task"),
        "data": _source(data.get("source")),
        "target": data.get("target"),
        "model": _component(model, skip=("name",)),
        "optimizer": _component(train.get("optimizer") or {}),
        "loss": _component(train.get("loss")) if train.get("loss") else "task default",
        "scheduler": _component(train.get("scheduler")) if train.get("scheduler") else "none",
        "epochs · batch size": f"{train.get('epochs')} · {train.get('batch_size')}",
        "early stopping": _component(train.get("early_stopping"), name="monitor")
        if train.get("early_stopping") else "off",
        "seed": config.get("seed"),
    }
    command = info.get("command") or "(run from Python: dlpipe.run(...))"
    parts = [kv_table(summary), heading("Command"), pre(command),
             details("config.yaml (resolved, defaults included)",
                     pre(yaml.safe_dump(config, sort_keys=False)))]
    env = {"device": _device(read(rundir, runs.TRAINING), train.get("device")),
           "platform": finger.get("platform"),
           **(finger.get("versions") or {}), "config sha256": finger.get("config_sha256"),
           "data sha256": finger.get("data_sha256")}
    parts += [heading("Environment"), kv_table(env)]
    stages = info.get("stages") or {}
    if stages:
        total = sum(s.get("seconds", 0.0) for s in stages.values()) or 1.0
        rows = [[name, s.get("seconds"), f"{100 * s.get('seconds', 0.0) / total:.0f} %"]
                for name, s in stages.items()]
        parts += [heading("Time per stage"), html_table(["stage", "seconds", "share"], rows)]
    return parts


def trained_with(config: Mapping[str, Any], finetune: Mapping[str, Any] | None
                 ) -> dict[str, Any]:
    """The config's train section as training ran: a fine-tuned run trains with the finetune
    section's rate and epochs (finetune.json records the rate it derived)."""
    train = dict(config.get("train") or {})
    if finetune:
        optimizer = dict(train.get("optimizer") or {})
        optimizer["lr"] = float(f"{finetune['lr']:.6g}")  # 3e-05, not 2.9999999999999997e-05
        train.update(optimizer=optimizer, epochs=finetune.get("epochs", train.get("epochs")))
    return train


def _device(summary: Mapping[str, Any] | None, configured: Any) -> str:
    """Where training ran (training.json), with the GPU's name; else the configured one."""
    ran = (summary or {}).get("device")
    if ran is None:
        return f"{configured or 'auto'} (configured; training.json does not record the device)"
    name = (summary or {}).get("device_name")
    shown = f"{ran} ({name})" if name else str(ran)
    return shown if configured in (None, "auto", ran) else f"{shown}; configured {configured}"


def _source(source: Mapping[str, Any] | None) -> str:
    if not source:
        return "passed from Python"
    if source.get("builtin"):
        params = source.get("params") or {}
        return f"builtin {source['builtin']}" + (f" {params}" if params else "")
    return str(source.get("path"))


def _component(value: Mapping[str, Any] | None, skip: tuple[str, ...] = (),
               name: str = "name") -> str:
    if not value:
        return "—"
    args = ", ".join(f"{k}={v}" for k, v in value.items() if k != name and k not in skip
                     and v is not None)
    return f"{value.get(name)}({args})"


# -- data -----------------------------------------------------------------------------------


def data(rundir: RunDir, figs: Plots) -> list[str]:
    """What was read, dropped, filled and clipped; class balance; train vs test features."""
    profile = read(rundir, runs.PROFILE)
    if profile is None:
        return [paragraph("The data stage has not run.")]
    split = profile.get("split", {})
    facts = {"rows read": profile.get("rows_read"), "columns read": profile.get("columns_read"),
             "duplicates dropped": profile.get("duplicates_dropped"),
             "rows with a missing target dropped": profile.get("missing_target_dropped"),
             "constant columns dropped": ", ".join(profile.get("constant_columns_dropped") or [])
             or "none", "split": split.get("method"),
             **{f"{s} rows": n for s, n in (profile.get("rows") or {}).items()}}
    parts: list[str] = [kv_table(facts)]
    leakage = profile.get("leakage") or {}
    found = {k: v.get("count") for k, v in leakage.items() if isinstance(v, dict)}
    if found:
        parts.append(paragraph("Leakage checks across splits: " + ", ".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in found.items())))
    missing, outliers = _missing_rows(profile), _outlier_rows(profile)
    if missing:
        parts += [heading("Missing values"), html_table(
            ["column", "strategy", "train", "val", "test", "rows dropped"], missing)]
    else:
        parts.append(paragraph("No missing values in the input columns."))
    if outliers:
        out = profile["outliers"]
        dropped = (f"; {out.get('train_rows_dropped')} training rows dropped"
                   if out.get("action") == "drop" else "")
        parts += [heading(f"Outliers ({out.get('method')}, threshold {fmt(out.get('threshold'))}, "
                          f"action {out.get('action')}{dropped})"),
                  paragraph("Values outside the bounds fitted on the training split, per split."),
                  html_table(["column", "low", "high", "train", "val", "test"], outliers)]
    if missing or any(r[3] or r[4] or r[5] for r in outliers):
        parts.append(figs.add("missing_outliers", plots.missing_and_outliers(
            {r[0]: sum(r[2:5]) for r in missing}, {r[0]: sum(r[3:6]) for r in outliers}),
            "missing values and outliers per column"))
    counts = split.get("class_counts")
    if counts:
        imbalance = profile.get("imbalance") or {}
        parts += [heading("Class balance"), figs.add("class_balance", plots.class_balance(
            counts, imbalance.get("class_counts_before"), imbalance.get("class_counts_after"),
            method=imbalance.get("method", "none")), "class counts per split and resampling")]
    parts += _features(rundir, figs)
    return parts


def _missing_rows(profile: Mapping[str, Any]) -> list[list[Any]]:
    columns = (profile.get("missing") or {}).get("columns") or {}
    rows = []
    for name, entry in columns.items():
        counts = entry.get("counts") or {}
        dropped = sum((entry.get("rows_dropped") or {}).values())
        if any(counts.values()) or dropped:
            rows.append([name, entry.get("strategy"), counts.get("train", 0),
                         counts.get("val", 0), counts.get("test", 0), dropped])
    return rows


def _outlier_rows(profile: Mapping[str, Any]) -> list[list[Any]]:
    columns = (profile.get("outliers") or {}).get("columns") or {}
    return [[name, c.get("low"), c.get("high"), *((c.get("outside") or {}).get(s, 0)
                                                  for s in ("train", "val", "test"))]
            for name, c in columns.items()]


def _features(rundir: RunDir, figs: Plots) -> list[str]:
    schema = read(rundir, runs.SCHEMA)
    if schema is None or not rundir.split_file("train").exists() \
            or not rundir.split_file("test").exists():
        return []
    train, test = (rundir.read_split_bounded(s, MAX_ROWS) for s in ("train", "test"))
    if not len(test):
        return []
    # Distributions of a seeded sample: as good for the eye, and fast on large splits.
    train, test = (f.sample(n=MAX_ROWS, random_state=0) if len(f) > MAX_ROWS else f
                   for f in (train, test))
    # Text and image columns have no distribution to draw here.
    names = [c["name"] for c in schema.get("columns", [])
             if c["name"] in train.columns and c.get("kind") not in ("text", "image")]
    shift = {name: _shift(train[name], test[name]) for name in names}
    shown = sorted(names, key=lambda n: -shift[n])[:MAX_FEATURES]
    if not shown:
        return []
    note = (f"The {len(shown)} of {len(names)} input columns whose train and test "
            f"distributions differ most (Kolmogorov-Smirnov statistic for numbers, total "
            f"variation distance for categories), on the cleaned splits.")
    fig = plots.feature_distributions(train, test, shown,
                                      notes={n: f"shift {shift[n]:.3f}" for n in shown})
    return [heading("Feature distributions"), paragraph(note),
            figs.add("feature_distributions", fig, "train vs test feature distributions")]


def _shift(a: Any, b: Any) -> float:
    import pandas as pd

    a, b = a.dropna(), b.dropna()
    if not len(a) or not len(b):
        return 0.0
    if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
        x, y = np.sort(a.to_numpy(float)), np.sort(b.to_numpy(float))
        grid = np.concatenate([x, y])
        gap = np.searchsorted(x, grid, side="right") / len(x) - np.searchsorted(
            y, grid, side="right") / len(y)
        return float(np.abs(gap).max())
    p = a.astype(str).value_counts(normalize=True)
    q = b.astype(str).value_counts(normalize=True)
    return float(0.5 * p.subtract(q, fill_value=0.0).abs().sum())


# -- training -------------------------------------------------------------------------------


def training(rundir: RunDir, figs: Plots) -> list[str]:
    """How training went: stop reason and kept epoch, curves, learning rate, weights."""
    summary = read(rundir, runs.TRAINING)
    history = read(rundir, runs.HISTORY)
    if summary is None and not history:
        return [paragraph("The train stage has not run.")]
    parts: list[str] = []
    if summary:
        parts.append(kv_table({k.replace("_", " "): v for k, v in summary.items()}))
    if history:
        # Mark the stop only when something stopped training before its last epoch.
        stop = summary.get("epochs_run") if summary and summary.get("stop_reason") else None
        best = summary.get("best_epoch") if summary else None
        parts += [heading("Learning curves"), figs.add(
            "learning_curves", plots.learning_curves(history, stop_epoch=stop, best_epoch=best),
            "learning curves", _curves_caption(history))]
        rates = [(r["epoch"], r["lr"]) for r in history if r.get("lr") is not None]
        if rates:
            parts.append(figs.add("learning_rate", plots.learning_rate(
                *zip(*rates, strict=True)), "learning rate per epoch"))
        else:
            lr = trained_with(read(rundir, runs.CONFIG) or {},
                              read(rundir, runs.FINETUNE)).get("optimizer") or {}
            parts.append(paragraph(f"Learning rate: constant {fmt(lr.get('lr'))} "
                                   f"(no scheduler, no warmup)."))
    stats = read(rundir, runs.PARAM_STATS)
    if stats:
        n_params = sum(int(np.prod(p["shape"])) for p in stats[-1]["params"].values())
        parts += [heading("Weights and gradients"),
                  paragraph(f"{len(stats[-1]['params'])} parameter tensors, "
                            f"{n_params:,} parameters. Gradient norms are taken at each "
                            f"epoch's last optimizer step."),
                  figs.add("weight_histograms", plots.weight_histograms(stats),
                           "weight histograms per layer"),
                  figs.add("gradient_norms", plots.gradient_norms(stats),
                           "gradient and weight norms per layer")]
    return parts


def _curves_caption(history: list[dict[str, Any]]) -> str:
    keys = {k for row in history for k in row}
    metrics = any(k.startswith("train_") and k != "train_loss" for k in keys)
    train = ("Train values are those of the epoch's training batches as they were computed "
             "(under dropout and augmentation, with the weights changing during the epoch), "
             "so they can lie below the validation values." if metrics else
             "Only the loss is measured on the training split (no train metrics: mixup or "
             "cutmix leaves no hard targets, or the run predates them).")
    return f"Per epoch. {train} Validation: after each epoch (ema: the weight average)."


__all__ = ["MAX_FEATURES", "Plots", "data", "overview", "read", "training"]
