"""The report stage: one self-contained page per run, its plots as PNG, and the compare page."""

import base64
import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import dlpipe
from dlpipe import runs
from dlpipe.errors import DlpipeError
from dlpipe.report import compare, write_report
from dlpipe.report.html import fmt
from helpers import minimal_config


class Page(HTMLParser):
    """What a test needs from a page: tags with their attributes, metric cells, section ids."""

    def __init__(self, text):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: dict[str, tuple[str, str]] = {}
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "td" and "data-metric" in attrs:
            self._cell = (attrs["data-metric"], attrs["data-value"], [])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2].append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            key, value, text = self._cell
            self.cells[key] = (value, "".join(text))
            self._cell = None

    def attrs(self, tag):
        return [a for t, a in self.tags if t == tag]


def _run(tmp_path_factory, name, source):
    folder = tmp_path_factory.mktemp("report") / name
    return dlpipe.run(minimal_config(data={"source": source, "split": {"val": 0.2, "test": 0.2}},
                                     report={"enabled": True}),
                      run_dir=folder)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return _run(tmp_path_factory, "binary", {"builtin": "make_classification", "params": {
        "n_samples": 300, "n_features": 6, "random_state": 0}})


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    return _run(tmp_path_factory, "multiclass", {"builtin": "iris"})


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    return _run(tmp_path_factory, "regression", {"builtin": "make_regression", "params": {
        "n_samples": 200, "n_features": 4, "random_state": 0}})


def _page(result):
    return result.rundir.file(runs.REPORT).read_text()


def _plots(result):
    return sorted(p.stem for p in (result.path / runs.PLOTS.filename).glob("*.png"))


def test_the_report_is_one_self_contained_file(binary):
    text = _page(binary)
    page = Page(text)
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, value[:60])
    assert not page.attrs("script") and not page.attrs("link") and not page.attrs("iframe")
    assert "url(" not in text and "@import" not in text


def test_every_metric_of_metrics_json_is_in_the_page_with_its_exact_value(binary):
    cells = Page(_page(binary)).cells
    metrics = binary.rundir.read_json(runs.METRICS)
    expected = {f"{split}.{name}": value for split in ("val", "test")
                for name, value in metrics[split].items() if not isinstance(value, list)}
    assert set(cells) == set(expected)
    for key, value in expected.items():
        raw, shown = cells[key]
        assert (None if raw == "null" else float(raw)) == value, key
        assert shown == fmt(value), key


def test_each_embedded_image_is_also_a_png_under_plots(binary):
    embedded = sorted(base64.b64decode(a["src"].split(",", 1)[1])
                      for a in Page(_page(binary)).attrs("img"))
    files = sorted((binary.path / "plots").glob("*.png"))
    assert embedded == sorted(p.read_bytes() for p in files)
    assert {"learning_curves", "weight_histograms", "gradient_norms", "confusion_matrix", "roc",
            "precision_recall", "calibration", "class_balance",
            "feature_distributions"} <= set(_plots(binary))


def test_the_report_has_the_sections_of_the_run_and_times_itself(binary):
    ids = [a["id"] for a in Page(_page(binary)).attrs("section")]
    assert ids == ["overview", "data", "training", "evaluation"]
    assert "report" in binary.rundir.read_json(runs.RUN_INFO)["stages"]
    text = _page(binary)
    assert "Worst-predicted examples (top 10" in text


def test_multiclass_and_regression_runs_get_the_plots_of_their_task(multiclass, regression):
    assert {"roc", "precision_recall", "confusion_matrix", "calibration"} <= set(
        _plots(multiclass))
    curves = multiclass.rundir.read_json(runs.CURVES)
    assert [c["label"] for c in curves["roc"]] == ["0", "1", "2"]
    assert "regression" in _plots(regression)
    assert not {"roc", "confusion_matrix", "class_balance"} & set(_plots(regression))
    text = _page(regression)
    assert "Residuals" in text and "Per class" not in text


