"""Each plot function on small data: a Figure with the expected panels and lines, and a PNG."""

import numpy as np
import pandas as pd
import pytest

from dlpipe.report import plots

HISTORY = [{"epoch": e, "step": 10 * e, "train_loss": 1 / e, "val_loss": 1.2 / e,
            "val_accuracy": 0.5 + e / 20, "ema_val_loss": 1.1 / e, "ema_val_accuracy": 0.55,
            "lr": 0.1 / e} for e in range(1, 6)]


def _stats_rows(epochs=4):
    rows = []
    for e in range(1, epochs + 1):
        params = {}
        for name, shape in (("0.weight", [8, 4]), ("0.bias", [8]), ("2.weight", [1, 7]),
                            ("2.bias", [1])):
            params[name] = {"shape": shape, "mean": 0.0, "std": 0.1, "norm": 1.0 + e,
                            "grad_norm": 0.1 / e, "hist": {"min": -1.0, "max": 1.0,
                                                           "counts": [1, 2, 3, 2]}}
        rows.append({"epoch": e, "params": params})
    return rows


def _png_ok(fig):
    png = plots.to_png(fig)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    return png


def _lines(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def test_learning_curves_have_a_loss_panel_and_one_per_metric_with_stop_and_best_marked():
    fig = plots.learning_curves(HISTORY, stop_epoch=5, best_epoch=3)
    loss, accuracy = fig.axes
    assert (loss.get_title(), accuracy.get_title()) == ("loss", "accuracy")
    assert [len(_lines(loss, k)) for k in ("train", "val", "ema val")] == [1, 1, 1]
    assert list(_lines(loss, "val")[0].get_ydata()) == [r["val_loss"] for r in HISTORY]
    assert len(_lines(accuracy, "restored best (epoch 3)")) == 1
    assert _lines(accuracy, "stopped (epoch 5)")[0].get_xdata()[0] == 5
    _png_ok(fig)


def test_learning_rate_is_one_line_per_epoch():
    fig = plots.learning_rate([1, 2, 3], [0.1, 0.05, 0.01])
    (ax,) = fig.axes
    assert list(ax.get_lines()[0].get_ydata()) == [0.1, 0.05, 0.01]
    _png_ok(fig)


def test_weight_histograms_draw_one_panel_per_tensor_and_leave_tiny_ones_out():
    fig = plots.weight_histograms(_stats_rows(), max_epochs=3)
    # 2.bias has 1 value and 2.weight 7 < 2 × 4 bins: a histogram of them says nothing.
    assert [ax.get_title() for ax in fig.axes] == ["0.weight", "0.bias"]
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes)
    assert "2 tensors too small to show" in fig._suptitle.get_text()
    _png_ok(fig)


def test_gradient_norms_have_one_line_per_tensor_in_two_panels():
    fig = plots.gradient_norms(_stats_rows())
    grads, weights = fig.axes
    assert len(grads.get_lines()) == len(weights.get_lines()) == 4
    assert list(_lines(grads, "0.weight")[0].get_ydata()) == pytest.approx([0.1, 0.05, 0.1 / 3,
                                                                           0.025])
    _png_ok(fig)


def test_confusion_matrices_show_counts_and_row_normalized_values():
    fig = plots.confusion_matrices([[5, 1], [2, 8]], ["no", "yes"])
    counts, normalized = fig.axes[0], fig.axes[1]  # then the two colorbars
    assert len(fig.axes) == 4
    assert [t.get_text() for t in counts.texts] == ["5", "1", "2", "8"]
    assert [t.get_text() for t in normalized.texts] == ["0.83", "0.17", "0.20", "0.80"]
    _png_ok(fig)


