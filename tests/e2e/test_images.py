"""Image columns through the whole pipeline: sources, preprocessing, the CNN, predict on raw
images, export, and the bad inputs the CLI must refuse with exit 2 and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dlpipe
from dlpipe.errors import ConfigError, DataError
from helpers import minimal_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# A CNN small enough for a few-second run on 8x8 digits ("same" padding keeps the size).
SMALL_CNN = {"name": "cnn", "pool": "avg", "hidden": [32], "dropout": 0.1,
             "blocks": [{"channels": 16, "kernel": 3, "padding": "same", "batch_norm": True,
                         "pool": "max"},
                        {"channels": 32, "kernel": 3, "padding": "same", "batch_norm": True}]}


def digits_config(**train):
    """Digits as 8x8 images and SMALL_CNN; keyword arguments replace train settings."""
    return minimal_config(
        data={"source": {"builtin": "digits", "params": {"as_images": True}},
              "split": {"val": 0.15, "test": 0.2}},
        model=SMALL_CNN,
        train={"epochs": 8, "batch_size": 64, "progress": "never",
               "optimizer": {"name": "adamw", "lr": 0.005}, **train})


def write_pngs(folder: Path, classes: dict[str, int], size=(8, 8), seed=0) -> Path:
    """`classes[name]` random grayscale PNGs of `size` under folder/name/."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=size, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{i}.png")
    return folder


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlpipe", *args], capture_output=True,
                          text=True, timeout=300)


# -- the pipeline on images ----------------------------------------------------------------