def test_tuning_and_compression_sections_appear_when_their_files_exist(binary, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(binary.path, copy)
    (copy / "tune").mkdir()
    rows = ["number,state,value,duration_s,epochs,best_epoch,train.optimizer.lr,model.hidden,"
            "fail_reason"]
    for i in range(8):
        state = "PRUNED" if i == 5 else "COMPLETE"
        hidden = f'"[{8 * (i % 2 + 1)}]"'
        rows.append(f"{i},{state},{0.5 + 0.04 * i},1.0,3,2,{10 ** -(i % 4)},{hidden},")
    (copy / "tune" / "trials.csv").write_text("\n".join(rows) + "\n")
    (copy / "tune" / "summary.json").write_text(json.dumps({
        "trials": 8, "states": {"COMPLETE": 7, "PRUNED": 1}, "epochs_trained": 24,
        "best": {"number": 7, "value": 0.78, "epochs": 3}}))
    (copy / "compress").mkdir()
    (copy / "compress" / "report.json").write_text(json.dumps({
        "metric": "accuracy", "max_metric_drop": 0.005, "chosen": {"fp32": None, "int8": "int8"},
        "variants": [
            {"name": "original", "file_bytes": 4000, "latency_ms_b1": 0.2, "val": 0.9},
            {"name": "int8", "file_bytes": 1100, "latency_ms_b1": 0.1, "val": 0.89},
            {"name": "prune-0.80", "file_bytes": 4000, "val": 0.7, "accepted": False}]}))
    write_report(copy)
    text = (copy / "report.html").read_text()
    assert [a["id"] for a in Page(text).attrs("section")][-2:] == ["tuning", "compression"]
    assert {"tune_history", "tune_importances"} <= {p.stem for p in (copy / "plots").glob("*")}
    assert "<td>1100</td>" in text and "<td>int8 ★</td>" in text and "prune-0.80 ✗" in text
    assert "all 8 trials" in text


def test_regenerating_removes_plots_the_run_no_longer_has(binary, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(binary.path, copy)
    (copy / "plots" / "stale.png").write_bytes(b"old")
    (copy / runs.PARAM_STATS.filename).unlink()
    write_report(copy)
    names = {p.stem for p in (copy / "plots").glob("*.png")}
    assert "stale" not in names and "weight_histograms" not in names and "roc" in names


def test_compare_shows_config_differences_metrics_and_overlaid_curves(binary, tmp_path):
    other = dlpipe.run(minimal_config(report={"enabled": True},
                                         data=binary.rundir.read_yaml(runs.CONFIG)["data"],
                                      train={"epochs": 2, "batch_size": 16, "progress": "never"}),
                       run_dir=tmp_path / "other", stages=("data", "features", "train",
                                                           "evaluate"))
    path = compare([binary.path, other.path], tmp_path / "compare.html")
    page = Page(path.read_text())
    text = path.read_text()
    assert "train.batch_size" in text and "train.epochs" in text and "model.hidden" not in text
    for run, result in (("binary", binary), ("other", other)):
        for name, value in result.metrics["test"].items():
            if not isinstance(value, list):
                raw, _ = page.cells[f"{run}.test.{name}"]
                assert (None if raw == "null" else float(raw)) == value
    assert len(page.attrs("img")) == 1
    with pytest.raises(DlpipeError, match=r"compare: give at least two run directories; got 1"):
        compare([binary.path], tmp_path / "one.html")


@pytest.mark.slow  # two fresh processes: ~15 s
def test_the_cli_regenerates_a_report_and_compares_runs(binary, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(binary.path, copy)
    (copy / "report.html").unlink()
    done = subprocess.run([sys.executable, "-m", "dlpipe", "report", str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (copy / "report.html").exists() and "report written to" in done.stdout
    out = tmp_path / "cmp.html"
    done = subprocess.run([sys.executable, "-m", "dlpipe", "compare", str(binary.path),
                           str(copy), "-o", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "The runs have the same config" in out.read_text()


def test_fmt_rounds_to_four_places_and_keeps_tiny_and_huge_numbers_readable():
    assert fmt(0.97368421) == "0.9737" and fmt(12) == "12" and fmt(None) == "—"
    assert fmt(1.5e-6) == "1.5e-06" and fmt(2.5e7) == "2.5e+07" and fmt(math.nan) == "nan"


def test_a_run_with_only_its_data_stage_still_gets_a_report(tmp_path):
    result = dlpipe.run(minimal_config(), run_dir=tmp_path / "run", stages=("data",))
    text = write_report(result.path).read_text()
    assert "The train stage has not run." in text and "The evaluate stage has not run." in text
    assert _plots(result) == ["class_balance", "feature_distributions"]


def test_a_logger_missing_here_is_a_warning_naming_the_extra_and_the_report_is_written(
        binary, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(binary.path, copy)
    (copy / runs.LOGGERS.filename).write_text(json.dumps(
        {"mlflow": {"tracking_uri": "sqlite:///x.db", "run_id": "abc"}}))
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.warns(UserWarning, match=r"loggers\.json names mlflow, which is not installed "
                                         r"here.*pip install 'dlpipe\[mlflow\]'"):
        path = write_report(copy)
    assert path.exists()


def test_a_fine_tuned_run_reports_the_rate_and_epochs_it_trained_with():
    from dlpipe.report._sections import trained_with

    config = {"train": {"epochs": 30, "optimizer": {"name": "adamw", "lr": 3e-4}}}
    train = trained_with(config, {"lr": 3e-4 / 10, "epochs": 5})
    assert train["optimizer"] == {"name": "adamw", "lr": 3e-5} and train["epochs"] == 5
    assert trained_with(config, None) == config["train"]
