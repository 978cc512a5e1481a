"""The report's plots: each a function from plain data (lists, dicts, frames) to a matplotlib
`Figure`, rendered by the Agg backend without pyplot (no global state, no display needed).

matplotlib is imported inside the functions, so importing this module costs nothing. This
file holds every plot of a run and of a comparison, so it is longer than most (~440 lines);
each function is short and independent.

Example:
    >>> fig = learning_curves(rundir.read_jsonl(runs.HISTORY), stop_epoch=40, best_epoch=31)
    >>> png = to_png(fig)
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "calibration", "class_balance", "confusion_matrices", "feature_distributions",
    "gradient_norms", "learning_curves", "learning_rate", "missing_and_outliers",
    "optimization_history", "overlaid_learning_curves", "param_importances", "pr_curves",
    "regression_diagnostics", "roc_curves", "to_png", "weight_histograms",
]

DPI = 80
"""Resolution of the PNGs: sharp enough on screen, small enough to embed a dozen."""

MAX_PANELS = 12
"""Most panels in one grid figure (parameter tensors)."""

_STOP = {"color": "tab:red", "linestyle": "--", "linewidth": 1}
_BEST = {"color": "tab:green", "linestyle": ":", "linewidth": 1.5}


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _grid(n: int, *, ncols: int = 3, width: float = 4.0, height: float = 3.0,
          title: str | None = None, left: float = 0.7,
          bottom: float = 0.55) -> tuple[Figure, list[Axes]]:
    """A figure of `n` panels, `width` × `height` inches each, in rows of at most `ncols`.

    Margins are fixed in inches (`left` for y tick labels, `bottom` for x labels) rather than
    computed by a layout engine, which measures every tick label and doubles the time to
    render a figure; the report's plots are simple enough for fixed margins.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(n, 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    top = 0.35 + (0.35 if title else 0.0)  # inches above the first row of panels
    # A title needs room: a single narrow panel would cut it.
    size = (max(width * ncols, 6.4 if title else 0.0), height * nrows + (0.35 if title else 0))
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    panel_w = (size[0] - left - 0.2) / ncols
    panel_h = (size[1] - top - bottom) / nrows
    fig.subplots_adjust(left=left / size[0], right=1 - 0.2 / size[0], bottom=bottom / size[1],
                        top=1 - top / size[1],
                        wspace=min(left / max(panel_w - left, 0.5), 1.0),
                        hspace=min((bottom + 0.35) / max(panel_h - bottom - 0.35, 0.5), 1.5))
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    if title:
        fig.suptitle(title, y=1 - 0.12 / size[1], va="top")
    return fig, axes


def _log_y(ax: Axes) -> None:
    """A log y axis labelled in plain numbers (minor ticks too when it spans little): the
    default 10^k labels go through mathtext, the slowest part of drawing such a figure.
    Call it after plotting."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    few_decades = low > 0 and math.log10(high / low) < 1.5
    ax.yaxis.set_minor_formatter(plain if few_decades else NullFormatter())


def _epochs_axis(ax: Axes) -> None:
    """Whole epochs (or trials) on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_epochs(ax: Axes, stop_epoch: int | None, best_epoch: int | None) -> None:
    if stop_epoch is not None:
        ax.axvline(stop_epoch, label=f"stopped (epoch {stop_epoch})", **_STOP)
    if best_epoch is not None:
        ax.axvline(best_epoch, label=f"restored best (epoch {best_epoch})", **_BEST)


# -- training -------------------------------------------------------------------------------


def learning_curves(history: Sequence[Mapping[str, Any]], *, stop_epoch: int | None = None,
                    best_epoch: int | None = None) -> Figure:
    """Loss and each logged metric per epoch, train against validation (and the weight
    average's `ema_` values), with the early-stopping stop and the restored epoch marked.

    One panel for the loss, then one per metric (`accuracy`, `r2`, ...), each with the
    `train_` and `val_` values the history holds.
    """
    epochs = [row["epoch"] for row in history]
    keys = {k for row in history for k in row}
    metrics = sorted({k.removeprefix("val_").removeprefix("train_") for k in keys
                      if k.startswith(("val_", "train_")) and k not in ("val_loss", "train_loss")})
    fig, axes = _grid(1 + len(metrics))
    for ax, name in zip(axes, ["loss", *metrics], strict=True):
        for prefix, style in (("train_", "-"), ("val_", "-"), ("ema_val_", "--")):
            key = f"{prefix}{name}"
            if key in keys:
                ax.plot(epochs, [_num(row.get(key)) for row in history], style,
                        label=prefix.rstrip("_").replace("_", " ") or key)
        _mark_epochs(ax, stop_epoch, best_epoch)
        ax.set(title=name, xlabel="epoch")
        _epochs_axis(ax)
        ax.legend(fontsize="small")
    return fig


