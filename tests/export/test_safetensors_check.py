"""The safetensors header check: hand-corrupted files are refused before anything reads them,
alone and through `verify_bundle` / `load_bundle` (with the manifest updated to match, so the
header check, not the sha256, is what catches them)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load, save

from dlpipe import runs
from dlpipe.errors import ExportError
from dlpipe.export import load_bundle
from dlpipe.export.bundle import MANIFEST, WEIGHTS, verify_bundle
from dlpipe.export.safetensors_check import check_safetensors


def _file(tensors=None, metadata=None) -> bytes:
    tensors = tensors or {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                          "b": torch.ones(4, dtype=torch.float32)}
    return save(tensors, metadata=metadata)


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_a_valid_file_passes_and_its_header_is_returned():
    data = _file(metadata={"model": "{}"})
    header = check_safetensors(data, "w.safetensors")
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["__metadata__"] == {"model": "{}"}
    assert check_safetensors(save({}), "empty") == {}


def _edit(change) -> bytes:
    header, body = _split(_file())
    change(header)
    return _join(header, body)


@pytest.mark.parametrize(("data", "message"), [
    (b"\x01\x02", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 10_000) + b"{}", "declares a 10000-byte safetensors header"),
    (struct.pack("<Q", 2**63) + b"{}", "declares a 9223372036854775808-byte"),
    (struct.pack("<Q", 3) + b"{ab", "is not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "is not a JSON object"),
    (_edit(lambda h: h["a"].update(dtype="F33")), "tensor 'a' has unknown dtype 'F33'"),
    (_edit(lambda h: h["a"].update(shape=[2, -3])), "tensor 'a' has shape [2, -3]"),
    (_edit(lambda h: h["b"].update(data_offsets=[24, 9999])),
     "tensor 'b' has data_offsets [24, 9999] past the end of the data (40 bytes)"),
    (_edit(lambda h: h["b"].update(data_offsets=[30, 24])), "expected [begin, end] with"),
    (_edit(lambda h: h["a"].update(shape=[3, 3])),
     "tensor 'a' spans 24 bytes, but shape [3, 3] of F32 needs 36"),
    (_edit(lambda h: h["b"].update(data_offsets=[8, 24])), "tensor 'b' (bytes 8-24) overlaps "
                                                           "tensor 'a'"),
    (_edit(lambda h: h["a"].pop("dtype")), "must have exactly dtype, shape and data_offsets"),
    (_edit(lambda h: h.update(__metadata__={"model": 3})), "__metadata__ must map strings"),
])
def test_corrupted_headers_are_refused_with_the_reason(data, message):
    with pytest.raises(ExportError) as info:
        check_safetensors(data, "weights.safetensors")
    assert message in str(info.value)
    assert "weights.safetensors" in str(info.value)


def test_bytes_that_belong_to_no_tensor_are_refused():
    header, body = _split(_file())
    with pytest.raises(ExportError, match="the tensors cover 40 of the 44 data bytes"):
        check_safetensors(_join(header, body + b"\0" * 4), "w")
    header["a"]["data_offsets"] = [8, 32]  # a hole at the start
    header["b"]["data_offsets"] = [32, 48]
    with pytest.raises(ExportError, match="8 bytes before tensor 'a' belong to no tensor"):
        check_safetensors(_join(header, body + b"\0" * 8), "w")


def test_the_check_agrees_with_the_reference_reader_on_a_real_file():
    data = _file()
    check_safetensors(data, "w")
    assert torch.equal(load(data)["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_bundle_loader_refuses_a_corrupt_weights_header_even_with_a_matching_manifest(
        exported, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported.rundir.file(runs.EXPORT), bundle)
    verify_bundle(bundle)  # intact
    data = (bundle / WEIGHTS).read_bytes()
    header, body = _split(data)
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, len(body) + 4]
    corrupt = _join(header, body)
    (bundle / WEIGHTS).write_bytes(corrupt)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][WEIGHTS] = {"bytes": len(corrupt),
                                  "sha256": hashlib.sha256(corrupt).hexdigest()}
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=f"bundle: {WEIGHTS}: tensor '{name}' has "
                                          r"data_offsets \[0, \d+\] past the end"):
        load_bundle(bundle)