def test_digits_as_images_train_a_cnn_and_predict_raw_images_like_evaluate(tmp_path):
    result = dlpipe.run(digits_config(), run_dir=tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.92  # 8 epochs of a small CNN
    schema = (result.path / "schema.json").read_text()
    assert '"kind": "image"' in schema

    # Predictor on the raw test rows (NPY bytes) == the evaluate stage's predictions.
    rows = pd.read_parquet(result.path / "data" / "test.parquet").drop(columns=["target"])
    evaluated = pd.read_parquet(result.path / "predictions" / "test.parquet")
    predictor = dlpipe.load(result.path)
    again = predictor.predict(rows)
    assert (again.labels == evaluated["predicted"].to_numpy()).all()
    probabilities = evaluated[[f"probability_{k}" for k in range(10)]].to_numpy()
    np.testing.assert_allclose(again.probabilities, probabilities, rtol=0, atol=1e-6)

    # ... and on plain arrays of images, (N, H, W), as scikit-learn ships them.
    from sklearn.datasets import load_digits

    digits = load_digits()
    from_arrays = predictor.predict(digits.images[:200])
    assert (from_arrays.labels == digits.target[:200]).mean() >= 0.85


def test_the_features_of_an_image_column_are_json_and_the_model_reads_its_layout(tmp_path):
    import json

    result = dlpipe.run(digits_config(epochs=1),
                        run_dir=tmp_path / "run")
    document = json.loads((result.path / "features.json").read_text())
    assert document["layout"] == [{"name": "image", "kind": "image", "start": 0, "width": 64,
                                   "shape": [1, 8, 8]}]
    model = json.loads((result.path / "model.json").read_text())
    assert model["layout"] == document["layout"]


def test_augmentation_changes_training_but_never_evaluation(tmp_path):
    plain = dlpipe.run(digits_config(epochs=2),
                       run_dir=tmp_path / "plain")
    augmented = dlpipe.run(digits_config(
        epochs=2, augment=[{"name": "random_crop", "padding": 1}, {"name": "mixup", "alpha": 0.4}]),
        run_dir=tmp_path / "augmented")
    assert plain.metrics["test"]["log_loss"] != augmented.metrics["test"]["log_loss"]
    again = dlpipe.run(digits_config(
        epochs=2, augment=[{"name": "random_crop", "padding": 1}, {"name": "mixup", "alpha": 0.4}]),
        run_dir=tmp_path / "again")
    assert again.metrics == augmented.metrics  # seeded: the same augmented batches


def test_augmentation_needs_an_image_column(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.augment: augmentation applies to one image "
                                          r"column; the data has no image column"):
        dlpipe.run(minimal_config(train={"epochs": 1, "progress": "never",
                                         "augment": [{"name": "hflip"}]}),
                   run_dir=tmp_path / "run")


def test_an_unknown_augmentation_is_a_config_error_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.augment\[0\]"):
        dlpipe.run(digits_config(augment=[{"name": "hflipp"}]),
                   run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tabular_model_on_text_or_a_cnn_on_a_table_says_which_model_fits(tmp_path):
    with pytest.raises(ConfigError, match=r"model 'cnn' reads one image column; the data has "
                                          r"tabular columns"):
        dlpipe.run(minimal_config(model={"name": "cnn"}), run_dir=tmp_path / "run")


def test_an_image_folder_runs_end_to_end_and_predict_takes_a_folder(tmp_path):
    from_script = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_digits_folder.py"), str(tmp_path / "png")],
        capture_output=True, text=True, timeout=120)
    assert from_script.returncode == 0, from_script.stderr
    config = minimal_config(
        data={"source": {"path": str(tmp_path / "png")}, "split": {"val": 0.15, "test": 0.2}},
        model=SMALL_CNN,
        train={"epochs": 8, "batch_size": 64, "progress": "never",
               "optimizer": {"name": "adamw", "lr": 0.005}})
    result = dlpipe.run(config, run_dir=tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.85

    done = cli("predict", str(result.path), str(tmp_path / "png" / "3"),
               "-o", str(tmp_path / "pred.csv"))
    assert done.returncode == 0, done.stderr
    predictions = pd.read_csv(tmp_path / "pred.csv")
    assert predictions.columns[0] == "image"  # which file each prediction is for
    assert len(predictions) == len(list((tmp_path / "png" / "3").glob("*.png")))
    assert (predictions["prediction"] == 3).mean() >= 0.8


# -- bad input: a clear message naming the path or row, exit 2, nothing written ----------


def run_cli_expecting_error(tmp_path, source: dict, *extra: str) -> str:
    import yaml

    config = minimal_config(data={"source": source}, model=SMALL_CNN)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    return done.stdout + done.stderr


def test_images_of_mixed_sizes_without_a_size_name_the_rows(tmp_path):
    write_pngs(tmp_path / "png", {"a": 6, "b": 6})
    write_pngs(tmp_path / "png", {"c": 6}, size=(12, 9), seed=1)
    message = run_cli_expecting_error(tmp_path, {"path": str(tmp_path / "png")})
    assert "mixed sizes" in message and "features.image.size" in message


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    write_pngs(tmp_path / "png", {"only": 10})
    message = run_cli_expecting_error(tmp_path, {"path": str(tmp_path / "png")})
    assert "only" in message and "two class folders" in message


def test_a_corrupt_image_names_its_path_unless_skipped(tmp_path):
    write_pngs(tmp_path / "png", {"a": 30, "b": 30})
    (tmp_path / "png" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    message = run_cli_expecting_error(tmp_path, {"path": str(tmp_path / "png")})
    assert "broken.png" in message and "bad_images" in message

    config = minimal_config(data={"source": {"path": str(tmp_path / "png")},
                                  "clean": {"bad_images": "skip"}},
                            model=SMALL_CNN, train={"epochs": 1, "progress": "never"})
    result = dlpipe.run(config, run_dir=tmp_path / "skipped")
    import json

    profile = json.loads((result.path / "data_profile.json").read_text())
    assert profile["bad_images_skipped"]["image"]["count"] == 1
    assert "broken.png" in profile["bad_images_skipped"]["image"]["examples"][0]


def test_a_missing_image_file_in_a_csv_names_the_row(tmp_path):
    write_pngs(tmp_path / "png", {"a": 20, "b": 20})
    files = sorted((tmp_path / "png").rglob("*.png"))
    frame = pd.DataFrame({"photo": [str(f.relative_to(tmp_path)) for f in files],
                          "label": [f.parent.name for f in files]})
    frame.loc[5, "photo"] = "png/a/missing.png"
    frame.to_csv(tmp_path / "photos.csv", index=False)
    with pytest.raises(DataError, match=r"row 5.*missing\.png"):
        dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "photos.csv")},
                                        "target": "label"}, model=SMALL_CNN),
                   run_dir=tmp_path / "run")


def test_relative_image_paths_in_a_csv_are_read_from_the_csv_folder(tmp_path, monkeypatch):
    write_pngs(tmp_path / "png", {"a": 20, "b": 20})
    files = sorted((tmp_path / "png").rglob("*.png"))
    frame = pd.DataFrame({"photo": [str(f.relative_to(tmp_path)) for f in files],
                          "label": [f.parent.name for f in files]})
    frame.to_csv(tmp_path / "photos.csv", index=False)
    monkeypatch.chdir(Path(__file__).parent)  # anywhere but the CSV's folder
    result = dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "photos.csv")},
                                             "target": "label"},
                                       model=SMALL_CNN, train={"epochs": 1, "progress": "never"}),
                        run_dir=tmp_path / "run")
    train = pd.read_parquet(result.path / "data" / "train.parquet")
    assert all(Path(p).is_absolute() and Path(p).exists() for p in train["photo"])