def learning_rate(epochs: Sequence[int], rates: Sequence[float]) -> Figure:
    """The learning rate at the end of each epoch."""
    fig, (ax,) = _grid(1, width=6.0)
    ax.plot(epochs, rates, marker="." if len(epochs) < 50 else None)
    ax.set(title="learning rate", xlabel="epoch")
    _epochs_axis(ax)
    if len(rates) and min(rates) > 0 and max(rates) / min(rates) > 100:
        _log_y(ax)
    return fig


def weight_histograms(rows: Sequence[Mapping[str, Any]], *, max_epochs: int = 6) -> Figure:
    """Each parameter tensor's weight distribution at up to `max_epochs` epochs spread over
    training (param_stats.jsonl rows), one panel per tensor, later epochs darker."""
    from matplotlib import colormaps

    params = rows[0]["params"] if rows else {}
    # A histogram of a handful of values (a head's single bias) says nothing.
    names = [n for n, p in params.items() if math.prod(p["shape"]) >= 2 * len(p["hist"]["counts"])]
    shown = names[:MAX_PANELS]
    picks = sorted({round(i) for i in np.linspace(0, len(rows) - 1, min(max_epochs, len(rows)))})
    notes = []
    if len(params) > len(names):
        notes.append(f"{len(params) - len(names)} tensors too small to show")
    if len(names) > len(shown):
        notes.append(f"the first {len(shown)} of {len(names)} shown")
    title = "weights per layer" + (f" ({'; '.join(notes)})" if notes else "")
    fig, axes = _grid(len(shown), ncols=4, width=3.2, height=2.4, left=0.55, title=title)
    cmap = colormaps["viridis"]
    for ax, name in zip(axes, shown, strict=False):
        for j, i in enumerate(picks):
            hist = rows[i]["params"][name]["hist"]
            counts = np.asarray(hist["counts"], dtype=float)
            edges = np.linspace(hist["min"], hist["max"], len(counts) + 1)
            share = counts / max(counts.sum(), 1.0)
            ax.plot((edges[:-1] + edges[1:]) / 2, share, color=cmap(j / max(len(picks) - 1, 1)),
                    label=f"epoch {rows[i]['epoch']}")
        ax.set_title(name, fontsize="small")
        ax.tick_params(labelsize="x-small")
    if shown:
        axes[0].legend(fontsize="x-small")
    return fig


