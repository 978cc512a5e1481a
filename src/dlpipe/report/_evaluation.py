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
from dlpipe.report._examples import worst_examples
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
    parts += worst_examples(rundir, curves)
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
        space = ((read(rundir, runs.CONFIG) or {}).get("tune") or {}).get("space") or {}
        importances, method = param_importances(trials, params, value, state, space=space)
        if importances:
            parts.append(figs.add("tune_importances", plots.param_importances(importances),
                                  "parameter importances", _METHODS[method]))
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


FANOVA = "fanova"
FOREST = "forest"
_METHODS = {
    FANOVA: "fANOVA importances (Optuna's FanovaImportanceEvaluator): each parameter's share "
            "of the objective's variance, from the complete trials.",
    FOREST: "Impurity importances of a random forest fitted to the complete trials' objective "
            "values (Optuna is not installed, or its fANOVA evaluator could not be used).",
}


def param_importances(trials: Any, params: Sequence[str], value: str, state: Any, *,
                      space: Mapping[str, Any] | None = None,
                      method: str = "auto") -> tuple[dict[str, float], str]:
    """Each parameter's importance for the objective, from the complete trials (at least 4).

    Args:
        trials: the trials table (tune/trials.csv).
        params: its columns of searched parameters.
        value: its column of objective values.
        state: each trial's state (only ``COMPLETE`` trials count).
        space: the config's `tune.space` (ranges, log scales), by parameter column; ranges
            are taken from the trials' values where it is missing.
        method: ``fanova`` (Optuna's `FanovaImportanceEvaluator`), ``forest`` (a random
            forest's impurity importances), or ``auto``: fanova when Optuna is installed and
            fits the trials, else the forest.

    Returns:
        (importances by parameter name, the method used); ({}, method) when there is too
        little to learn from.

    Example:
        >>> param_importances(trials, ["train.optimizer.lr"], "value", trials["state"])
        ({'train.optimizer.lr': 1.0}, 'fanova')
    """
    done = trials[(state.str.upper() == "COMPLETE").to_numpy() & trials[value].notna()]
    if method not in ("auto", FANOVA, FOREST):
        raise ValueError(f"method must be auto, fanova or forest; got {method!r}")
    if len(done) < 4 or not params:
        return {}, FOREST if method == FOREST else FANOVA
    names = [p.removeprefix("params_").removeprefix("params.") for p in params]
    if method != FOREST:
        try:
            found = _fanova(done, params, names, value, space or {})
        except ImportError:
            if method == FANOVA:
                raise
        except (ValueError, RuntimeError, TypeError):  # a space Optuna cannot describe
            if method == FANOVA:
                raise
        else:
            return found, FANOVA
    return _forest(done, params, names, value), FOREST


def _forest(done: Any, params: Sequence[str], names: Sequence[str],
            value: str) -> dict[str, float]:
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor

    x = pd.DataFrame({p: _codes(done[p]) for p in params})
    forest = RandomForestRegressor(n_estimators=64, random_state=0).fit(x, done[value])
    return dict(zip(names, (float(v) for v in forest.feature_importances_), strict=True))


def _fanova(done: Any, params: Sequence[str], names: Sequence[str], value: str,
            space: Mapping[str, Any]) -> dict[str, float]:
    """fANOVA over an in-memory study rebuilt from the trials table (no storage touched)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    distributions = {name: _distribution(done[p], space.get(p) or space.get(name) or {})
                     for p, name in zip(params, names, strict=True)}
    varying = {n: d for n, d in distributions.items() if not d.single()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(direction="minimize", storage=None)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, trial in done.iterrows():
        values = {n: _param_value(trial[p], distributions[n])
                  for p, n in zip(params, names, strict=True) if n in varying}
        present = {n: v for n, v in values.items() if v is not None}
        study.add_trial(optuna.trial.create_trial(
            params=present, distributions={n: varying[n] for n in present},
            value=float(trial[value])))
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                  params=list(varying) or None, normalize=True)
    return {n: float(found.get(n, 0.0)) for n in names}


def _distribution(column: Any, spec: Mapping[str, Any]) -> Any:
    """The Optuna distribution of one parameter: the config's range when given, else the
    trials' own range (numbers) or values (anything else, as text)."""
    import pandas as pd
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    log = bool(spec.get("log", False))
    step = spec.get("step")
    if spec.get("float") is not None:
        low, high = spec["float"]
        return FloatDistribution(float(low), float(high), log=log,
                                 step=None if step is None else float(step))
    if spec.get("int") is not None:
        low, high = spec["int"]
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    numeric = pd.to_numeric(column, errors="coerce")
    if not spec.get("choice") and column.notna().any() and numeric[column.notna()].notna().all():
        return FloatDistribution(float(numeric.min()), float(numeric.max()))
    return CategoricalDistribution(sorted({str(v) for v in column.dropna()}))


def _param_value(value: Any, distribution: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(distribution, CategoricalDistribution):
        return str(value)
    return int(value) if isinstance(distribution, IntDistribution) else float(value)


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
