"""Worst-predicted examples: image cells as thumbnails decoded from the run's split, text cells
as escaped, shortened text."""

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dlpipe
from dlpipe import runs
from dlpipe.data.images import decode_image, to_npy_bytes
from dlpipe.report._examples import MAX_TEXT, MAX_THUMBNAILS, thumbnail, worst_examples
from dlpipe.runs import RunDir
from helpers import minimal_config

THUMB = re.compile(r'<td class="thumb"><img src="data:image/png;base64,([^"]+)"')


def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A real image run: 300 8x8 digits of 3 classes held as NPY bytes, a tiny CNN, 1 epoch."""
    from sklearn.datasets import load_digits

    from dlpipe.data.images import arrays_to_cells

    folder = tmp_path_factory.mktemp("examples")
    images, target = load_digits(n_class=3, return_X_y=True)
    frame = pd.DataFrame({"image": arrays_to_cells(images[:300].reshape(-1, 8, 8)),
                          "target": target[:300]})
    frame.to_parquet(folder / "digits.parquet")
    config = minimal_config(
        data={"source": {"path": str(folder / "digits.parquet")}, "target": "target",
              "split": {"val": 0.15, "test": 0.2}},
        model={"name": "cnn", "pool": "avg", "hidden": [16],
               "blocks": [{"channels": 8, "kernel": 3, "padding": "same"}]},
        train={"epochs": 1, "batch_size": 64, "progress": "never", "log_param_stats": False})
    return dlpipe.run(config, run_dir=folder / "digits",
                      stages=("data", "features", "train", "evaluate"))


def test_an_image_run_shows_its_worst_examples_as_thumbnails_of_the_right_rows(digits):
    curves = digits.rundir.read_json(runs.CURVES)
    page = "".join(worst_examples(digits.rundir, curves))  # the report's evaluation part
    worst = curves["worst"]
    (column,) = [c for c in worst["columns"] if c != "target"]
    assert worst["rows"][0]["values"][column].startswith("<image, ")  # what curves.json keeps
    thumbs = THUMB.findall(page)
    assert len(thumbs) == len(worst["rows"]) == 10
    split = pd.read_parquet(digits.rundir.split_file(curves["split"]))
    for data, row in zip(thumbs, worst["rows"], strict=True):
        shown = _png(data).astype(float)
        original = decode_image(split[column].iloc[row["row"]], where="test")[:, :, 0]
        assert shown.shape == original.shape == (8, 8)
        # The thumbnail is that row's image, rescaled to 0..255.
        assert np.corrcoef(shown.ravel(), original.astype(float).ravel())[0, 1] > 0.999


def _fake_run(tmp_path, cells, kind, rows=None):
    rundir = RunDir(tmp_path / "run")
    rundir.path.mkdir()
    rundir.write_json(runs.SCHEMA, {"columns": [{"name": "x", "kind": kind}]})
    rundir.write_split("test", pd.DataFrame({"x": cells}))
    rows = rows if rows is not None else range(len(cells))
    curves = {"split": "test", "worst": {"loss": "log_loss", "columns": ["x"], "rows": [
        {"row": i, "true": "a", "predicted": "b", "loss": 1.0, "probability_true": 0.3,
         "values": {"x": cells[i] if isinstance(cells[i], str) else "<image, 9 bytes>"}}
        for i in rows]}}
    return rundir, curves


def test_thumbnails_are_capped_and_unreadable_images_show_their_value(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(14):  # PNG files of 100x50 RGB: shrunk to 64 px on the longest side
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    paths[1] = str(folder / "moved-away.png")
    rundir, curves = _fake_run(tmp_path, paths, "image")
    html = "".join(worst_examples(rundir, curves))
    thumbs = THUMB.findall(html)
    assert len(thumbs) == MAX_THUMBNAILS
    assert {_png(t).shape for t in thumbs} == {(32, 64, 3)}
    assert "moved-away.png</td>" in html  # shown as its stored value
    assert f"{MAX_THUMBNAILS} of 14 image cells shown as thumbnails" in html


def test_a_text_column_shows_escaped_shortened_text(tmp_path):
    long = "<b>bold</b> & " + "word " * 100
    rundir, curves = _fake_run(tmp_path, [long, "short <i>"], "text")
    html = "".join(worst_examples(rundir, curves))
    assert "<b>bold" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; word" in html
    shown = re.search(r'<td class="text"[^>]*>([^<]*)</td>', html).group(1)
    assert shown.endswith("…") and len(shown.replace("&lt;", "<").replace("&gt;", ">")
                                        .replace("&amp;", "&")) <= MAX_TEXT
    assert "short &lt;i&gt;</td>" in html
    assert not THUMB.findall(html)


def test_thumbnail_scales_any_dtype_to_8_bit_and_keeps_small_images_small():
    gray16 = (np.arange(16, dtype=np.uint16).reshape(4, 4, 1) * 1000)
    pixels = np.asarray(Image.open(io.BytesIO(thumbnail(gray16))))
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4)
    assert pixels.min() == 0 and pixels.max() == 255
    flat = np.full((3, 3, 3), 0.5, dtype=np.float32)  # constant: no division by zero
    assert np.asarray(Image.open(io.BytesIO(thumbnail(flat)))).max() == 0
    npy = decode_image(to_npy_bytes(np.zeros((2, 2), dtype=np.uint8)), where="x")
    assert Image.open(io.BytesIO(thumbnail(npy))).size == (2, 2)