def gradient_norms(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Gradient L2 norm (at each epoch's last step) and weight L2 norm of every parameter
    tensor across epochs."""
    epochs = [row["epoch"] for row in rows]
    names = list(rows[0]["params"]) if rows else []
    fig, axes = _grid(2, ncols=2, width=5.0, height=3.4)
    for ax, key, title in ((axes[0], "grad_norm", "gradient norm"),
                           (axes[1], "norm", "weight norm")):
        for name in names:
            ax.plot(epochs, [_num(row["params"][name].get(key)) for row in rows], label=name)
        ax.set(title=title, xlabel="epoch")
        _log_y(ax)
        _epochs_axis(ax)
    if 0 < len(names) <= 12:
        axes[1].legend(fontsize="x-small")
    return fig


# -- evaluation -----------------------------------------------------------------------------


def confusion_matrices(counts: Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Confusion matrix as counts and normalized by true class (rows true, columns predicted)."""
    matrix = np.asarray(counts, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = min(3.0 + 0.35 * len(labels), 8.0)
    fig, axes = _grid(2, ncols=2, width=size + 0.8, height=size)
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "{:.0f}"),
                                   (axes[1], normalized, "normalized by true class", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ticks = range(len(labels))
        ax.set(title=title, xlabel="predicted", ylabel="true", xticks=ticks, yticks=ticks)
        ax.set_xticklabels(labels, rotation=45 if len(labels) > 4 else 0, fontsize="small")
        ax.set_yticklabels(labels, fontsize="small")
        if len(labels) <= 15:
            high = values.max() if values.size else 0
            for (r, c), v in np.ndenumerate(values):
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize="small",
                        color="white" if v > high / 2 else "black")
    return fig


def roc_curves(curves: Sequence[Mapping[str, Any]]) -> Figure:
    """ROC curves (one per class, one-vs-rest, or the positive class) with their AUC."""
    fig, (ax,) = _grid(1, width=5.0, height=4.2)
    for curve in curves:
        ax.plot(curve["fpr"], curve["tpr"], label=f"{curve['label']} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="small", loc="lower right")
    return fig


def pr_curves(curves: Sequence[Mapping[str, Any]]) -> Figure:
    """Precision-recall curves with average precision, and each class's prevalence (the
    precision of a random ranking) as a dotted line."""
    fig, (ax,) = _grid(1, width=5.0, height=4.2)
    for curve in curves:
        (line,) = ax.plot(curve["recall"], curve["precision"],
                          label=f"{curve['label']} (AP {curve['average_precision']:.3f})")
        ax.axhline(curve["prevalence"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set(title="precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1),
           ylim=(0, 1.02))
    ax.legend(fontsize="small", loc="lower left")
    return fig


def calibration(data: Mapping[str, Any]) -> Figure:
    """Reliability diagram (observed frequency against mean predicted probability per bin),
    and how many examples fall in each bin."""
    fig, axes = _grid(2, ncols=2, width=4.2, height=3.6)
    prob_pred, prob_true = data["prob_pred"], data["prob_true"]
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    axes[0].plot(prob_pred, prob_true, marker="o", label=data.get("kind", "model"))
    axes[0].set(title="calibration", xlabel="mean predicted probability",
                ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    axes[0].legend(fontsize="small")
    axes[1].bar(prob_pred, data["counts"], width=0.8 / data.get("bins", 10))
    axes[1].set(title="examples per bin", xlabel="mean predicted probability", xlim=(0, 1))
    return fig


def regression_diagnostics(true: Sequence[float], predicted: Sequence[float]) -> Figure:
    """Predicted against true (with the identity line), residuals against predicted, and the
    residual histogram."""
    y, p = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    residual = y - p
    fig, axes = _grid(3, width=3.8, height=3.4)
    alpha = 0.6 if len(y) < 500 else 0.25
    axes[0].scatter(y, p, s=8, alpha=alpha)
    if len(y):
        low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        axes[0].plot([low, high], [low, high], color="grey", linestyle=":")
    axes[0].set(title="predicted vs true", xlabel="true", ylabel="predicted")
    axes[1].scatter(p, residual, s=8, alpha=alpha)
    axes[1].axhline(0, color="grey", linestyle=":")
    axes[1].set(title="residuals", xlabel="predicted", ylabel="true − predicted")
    counts, edges = np.histogram(residual, bins=30)
    axes[2].stairs(counts, edges, fill=True)
    axes[2].set(title="residual distribution", xlabel="true − predicted")
    return fig


# -- data -----------------------------------------------------------------------------------


def class_balance(splits: Mapping[str, Mapping[str, int]],
                  before: Mapping[str, int] | None = None,
                  after: Mapping[str, int] | None = None, *, method: str = "none") -> Figure:
    """Class counts per split, and the training split before and after resampling."""
    fig, axes = _grid(2, ncols=2, width=4.6, height=3.2)
    _grouped_bars(axes[0], {s: dict(c) for s, c in splits.items()})
    axes[0].set(title="classes per split", ylabel="rows")
    if before is not None and after is not None:
        _grouped_bars(axes[1], {"before": dict(before), "after": dict(after)})
    axes[1].set(title=f"training split, resampling: {method}", ylabel="rows")
    return fig


def missing_and_outliers(missing: Mapping[str, int], outliers: Mapping[str, int]) -> Figure:
    """Missing values and outliers per column (all splits together), the largest first."""
    fig, axes = _grid(2, ncols=2, width=5.2, height=3.4, left=1.5)
    for ax, counts, title in ((axes[0], missing, "missing values"),
                              (axes[1], outliers, "values outside the outlier bounds")):
        top = sorted(((v, k) for k, v in counts.items() if v), reverse=True)[:20]
        ax.set_title(title if top else f"{title}: none")
        if not top:
            ax.set_axis_off()
            continue
        ax.barh([k for _, k in top][::-1], [v for v, _ in top][::-1])
        ax.tick_params(axis="y", labelsize="x-small")
    return fig


def feature_distributions(train: pd.DataFrame, test: pd.DataFrame, columns: Sequence[str],
                          *, notes: Mapping[str, str] | None = None) -> Figure:
    """Train against test distribution of each column: density histograms for numbers, the
    share of each of the most frequent values otherwise. `notes` go in the panel titles."""
    fig, axes = _grid(len(columns), ncols=4, width=3.2, height=2.6, left=0.5, bottom=0.7,
                      title="feature distributions, train vs test")
    for ax, name in zip(axes, columns, strict=False):
        a, b = train[name].dropna(), test[name].dropna()
        if _is_number(a) and a.nunique() > 10:
            edges = np.histogram_bin_edges(np.concatenate([a.to_numpy(float),
                                                           b.to_numpy(float)]), bins=25)
            for values, label in ((a, "train"), (b, "test")):
                # One patch per histogram (ax.hist draws one per bin: slow to render).
                density, _ = np.histogram(values.to_numpy(float), bins=edges, density=True)
                ax.stairs(density, edges, fill=True, alpha=0.5, label=label)
        else:
            a, b = a.map(_label), b.map(_label)
            top = a.value_counts(normalize=True).index[:10].tolist()
            x = np.arange(len(top))
            for offset, (frame, label) in zip((-0.2, 0.2), ((a, "train"), (b, "test")),
                                              strict=True):
                share = frame.value_counts(normalize=True)
                ax.bar(x + offset, [share.get(v, 0.0) for v in top], width=0.4, label=label)
            ax.set_xticks(x, top, rotation=45 if len(top) > 3 else 0, fontsize="x-small")
        note = (notes or {}).get(name)
        ax.set_title(f"{name}\n{note}" if note else name, fontsize="small")
        ax.tick_params(labelsize="x-small")
    if len(columns):
        axes[0].legend(fontsize="x-small")
    return fig


# -- tuning and comparison ------------------------------------------------------------------


def optimization_history(numbers: Sequence[int], values: Sequence[float | None],
                         states: Sequence[str], *, maximize: bool) -> Figure:
    """Each trial's objective value and the best so far (complete trials only count)."""
    fig, (ax,) = _grid(1, width=6.4, height=3.6)
    state_names = [str(s).upper() for s in states]
    for state, color in (("COMPLETE", "tab:blue"), ("PRUNED", "tab:grey")):
        picked = [(n, v) for n, v, s in zip(numbers, values, state_names, strict=True)
                  if s == state and v is not None and not math.isnan(v)]
        if picked:
            ax.scatter(*zip(*picked, strict=True), s=14, color=color, label=state.lower())
    best, line = None, []
    for n, v, s in zip(numbers, values, state_names, strict=True):
        if s == "COMPLETE" and v is not None and not math.isnan(v):
            best = v if best is None else (max(best, v) if maximize else min(best, v))
        line.append((n, best))
    if any(b is not None for _, b in line):
        ax.step(*zip(*[(n, b) for n, b in line if b is not None], strict=True), where="post",
                color="tab:red", label="best so far")
    ax.set(title="optimization history", xlabel="trial", ylabel="objective")
    _epochs_axis(ax)
    ax.legend(fontsize="small")
    return fig


def param_importances(importances: Mapping[str, float]) -> Figure:
    """Horizontal bars of each searched parameter's importance, the largest on top."""
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    fig, (ax,) = _grid(1, width=6.0, height=1.2 + 0.35 * max(len(ordered), 1), left=1.9)
    ax.barh([k for k, _ in ordered], [v for _, v in ordered])
    ax.set(title="parameter importances", xlabel="importance")
    ax.tick_params(axis="y", labelsize="small")
    return fig


def overlaid_learning_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                             keys: Sequence[str]) -> Figure:
    """One panel per history key (`val_loss`, `val_accuracy`, ...), one line per run."""
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys, strict=False):
        for run, history in histories.items():
            rows = [r for r in history if key in r]
            ax.plot([r["epoch"] for r in rows], [_num(r[key]) for r in rows], label=run)
        ax.set(title=key, xlabel="epoch")
        _epochs_axis(ax)
        ax.legend(fontsize="x-small")
    return fig


# -- helpers --------------------------------------------------------------------------------


def _grouped_bars(ax: Axes, groups: Mapping[str, Mapping[str, int]]) -> None:
    labels = sorted({k for counts in groups.values() for k in counts}, key=_natural)
    x = np.arange(len(labels))
    width = 0.8 / max(len(groups), 1)
    for i, (name, counts) in enumerate(groups.items()):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, [counts.get(k, 0) for k in labels],
               width=width, label=name)
    ax.set_xticks(x, labels, fontsize="small", rotation=45 if len(labels) > 6 else 0)
    ax.legend(fontsize="x-small")


def _label(value: Any) -> str:
    """A category as a short label: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _natural(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _is_number(series: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
