"""Predict raw rows from a bundle with ONNX Runtime and features.json: no torch at inference.

`load_bundle` executes nothing from the bundle: it checks every file against manifest.json
and the safetensors header (`safetensors_check`), runs `onnx.checker`, refuses
external-data paths (weights stored outside the graph file) and non-finite weights, then
opens the graph with ONNX Runtime from the verified bytes.

Example:
    >>> predictor = load_bundle("runs/quickstart/export")
    >>> predictor.predict(frame).labels[:3]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlpipe._prediction import Prediction, RowPredictor, scores_from_outputs
from dlpipe.errors import ExportError
from dlpipe.export import _runtime
from dlpipe.export.bundle import FEATURES, SIGNATURE, VARIANTS, verify_bundle
from dlpipe.features import FittedFeatures

__all__ = ["OnnxPredictor", "Prediction", "load_bundle"]


class OnnxPredictor(RowPredictor):
    """A bundle's ONNX graph and fitted preprocessing, ready to predict on raw rows (or a whole
    file, `predict_file`)."""

    def __init__(self, session: Any, fitted: FittedFeatures, signature: Mapping[str, Any],
                 *, variant: str = "fp32") -> None:
        self.session = session
        self.fitted = fitted
        self.signature = dict(signature)
        self.variant = variant
        self.threshold = float(self.signature.get("threshold") or 0.5)
        self.target = self.signature.get("target")

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return scores_from_outputs(self.task, _runtime.run_batched(self.session, x))


def load_bundle(path: str | os.PathLike[str], *,
                variant: Literal["fp32", "int8", "fp16"] = "fp32",
                threads: int | None = None) -> OnnxPredictor:
    """Load a bundle made by `dlpipe export` for prediction with ONNX Runtime.

    Args:
        variant: which graph to run: the fp32 `model.onnx`, or the compressed int8 / fp16 one.
        threads: ONNX Runtime intra-op threads; default its own choice.

    Raises:
        ExportError: a file does not match the manifest, weights.safetensors has a
            malformed header (checked before anything reads it), the variant is not in the
            bundle,
            the graph fails `onnx.checker`, stores weights outside the bundle, or holds
            NaN or infinite weights.
    """
    root = Path(path)
    manifest = verify_bundle(root)
    if variant not in VARIANTS:
        raise ExportError(f"bundle: unknown variant {variant!r}; use one of "
                          f"{', '.join(VARIANTS)}")
    filename = VARIANTS[variant]
    if filename not in manifest["files"]:
        present = [v for v, f in VARIANTS.items() if f in manifest["files"]]
        raise ExportError(f"bundle: {root} has no {filename} (variant {variant!r}); it has "
                          f"{', '.join(present)}")
    data = (root / filename).read_bytes()
    check_onnx_bytes(data, f"{root / filename}")
    signature = json.loads((root / SIGNATURE).read_text())
    fitted = FittedFeatures.from_json(json.loads((root / FEATURES).read_text()))
    return OnnxPredictor(_runtime.session(data, threads=threads), fitted, signature,
                         variant=variant)


def check_onnx_bytes(data: bytes, where: str) -> None:
    """`onnx.checker` on a serialized graph; refuse external data and non-finite weights."""
    _runtime.require_onnx("loading a bundle")
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ExportError(f"bundle: {where} is not a readable ONNX model ({exc})") from None
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.external_data:
            raise ExportError(f"bundle: {where} stores initializer {init.name!r} in an "
                              f"external file; bundles keep every weight inside the graph")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"bundle: {where} fails onnx.checker: {exc}") from None
    for init in proto.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ExportError(f"bundle: {where} has NaN or infinite values in weight "
                              f"{init.name!r}; re-export the run")
