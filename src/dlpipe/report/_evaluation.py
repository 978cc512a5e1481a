"""The report's later sections, read from the run directory: evaluation, tuning, compression.

Tuning and compression are written by their own stages; their sections appear when their
files exist (tune/trials.csv, compress/report.json), read as plain tables without
importing those stages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dlpipe import runs
from dlpipe.report import plots
from dlpipe.report._sections import Plots, read
from dlpipe.report.html import (
    Html,
    cell,
    details,
    heading,
    image,
    kv_table,
    paragraph,
    row,
    table,
)
from dlpipe.runs import RunDir

# trials.csv columns that are not searched parameters (dlpipe's, and Optuna's
# `trials_dataframe()` ones, whose parameters are `params_<name>`).
_TRIAL_COLUMNS = {"number", "state", "value", "duration_s", "epochs", "best_epoch",
                  "fail_reason", "worker", "datetime_start", "datetime_complete", "duration"}


def metrics_table(metrics: Mapping[str, Any], prefix: str = "") -> Html:
    """Val and test metrics side by side; each cell holds its exact value in ``data-value``."""
    splits = [s for s in ("val", "test") if isinstance(metrics.get(s), dict)]
    names = list(dict.fromkeys(k for s in splits for k, v in metrics[s].items()
                               if v is None or isinstance(v, int | float)))
    rows = [[name, *(_metric_cell(metrics[s].get(name), f"{prefix}{s}.{name}")
                     if name in metrics[s] else cell(None) for s in splits)]
            for name in names]
    return table(["metric", *splits], rows, css="metrics")


def _metric_cell(value: Any, key: str) -> Html:
    return cell(value, data_metric=key, data_value="null" if value is None else value)


def evaluation(rundir: RunDir, figs: Plots) -> list[str]:
    """Metrics per split, cross-validation, and the plots and tables behind curves.json."""
    metrics = read(rundir, runs.METRICS)
    if metrics is None:
        return [paragraph("The evaluate stage has not run.")]
    parts: list[str] = [metrics_table(metrics)]
    cv = metrics.get("cv")
    if cv:
        rows = [[name, s.get("mean"), s.get("std"), ", ".join(
            "—" if v is None else f"{v:.4f}" for v in s.get("values", []))]
            for name, s in cv.get("metrics", {}).items()]
        parts += [heading(f"Cross-validation ({cv.get('folds')} folds on train+val)"),
                  table(["metric", "mean", "std", "folds"], rows)]
    curves = read(rundir, runs.CURVES)
    if curves is None:
        return parts
    split = curves.get("split", "test")
    parts.append(paragraph(f"Plots and tables below are on the {split} split "
                           f"({curves.get('n')} rows)."))
    if "confusion" in curves:
        parts += _classification(curves, figs)
    if "regression" in curves:
        reg = curves["regression"]
        shown = (f"{reg['n_shown']} of {reg['n_total']} rows (a random sample)"
                 if reg["n_shown"] < reg["n_total"] else f"all {reg['n_total']} rows")
        parts += [heading("Residuals"), figs.add(
            "regression", plots.regression_diagnostics(reg["true"], reg["predicted"]),
            "predicted vs true and residuals", shown),
            kv_table({"residual mean": reg.get("residual_mean"),
                      "residual std": reg.get("residual_std"),
                      **{f"residual {k}": v for k, v in
                         (reg.get("residual_quantiles") or {}).items()}})]
    parts += _worst(curves.get("worst"))
    return parts


def _classification(curves: Mapping[str, Any], figs: Plots) -> list[str]:
    labels = curves["labels"]
    parts = [heading("Confusion matrix"), figs.add(
        "confusion_matrix", plots.confusion_matrices(curves["confusion"]["counts"], labels),
        "confusion matrix, counts and normalized")]
    if curves.get("roc"):
        which = "positive class" if curves["task"] == "binary" else "one-vs-rest per class"
        parts += [heading(f"ROC and precision-recall ({which})"), row(
            figs.add("roc", plots.roc_curves(curves["roc"]), "ROC curves"),
            figs.add("precision_recall", plots.pr_curves(curves["pr"]),
                     "precision-recall curves"))]
    if curves.get("calibration", {}).get("prob_pred"):
        parts += [heading(f"Calibration ({curves['calibration']['kind']})"), figs.add(
            "calibration", plots.calibration(curves["calibration"]), "calibration curve")]
    rows = [[c["label"], c["precision"], c["recall"], c["f1"], c["support"]]
            for c in curves.get("per_class", [])]
    parts += [heading("Per class"), table(["class", "precision", "recall", "f1", "support"],
                                          rows)]
    return parts


def _worst(worst: Mapping[str, Any] | None) -> list[str]:
    if not worst or not worst.get("rows"):
        return []
    columns = worst.get("columns", [])
    loss = "−log p(true)" if worst.get("loss") == "log_loss" else "|error|"
    extra = ["p(true)"] if any("probability_true" in r for r in worst["rows"]) else []
    rows = [[r["row"], r["true"], r["predicted"], r["loss"],
             *([r.get("probability_true")] if extra else []),
             *(r.get("values", {}).get(c) for c in columns)] for r in worst["rows"]]
    return [heading(f"Worst-predicted examples (top {len(rows)} by {loss})"),
            Html(f'<div class="wide">'
                 f'{table(["row", "true", "predicted", loss, *extra, *columns], rows)}</div>')]


# -- tuning ---------------------------------------------------------------------------------


def tuning(rundir: RunDir, figs: Plots) -> list[str] | None:
    """Trials table, optimization history and parameter importances; None when not tuned."""
    if not rundir.has(runs.TUNE_TRIALS):
        return None
    import pandas as pd

    trials = pd.read_csv(rundir.file(runs.TUNE_TRIALS))
    summary = read(rundir, runs.TUNE_SUMMARY) or {}
    parts: list[str] = []
    if summary:
        best = summary.get("best") or {}
        states = ", ".join(f"{k.lower()} {v}" for k, v in (summary.get("states") or {}).items()
                           if v)
        parts.append(kv_table({"objective": " ".join(str(summary.get(k, "")) for k in (
                                   "direction", "metric")).strip() or None,
                               "trials": summary.get("trials"), "states": states,
                               "epochs trained in all": summary.get("epochs_trained"),
                               "best trial": best.get("number"), "best value": best.get("value"),
                               "best trial's epochs": best.get("epochs")}))
    params = _param_columns(rundir, list(trials.columns))
    value = next((c for c in ("value", "values_0") if c in trials.columns), None)
    state = trials["state"].astype(str) if "state" in trials.columns else \
        pd.Series(["COMPLETE"] * len(trials))
    number = trials["number"] if "number" in trials.columns else pd.Series(range(len(trials)))
    maximize = _maximize(rundir, summary)
    if value is not None and len(trials):
        values = [None if pd.isna(v) else float(v) for v in trials[value]]
        parts.append(figs.add("tune_history", plots.optimization_history(
            number.tolist(), values, state.str.upper().tolist(), maximize=maximize),
            "optimization history"))
        importances = param_importances(trials, params, value, state)
        if importances:
            parts.append(figs.add("tune_importances", plots.param_importances(importances),
                                  "parameter importances", "Impurity importances of a random "
                                  "forest fitted to the complete trials' objective values."))
        elif rundir.has(runs.TUNE_PLOTS["importances"]):  # too few trials here; Optuna's own
            parts.append(image(rundir.file(runs.TUNE_PLOTS["importances"]).read_bytes(),
                               "parameter importances", "Optuna's parameter importances "
                               "(tune/importances.png)."))
    if rundir.has(runs.TUNE_PLOTS["parallel_coordinates"]):
        png = rundir.file(runs.TUNE_PLOTS["parallel_coordinates"]).read_bytes()
        parts.append(image(png, "parallel coordinates", "Optuna's parallel coordinates plot "
                                                        "(tune/parallel_coordinates.png)."))
    rows = trials.astype(object).where(trials.notna(), None).values.tolist()
    parts.append(details(f"all {len(trials)} trials", Html(
        f'<div class="wide">{table(list(trials.columns), rows)}</div>')))
    return parts


def _param_columns(rundir: RunDir, columns: list[str]) -> list[str]:
    """The searched parameters' columns: the config's `tune.space` paths, or (for a
    trials.csv from elsewhere) every column that is not a known bookkeeping one."""
    space = ((read(rundir, runs.CONFIG) or {}).get("tune") or {}).get("space") or {}
    if space:
        return [c for c in columns if c in space]
    return [c for c in columns if c not in _TRIAL_COLUMNS
            and not c.startswith(("user_attrs_", "system_attrs_", "values_"))]


def param_importances(trials: Any, params: Sequence[str], value: str,
                      state: Any) -> dict[str, float]:
    """Each parameter's share of a random forest's impurity importance for the objective,
    from the complete trials (at least 4 needed); {} when there is too little to learn from."""
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor

    done = trials[(state.str.upper() == "COMPLETE").to_numpy() & trials[value].notna()]
    if len(done) < 4 or not params:
        return {}
    x = pd.DataFrame({p: _codes(done[p]) for p in params})
    forest = RandomForestRegressor(n_estimators=64, random_state=0).fit(x, done[value])
    names = [p.removeprefix("params_").removeprefix("params.") for p in params]
    return dict(zip(names, (float(v) for v in forest.feature_importances_), strict=True))


def _codes(column: Any) -> Any:
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        return numeric
    return column.astype(str).astype("category").cat.codes


def _maximize(rundir: RunDir, summary: Mapping[str, Any]) -> bool:
    direction = summary.get("direction")
    if direction is None:
        tune = (read(rundir, runs.CONFIG) or {}).get("tune") or {}
        direction = tune.get("direction")
        if direction in (None, "auto"):
            from dlpipe.metrics import higher_is_better

            return higher_is_better(str(tune.get("metric", "loss")).split(".")[-1])
    return str(direction).lower().startswith("max")


# -- compression ----------------------------------------------------------------------------


def compression(rundir: RunDir) -> list[str] | None:
    """The size / latency / metric table of compress/report.json; None when not compressed."""
    report = read(rundir, runs.COMPRESS_REPORT)
    if report is None:
        return None
    rows = _records(report)
    facts = {k: v for k, v in report.items() if not isinstance(v, dict | list)} \
        if isinstance(report, dict) else {}
    chosen = report.get("chosen") if isinstance(report, dict) else None
    if isinstance(chosen, dict):
        facts["chosen"] = ", ".join(f"{k}: {v}" for k, v in chosen.items() if v) or "none"
    parts: list[str] = [kv_table(facts)] if facts else []
    if rows:
        picked = set(chosen.values()) if isinstance(chosen, dict) else set()
        columns = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[_flat(r.get(c)) for c in columns] for r in rows]
        if "name" in columns:  # dlpipe's own report: mark the kept and the rejected variants
            at = columns.index("name")
            for r, row in zip(rows, cells, strict=True):
                row[at] = f"{r['name']} ★" if r["name"] in picked else (
                    f"{r['name']} ✗" if r.get("accepted") is False else r["name"])
        parts += [Html(f'<div class="wide">{table(columns, cells)}</div>'),
                  paragraph("★ kept · ✗ rejected by the accuracy guard. Sizes in bytes, "
                            "latencies in ms (ONNX Runtime, p50, on the machine that ran "
                            "compress).")]
    return parts


def _records(report: Any) -> list[dict[str, Any]]:
    """The first list of records in `report` (the top level, or a value such as `variants`);
    a mapping of name → record also counts."""
    if isinstance(report, list) and all(isinstance(r, dict) for r in report):
        return report
    if isinstance(report, dict):
        for value in report.values():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                return value
            if isinstance(value, dict) and value and all(isinstance(r, dict)
                                                         for r in value.values()):
                return [{"variant": k, **r} for k, r in value.items()]
    return []


def _flat(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        import json

        return json.dumps(value)
    return value
