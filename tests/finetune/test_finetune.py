"""The finetune stage end to end: a parent trained on one distribution, new data shifted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import make_classification
from sklearn.metrics import accuracy_score

import dlpipe
from dlpipe import runs
from dlpipe.errors import ConfigError, DataError, RunDirError
from dlpipe.runs import RunDir
from helpers import minimal_config

COLUMNS = [f"x{i}" for i in range(8)]
SHIFT = 1.5  # added to four inputs of the new data: the parent's scaling no longer fits them


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One generator, two samples: the parent's rows, and new rows with shifted inputs."""
    x, y = make_classification(n_samples=2400, n_features=8, n_informative=5, random_state=0)
    old = pd.DataFrame(x[:1200], columns=COLUMNS).assign(target=y[:1200])
    new = pd.DataFrame(x[1200:], columns=COLUMNS).assign(target=y[1200:])
    new[COLUMNS[:4]] += SHIFT
    return old, new


def _three_classes(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Three classes, two numeric inputs and a categorical one."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    return pd.DataFrame({"a": label + rng.normal(0, 0.4, n), "b": rng.normal(0, 1, n),
                         "color": rng.choice(["red", "green", "gold"], n), "label": label})


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A batch-normed MLP trained on the unshifted rows."""
    cfg = minimal_config(model={"name": "mlp", "hidden": [32, 16], "norm": "batch"})
    cfg["train"].update(epochs=15, optimizer={"name": "adam", "lr": 1e-2}, threads=1)
    return dlpipe.run(cfg, data=_frames()[0], run_dir=tmp_path_factory.mktemp("p") / "parent")


@pytest.fixture(scope="module")
def multiclass_parent(tmp_path_factory):
    """A linear model on three classes with a categorical input."""
    cfg = minimal_config(data={"target": "label", "split": {"val": 0.2, "test": 0.2}},
                         model={"name": "linear"})
    cfg["train"].update(epochs=5, optimizer={"name": "adam", "lr": 1e-2}, threads=1)
    return dlpipe.run(cfg, data=_three_classes(), run_dir=tmp_path_factory.mktemp("m") / "m")


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "weights.safetensors"))


def test_fine_tuning_on_shifted_data_beats_the_parent_on_the_new_test_split(parent, tmp_path):
    new = _frames()[1]
    result = dlpipe.finetune_from(parent.path, data=new, run_dir=tmp_path / "child")
    before, after = result.before["test"]["accuracy"], result.after["test"]["accuracy"]
    assert after - before >= 0.08, (before, after)  # measured: 0.82 -> 0.98
    # `before` is the parent as it is: the same number its predictor gives on those rows.
    test = result.rundir.read_split("test")
    labels = dlpipe.load(parent.path).predict(test.drop(columns="target")).labels
    assert before == pytest.approx(accuracy_score(test["target"], labels))
    assert result.after["test"] == result.metrics["test"]  # the evaluate stage agrees
    assert result.report["lr"] == pytest.approx(1e-3)  # the parent's 1e-2 / 10
    assert len(result.history) == 5 and result.report["epochs_run"] == 5


def test_frozen_parameters_and_their_statistics_are_byte_identical_after_fine_tuning(
        parent, tmp_path):
    result = dlpipe.finetune_from(parent.path, data=_frames()[1], run_dir=tmp_path / "child",
                             overrides=["finetune.freeze=[block0.*]"])
    old, new = _tensors(parent.path), _tensors(result.path)
    frozen = [name for name in old if name.startswith("block0.")]
    assert set(frozen) == set(result.report["frozen"])
    assert "block0.1.running_var" in frozen
    for name in frozen:
        assert new[name].numpy().tobytes() == old[name].numpy().tobytes(), name
    assert not np.array_equal(new["head.weight"].numpy(), old["head.weight"].numpy())
    assert result.report["parameters"]["frozen"] == sum(
        old[n].numel() for n in frozen if not n.startswith("block0.1.running")
        and not n.endswith("num_batches_tracked"))


def test_the_new_run_records_its_parent_and_its_config_reproduces_it(parent, tmp_path):
    data = tmp_path / "new.csv"
    _frames()[1].to_csv(data, index=False)
    child = dlpipe.finetune_from(parent.path, data=str(data), run_dir=tmp_path / "child",
                            overrides=["finetune.freeze=all_but_head", "finetune.epochs=2"])
    recorded = yaml.safe_load((child.path / "config.yaml").read_text())["finetune"]
    fingerprint = json.loads((parent.path / "fingerprint.json").read_text())
    assert recorded["parent"] == str(parent.path.resolve())
    assert recorded["parent_config_sha256"] == fingerprint["config_sha256"]
    assert recorded["parent_data_sha256"] == fingerprint["data_sha256"]
    assert recorded["lr"] == pytest.approx(1e-3) and recorded["freeze"] == "all_but_head"
    # `dlpipe run` on the recorded config is the same fine-tuning, down to the last bit.
    again = dlpipe.run(child.path / "config.yaml", run_dir=tmp_path / "again")
    first, second = _tensors(child.path), _tensors(again.path)
    assert all(first[k].numpy().tobytes() == second[k].numpy().tobytes() for k in first)


def test_fine_tuning_a_fine_tuned_run_divides_its_rate_again(parent, tmp_path):
    new = _frames()[1]
    child = dlpipe.finetune_from(parent.path, data=new, run_dir=tmp_path / "child",
                            overrides=["finetune.epochs=1"])
    grandchild = dlpipe.finetune_from(child.path, data=new, run_dir=tmp_path / "grandchild",
                                 overrides=["finetune.epochs=1"])
    assert grandchild.report["lr"] == pytest.approx(1e-4)
    assert grandchild.report["parent"] == str(child.path.resolve())


def test_a_parent_changed_since_the_run_was_configured_is_refused(parent, tmp_path):
    copy = tmp_path / "parent"
    shutil.copytree(parent.path, copy)
    data = tmp_path / "new.csv"
    _frames()[1].to_csv(data, index=False)
    child = dlpipe.finetune_from(copy, data=str(data), run_dir=tmp_path / "child",
                            overrides=["finetune.epochs=1"])
    RunDir(copy).write_tensors(runs.WEIGHTS, {k: v * 2 for k, v in _tensors(copy).items()})
    with pytest.raises(RunDirError, match=r"finetune\.parent_weights_sha256: the parent .* has "
                                          r"changed since this run was configured"):
        dlpipe.run(child.path / "config.yaml", run_dir=tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_new_data_without_one_of_the_parent_s_columns_names_it_and_leaves_no_run(
        parent, tmp_path):
    new = _frames()[1].drop(columns="x7")
    with pytest.raises(DataError, match=r"does not fit the parent run .*\n  column 'x7': the "
                                        r"parent's input\(s\) missing from the new data"):
        dlpipe.finetune_from(parent.path, data=new, run_dir=tmp_path / "child")
    assert not (tmp_path / "child").exists()


def test_new_data_with_a_class_the_parent_never_saw_names_the_class(multiclass_parent, tmp_path):
    new = _three_classes(seed=1)
    new.loc[new["label"] == 2, "label"] = 7
    with pytest.raises(DataError, match=r"data\.target: class\(es\) 7 of the new data are not "
                                        r"among the parent's classes \(0, 1, 2\)"):
        dlpipe.finetune_from(multiclass_parent.path, data=new, run_dir=tmp_path / "child")


def test_new_data_with_fewer_classes_fine_tunes_the_parent_s_outputs(multiclass_parent, tmp_path):
    new = _three_classes(seed=1)
    new = new[new["label"] != 2]  # two of the parent's three classes: still multiclass
    result = dlpipe.finetune_from(multiclass_parent.path, data=new, run_dir=tmp_path / "child")
    assert json.loads((result.path / "schema.json").read_text())["classes"] == [0, 1]
    assert dlpipe.load(result.path).classes == [0, 1, 2]
    assert result.after["test"]["accuracy"] >= result.before["test"]["accuracy"]


def test_a_column_of_another_kind_is_named_with_the_setting_that_fixes_it(
        multiclass_parent, tmp_path):
    new = _three_classes(seed=1)
    new["color"] = np.linspace(0, 1, len(new))  # a measurement now, not a category
    with pytest.raises(DataError, match=r"column 'color': numeric in the new data but "
                                        r"categorical for the parent; set "
                                        r"data\.columns\.color: categorical"):
        dlpipe.finetune_from(multiclass_parent.path, data=new, run_dir=tmp_path / "child")


def test_a_regression_parent_fine_tunes_to_a_shifted_target(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.normal(size=800)
    old = pd.DataFrame(x[:400], columns=["a", "b", "c"]).assign(y=y[:400])
    new = pd.DataFrame(x[400:], columns=["a", "b", "c"]).assign(y=y[400:] + 2.0)
    cfg = minimal_config(data={"target": "y", "task": "regression"}, model={"name": "linear"})
    cfg["train"].update(epochs=10, optimizer={"name": "adam", "lr": 5e-2}, threads=1)
    parent = dlpipe.run(cfg, data=old, run_dir=tmp_path / "parent")
    result = dlpipe.finetune_from(parent.path, data=new, run_dir=tmp_path / "child",
                             overrides=["finetune.lr=0.05"])
    assert result.before["test"]["r2"] < 0.6 < 0.9 < result.after["test"]["r2"]  # 0.43, 0.997


def test_refit_features_refits_the_inputs_on_the_new_training_split(parent, tmp_path):
    result = dlpipe.finetune_from(parent.path, data=_frames()[1], run_dir=tmp_path / "child",
                             refit_features=True)
    numeric = json.loads((result.path / "features.json").read_text())["inputs"]["fitted"]
    center = numeric["parts"]["numeric"]["fitted"]["center"]
    train = result.rundir.read_split("train")
    np.testing.assert_allclose(center, train[COLUMNS].mean().to_numpy(), rtol=1e-9)
    parent_features = json.loads((parent.path / "features.json").read_text())
    child_features = json.loads((result.path / "features.json").read_text())
    assert child_features["target"] == parent_features["target"]
    assert result.after["test"]["accuracy"] > result.before["test"]["accuracy"]


def test_refit_features_is_refused_when_the_network_inputs_would_change(
        multiclass_parent, tmp_path):
    new = _three_classes(seed=1)
    new.loc[new.index[::3], "color"] = "blue"
    with pytest.raises(DataError, match=r"finetune\.refit_features: refitting .* changes the "
                                        r"network's inputs .*new: color=blue"):
        dlpipe.finetune_from(multiclass_parent.path, data=new, run_dir=tmp_path / "child",
                        refit_features=True)
    # Without refitting, blue is an unseen category for the parent's encoder: that works.
    result = dlpipe.finetune_from(multiclass_parent.path, data=new, run_dir=tmp_path / "kept")
    assert "test" in result.after


def test_the_model_section_of_a_fine_tuned_run_is_its_parent_s(parent, tmp_path):
    with pytest.raises(ConfigError, match=r"model: a fine-tuned run keeps its parent's network, "
                                          r"but model\.hidden: \[8\] \(parent: \[32, 16\]\)"):
        dlpipe.finetune_from(parent.path, data=_frames()[1], run_dir=tmp_path / "child",
                        overrides=["model.hidden=[8]"])
    assert not (tmp_path / "child").exists()


def test_finetune_from_stays_available_after_the_stage_package_is_imported():
    import dlpipe.finetune as package

    assert dlpipe.finetune is package and callable(dlpipe.finetune_from)
    code = "import sys, dlpipe; print('torch' in sys.modules, callable(dlpipe.finetune_from))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.split() == ["False", "True"]  # and `import dlpipe` stays light


def _dlpipe(*args):
    return subprocess.run([sys.executable, "-m", "dlpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_cli_prints_before_and_after_and_exits_0(parent, tmp_path):
    data = tmp_path / "new.parquet"
    _frames()[1].to_parquet(data)
    done = _dlpipe("finetune", parent.path, "--data", data, "--run-dir", tmp_path / "child",
                   "--set", "finetune.epochs=2", "--refit-features")
    assert done.returncode == 0, done.stderr
    assert "before (parent)" in done.stdout and "accuracy" in done.stdout
    assert f"run directory: {tmp_path / 'child'}" in done.stdout.replace("\n", "")
    report = json.loads((tmp_path / "child" / "finetune.json").read_text())
    assert report["refit_features"] is True and report["epochs_run"] == 2


def test_the_cli_prints_an_error_and_exits_2_for_data_that_does_not_fit(parent, tmp_path):
    data = tmp_path / "new.csv"
    _frames()[1].drop(columns=["x0"]).to_csv(data, index=False)
    done = _dlpipe("finetune", parent.path, "--data", data, "--run-dir", tmp_path / "child")
    assert done.returncode == 2
    assert done.stderr.startswith("error: the new data does not fit the parent run")
    assert "column 'x0'" in done.stderr and "Traceback" not in done.stderr