def test_roc_and_pr_curves_draw_one_line_per_class_with_the_area_in_the_legend():
    roc = [{"label": "a", "auc": 0.9, "fpr": [0, 0.2, 1], "tpr": [0, 0.8, 1]},
           {"label": "b", "auc": 0.7, "fpr": [0, 0.5, 1], "tpr": [0, 0.6, 1]}]
    fig = plots.roc_curves(roc)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a (AUC 0.900)", "b (AUC 0.700)"]
    assert len(fig.axes[0].get_lines()) == 3  # two curves and the chance diagonal
    _png_ok(fig)
    pr = [{"label": "a", "average_precision": 0.8, "prevalence": 0.3, "recall": [0, 0.5, 1],
           "precision": [1, 0.8, 0.3]}]
    fig = plots.pr_curves(pr)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a (AP 0.800)"]
    _png_ok(fig)


def test_calibration_has_the_reliability_line_and_the_counts_per_bin():
    data = {"kind": "positive class", "bins": 10, "prob_pred": [0.1, 0.5, 0.9],
            "prob_true": [0.2, 0.5, 0.8], "counts": [10, 4, 6]}
    fig = plots.calibration(data)
    reliability, counts = fig.axes
    assert list(_lines(reliability, "positive class")[0].get_ydata()) == [0.2, 0.5, 0.8]
    assert [p.get_height() for p in counts.patches] == [10, 4, 6]
    _png_ok(fig)


def test_regression_diagnostics_plot_every_point_and_its_residual():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 1.5, 3.0, 5.0])
    fig = plots.regression_diagnostics(y, p)
    scatter, residuals, _ = fig.axes
    np.testing.assert_array_equal(scatter.collections[0].get_offsets(), np.c_[y, p])
    np.testing.assert_array_equal(residuals.collections[0].get_offsets()[:, 1], y - p)
    _png_ok(fig)


def test_class_balance_has_a_bar_per_class_and_split():
    fig = plots.class_balance({"train": {"0": 30, "1": 10}, "val": {"0": 6, "1": 2}},
                              {"0": 30, "1": 10}, {"0": 30, "1": 30}, method="oversample")
    splits, resampling = fig.axes
    assert [p.get_height() for p in splits.patches] == [30, 10, 6, 2]
    assert [p.get_height() for p in resampling.patches] == [30, 10, 30, 30]
    assert resampling.get_title() == "training split, resampling: oversample"
    _png_ok(fig)


def test_missing_and_outliers_list_only_columns_that_have_any():
    fig = plots.missing_and_outliers({"a": 3, "b": 0, "c": 7}, {})
    missing, outliers = fig.axes
    assert [p.get_width() for p in missing.patches] == [3, 7]
    assert outliers.get_title() == "values outside the outlier bounds: none"
    _png_ok(fig)


def test_feature_distributions_overlay_train_and_test_for_numbers_and_categories():
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=200), "color": rng.choice(["r", "g"], 200)})
    test = pd.DataFrame({"x": rng.normal(1, size=80), "color": rng.choice(["r", "g"], 80)})
    fig = plots.feature_distributions(train, test, ["x", "color"], notes={"x": "shift 0.4"})
    x, color = fig.axes
    assert x.get_title() == "x\nshift 0.4"
    assert len(x.patches) == 2  # one filled step patch per split
    assert len(color.patches) == 4  # two categories × two splits
    _png_ok(fig)


def test_optimization_history_tracks_the_best_complete_value():
    fig = plots.optimization_history([0, 1, 2, 3], [0.5, 0.7, None, 0.6],
                                     ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"], maximize=True)
    (ax,) = fig.axes
    best = _lines(ax, "best so far")[0]
    assert list(best.get_ydata()) == [0.5, 0.7, 0.7, 0.7]
    _png_ok(fig)


def test_param_importances_are_bars_largest_on_top():
    fig = plots.param_importances({"lr": 0.7, "dropout": 0.1, "batch": 0.2})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dropout", "batch", "lr"]
    _png_ok(fig)


def test_overlaid_learning_curves_draw_one_line_per_run_per_key():
    fig = plots.overlaid_learning_curves({"a": HISTORY, "b": HISTORY[:3]},
                                         ["val_loss", "val_accuracy"])
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert len(_lines(fig.axes[0], "b")[0].get_xdata()) == 3
    _png_ok(fig)
