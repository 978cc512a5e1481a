"""Image cells: NPY encoding, decoding files and bytes, image folders, checks, digits as images."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlpipe.data.builtin import load_builtin
from dlpipe.data.images import (
    IMAGE_EXTENSIONS,
    arrays_to_cells,
    check_images,
    decode_image,
    describe_cell,
    load_image_folder,
    resolve_paths,
    to_npy_bytes,
)
from dlpipe.errors import ConfigError, DataError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "make_digits_folder.py"
RNG = np.random.default_rng(0)


def png_bytes(array: np.ndarray, mode: str | None = None, format: str = "PNG") -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
    return path


def gray(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


# -- NPY cells -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (8, 6, 1), (5, 7, 3), (4, 4, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.int16])
def test_npy_cells_decode_to_the_same_pixels_with_a_channel_axis(shape, dtype):
    array = (RNG.random(shape) * 100).astype(dtype)
    decoded = decode_image(to_npy_bytes(array), where="here")
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array.reshape(*shape[:2], -1))


def test_arrays_to_cells_gives_exactly_np_save_bytes_per_image():
    X = RNG.random((4, 3, 5, 3)).astype(np.float32)
    cells = arrays_to_cells(X)
    for image, cell in zip(X, cells, strict=True):
        buffer = io.BytesIO()
        np.save(buffer, image, allow_pickle=False)
        assert cell == buffer.getvalue()
    assert len(set(cells)) == 4  # hashable and distinct, so duplicate detection works


@pytest.mark.parametrize(("shape", "message"), [
    ((10, 64), r"expected shape \(N, H, W\) or \(N, H, W, C\); got shape \(10, 64\)"),
    ((3, 8, 8, 2), r"unsupported shape \(8, 8, 2\); expected \(H, W\) or \(H, W, C\) with C in"),
    ((3, 8, 8, 1, 1), r"got shape \(3, 8, 8, 1, 1\)"),
])
def test_arrays_to_cells_refuses_other_shapes(shape, message):
    with pytest.raises(DataError, match=message):
        arrays_to_cells(np.zeros(shape))


def test_to_npy_bytes_refuses_non_numeric_pixels_and_bad_shapes():
    with pytest.raises(DataError, match=r"pixels must be numbers .* got dtype <U1"):
        to_npy_bytes(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"unsupported shape \(8,\)"):
        to_npy_bytes(np.zeros(8))
    with pytest.raises(DataError, match=r"at least one pixel; got shape \(0, 4\)"):
        to_npy_bytes(np.zeros((0, 4)))


def test_fortran_ordered_npy_bytes_decode_correctly():
    array = np.asfortranarray(RNG.random((4, 6)))
    buffer = io.BytesIO()
    np.save(buffer, array)
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), where="x")[..., 0], array)


def test_bad_npy_bytes_are_errors_that_say_what_is_wrong():
    where = describe_cell("image", 7, b"")
    good = to_npy_bytes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"^column 'image', row 7 \(0 bytes\): NPY bytes are "
                                        r"truncated or corrupt: the header announces 64 bytes"):
        decode_image(good[:-3], where=where)
    with pytest.raises(DataError, match=r"row 7 .*: NPY array: unsupported shape \(2, 2, 2\)"):
        decode_image(to_npy_bytes_unchecked(np.zeros((2, 2, 2))), where=where)
    with pytest.raises(DataError, match=r"hold Python objects, which are never loaded"):
        decode_image(to_npy_bytes_unchecked(np.array([[None]], dtype=object)), where=where)
    with pytest.raises(DataError, match=r"NPY bytes are truncated or of an unknown version"):
        decode_image(good[:7], where=where)


def to_npy_bytes_unchecked(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# -- files and encoded bytes ---------------------------------------------------------------------


def test_decode_reads_gray_rgb_and_rgba_files_as_uint8_hwc(tmp_path):
    g = gray()
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    for name, array, channels in [("g", g, 1), ("rgb", rgb, 3), ("rgba", rgba, 4)]:
        decoded = decode_image(str(write_png(tmp_path / f"{name}.png", array)), where="x")
        assert decoded.dtype == np.uint8 and decoded.shape == (6, 5, channels)
        np.testing.assert_array_equal(decoded, array.reshape(6, 5, channels))


def test_decode_reads_encoded_bytes_and_converts_palette_and_bilevel_images():
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(rgb, format="BMP"), where="x"), rgb)
    palette = decode_image(png_bytes(rgb, mode="P"), where="x")
    assert palette.shape == (6, 5, 3) and palette.dtype == np.uint8
    bilevel = decode_image(png_bytes(gray() > 127, mode="1"), where="x")
    assert bilevel.shape == (6, 5, 1) and set(np.unique(bilevel)) <= {0, 255}
    gray_alpha = decode_image(png_bytes(RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8),
                                        mode="LA"), where="x")
    assert gray_alpha.shape == (6, 5, 1)  # alpha next to gray is dropped


def test_decode_errors_name_the_place_and_the_problem(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"^column 'image', row 12 \('.*nope\.png'\): image "
                                        r"file not found$"):
        decode_image(missing, where=describe_cell("image", 12, missing))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(RNG.bytes(200))
    with pytest.raises(DataError, match=r"corrupt\.png'\): not an image file Pillow can read"):
        decode_image(str(corrupt), where=describe_cell("image", 3, str(corrupt)))
    whole = png_bytes(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"row 4 \(\d+ bytes\): the image is truncated or "
                                        r"corrupt"):
        decode_image(whole[: len(whole) // 2], where=describe_cell("image", 4, whole[:50]))
    with pytest.raises(DataError, match=r"row 5: expected a path to an image file \(str\) or "
                                        r"image bytes; got float 1.5"):
        decode_image(1.5, where=describe_cell("image", 5, 1.5))
    with pytest.raises(DataError, match=r"not a file, so not an image"):
        decode_image(str(tmp_path), where="x")
    with pytest.raises(DataError, match=r"^row 6: neither an encoded image \(PNG, JPEG, BMP, "
                                        r"GIF, TIFF\) nor NPY bytes$"):
        decode_image(RNG.bytes(64), where="row 6")


def test_a_16_bit_png_keeps_its_dtype(tmp_path):
    deep = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    decoded = decode_image(str(tmp_path / "deep.png"), where="x")
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[..., 0], deep)


# -- image folders -------------------------------------------------------------------------------


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_png(root / label / f"{i}.png", gray())
    return root


def test_load_image_folder_lists_classes_and_files_sorted_with_absolute_paths(tmp_path):
    root = make_folder(tmp_path / "pets", {"dog": 2, "cat": 3})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    write_png(root / ".cache" / "x.png", gray())
    write_png(root / "dog" / "UPPER.PNG", gray())
    write_png(root / "dog" / "photo.jpeg", RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    frame = load_image_folder(root, column="picture", target="label")
    assert list(frame.columns) == ["picture", "label"]
    assert frame["label"].tolist() == ["cat"] * 3 + ["dog"] * 4
    names = [Path(p).relative_to(root.resolve()).as_posix() for p in frame["picture"]]
    assert names == ["cat/0.png", "cat/1.png", "cat/2.png",
                     "dog/0.png", "dog/1.png", "dog/UPPER.PNG", "dog/photo.jpeg"]
    assert all(Path(p).is_absolute() for p in frame["picture"])
    assert frame.index.tolist() == list(range(7))
    assert ".png" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


def test_load_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"image folder '.*missing' does not exist"):
        load_image_folder(tmp_path / "missing")
    file = tmp_path / "file.png"
    file.write_bytes(b"x")
    with pytest.raises(DataError, match=r"file\.png' is not a folder; an image folder holds"):
        load_image_folder(file)
    flat = tmp_path / "flat"
    write_png(flat / "a.png", gray())
    with pytest.raises(DataError, match=r"flat' has no class folders; found 1 image file\(s\) "
                                        r"directly in it"):
        load_image_folder(flat)
    one = make_folder(tmp_path / "one", {"cat": 2})
    with pytest.raises(DataError, match=r"one': an image folder needs at least two class "
                                        r"folders; found only 'cat'"):
        load_image_folder(one)
    empty = make_folder(tmp_path / "empty", {"cat": 2, "dog": 0, "emu": 0})
    with pytest.raises(DataError, match=r"class folder '.*empty/dog' has no images .* 2 class "
                                        r"folder\(s\) are empty \(dog, emu\)"):
        load_image_folder(empty)
    none = make_folder(tmp_path / "none", {"cat": 0, "dog": 0})
    (none / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no images in its class folders \(cat, dog\)"):
        load_image_folder(none)
    with pytest.raises(DataError, match=r"both 'image'"):
        load_image_folder(one, column="image", target="image")


def test_resolve_paths_makes_relative_paths_absolute_against_the_data_folder(tmp_path):
    cell = to_npy_bytes(np.zeros((2, 2)))
    series = pd.Series(["img/a.png", "/abs/b.png", "../c.png", None, cell], index=[5, 6, 7, 8, 9])
    resolved = resolve_paths(series, tmp_path / "data")
    assert resolved.tolist() == [str(tmp_path / "data" / "img" / "a.png"), "/abs/b.png",
                                 str(tmp_path / "c.png"), None, cell]
    assert resolved.index.tolist() == [5, 6, 7, 8, 9]


# -- check_images --------------------------------------------------------------------------------


def mixed_table(tmp_path: Path) -> pd.DataFrame:
    good = str(write_png(tmp_path / "good.png", gray()))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(RNG.bytes(300))
    cells = [good, str(corrupt), to_npy_bytes(gray()), png_bytes(gray()),
             to_npy_bytes(gray())[:-5], str(tmp_path / "gone.png"), None]
    return pd.DataFrame({"image": cells, "target": list(range(7))}, index=range(10, 17))


def test_check_images_raises_naming_the_first_bad_row_and_the_count(tmp_path):
    with pytest.raises(DataError, match=r"^column 'image', row 11 \('.*corrupt\.png'\): not an "
                                        r"image file .* \(4 of 7 images are unreadable\); fix "
                                        r"or remove them, or set data.clean.bad_images: skip"):
        check_images(mixed_table(tmp_path), "image")


def test_check_images_skip_drops_bad_rows_and_describes_them(tmp_path):
    table = mixed_table(tmp_path)
    kept, skipped = check_images(table, "image", policy="skip")
    assert kept.index.tolist() == [10, 12, 13]
    assert kept["target"].tolist() == [0, 2, 3]
    assert len(skipped) == 4
    assert skipped[0].startswith("row 11 ('") and "corrupt.png'): not an image" in skipped[0]
    assert skipped[1].startswith("row 14 (") and "truncated or corrupt" in skipped[1]
    assert skipped[2].endswith("gone.png'): image file not found")
    assert skipped[3] == "row 16: missing image"


def test_check_images_returns_a_clean_table_unchanged_and_refuses_unknown_policies(tmp_path):
    table = pd.DataFrame({"image": [str(write_png(tmp_path / "a.png", gray()))]})
    kept, skipped = check_images(table, "image")
    assert kept is table and skipped == []
    with pytest.raises(ConfigError, match=r"data.clean.bad_images: must be one of error, skip; "
                                          r"got 'drop'"):
        check_images(table, "image", policy="drop")


def test_a_truncated_png_fails_the_check_under_error_and_is_skipped_under_skip(tmp_path):
    whole = png_bytes(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    table = pd.DataFrame({"image": [str(cut), str(write_png(tmp_path / "ok.png", gray()))]})
    with pytest.raises(DataError, match=r"row 0 \('.*cut\.png'\): the image is truncated or "
                                        r"corrupt"):
        check_images(table, "image")
    kept, skipped = check_images(table, "image", policy="skip")
    assert kept.index.tolist() == [1] and len(skipped) == 1


# -- digits as images ----------------------------------------------------------------------------


def test_digits_as_images_gives_8x8_npy_cells_with_the_original_values():
    from sklearn.datasets import load_digits

    frame = load_builtin("digits", {"as_images": True})
    bunch = load_digits()
    assert list(frame.columns) == ["image", "target"] and frame.shape == (1797, 2)
    first = decode_image(frame["image"][0], where="digits")
    assert first.shape == (8, 8, 1) and first.dtype == np.float64
    stack = np.stack([decode_image(c, where="digits")[..., 0] for c in frame["image"]])
    np.testing.assert_array_equal(stack, bunch.images)
    assert stack.min() == 0 and stack.max() == 16
    np.testing.assert_array_equal(frame["target"], bunch.target)
    assert load_builtin("digits", {"as_images": False}).shape == (1797, 65)


def test_digits_as_images_refuses_a_non_bool_and_other_params():
    with pytest.raises(ConfigError, match=r"data.source.params.as_images: must be true or "
                                          r"false; got 'yes'"):
        load_builtin("digits", {"as_images": "yes"})
    with pytest.raises(ConfigError, match=r"builtin 'digits' takes only as_images; got n"):
        load_builtin("digits", {"as_images": True, "n": 3})


# -- examples/make_digits_folder.py --------------------------------------------------------------


def load_example():
    spec = importlib.util.spec_from_file_location("make_digits_folder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_digits_folder_writes_a_loadable_deterministic_folder(tmp_path, capsys):
    from sklearn.datasets import load_digits

    example = load_example()
    out = tmp_path / "digits"
    assert example.main([str(out), "--size", "16"]) == 0
    frame = load_image_folder(out)
    assert len(frame) == 1797 and sorted(frame["target"].unique()) == [str(d) for d in range(10)]
    bunch = load_digits()
    image = decode_image(str(out / "0" / "0000.png"), where="x")[..., 0]
    expected = np.rint(bunch.images[0] * 255 / 16).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(image, expected)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.png"))}
    assert example.main([str(out)]) == 0  # again: replaced by identical bytes
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.png"))} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no temp folder left
    other = tmp_path / "other"
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("mine")
    assert example.main([str(other)]) == 2
    assert "is not a digits folder" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"
