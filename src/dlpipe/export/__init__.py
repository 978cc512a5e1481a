"""The export stage: the run's deliverable model as a bundle a server or another team can use.

`run` exports the model compress kept (compress/model.json and its weights) or else the
trained one, through the parity gate (`export_onnx`), and writes the bundle (`bundle.py`):
model.onnx (plus compress's int8 / fp16 graphs when the guard kept them), features.json,
signature.json, weights.safetensors, data_profile.json, README.md and manifest.json.
`load_bundle` reads a bundle back for prediction with ONNX Runtime, without torch.

This package reads compress's results from the run directory and never imports `compress`;
compress imports the ONNX helpers here (`export.onnx`), which know nothing of stages.

Example:
    >>> bundle = export.run(cfg, rundir)                 # runs/x/export
    >>> load_bundle(bundle).predict(rows).labels
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlpipe import runs
from dlpipe.export.bundle import verify_bundle, write_bundle
from dlpipe.export.predictor import OnnxPredictor, Prediction, load_bundle

if TYPE_CHECKING:
    from dlpipe.config import PipelineConfig
    from dlpipe.runs import RunDir

__all__ = ["OnnxPredictor", "Prediction", "check_parity", "export_onnx", "load_bundle", "run",
           "verify_bundle", "write_bundle"]

REFERENCE_ROWS = 200_000
"""Training rows the drift reference is computed from (a random sample of larger splits)."""


def __getattr__(name: str) -> Any:
    # export_onnx and check_parity need torch; the bundle loader above must not import it.
    if name in ("export_onnx", "check_parity"):
        from dlpipe.export import onnx as _onnx

        return getattr(_onnx, name)
    raise AttributeError(f"module 'dlpipe.export' has no attribute {name!r}")


def run(cfg: PipelineConfig, rundir: RunDir, *, out: str | os.PathLike[str] | None = None
        ) -> Path:
    """Export the run's deliverable model and write the bundle; return the bundle's folder.

    Args:
        out: the bundle's folder; default `export.out`, else `export/` in the run directory.

    Raises:
        ExportError: the export failed or its outputs differ from PyTorch's (naming the layer).
        RunDirError: the run has no trained model yet.
    """
    import tempfile

    import torch
    from safetensors.torch import save

    from dlpipe.config import ExportConfig
    from dlpipe.export import bundle
    from dlpipe.export.onnx import export_onnx
    from dlpipe.features import load as load_features
    from dlpipe.models.spec import build_from_spec

    section = cfg.export or ExportConfig()
    fitted = load_features(rundir)
    spec, weights, report = _deliverable(rundir)
    model = build_from_spec(spec)
    model.load_state_dict(weights)
    model.eval()
    example, check = held_out_batches(fitted, rundir, section.parity_rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, torch.from_numpy(example), Path(tmp) / bundle.MODEL,
                           opset=section.opset, check=[torch.from_numpy(x) for x in check])
        files = {bundle.MODEL: path.read_bytes()}
    files.update(_compressed_graphs(rundir, section, report))
    schema = rundir.read_json(runs.SCHEMA)
    metrics = rundir.read_json(runs.METRICS) if rundir.has(runs.METRICS) else {}
    threshold = float((metrics.get("test") or metrics.get("val") or {}).get("threshold", 0.5))
    signature = bundle.signature_of(schema, rundir.read_json(runs.FEATURES), threshold=threshold,
                                    n_inputs=example.shape[1], n_outputs=spec["out_features"])
    files[bundle.FEATURES] = rundir.require(runs.FEATURES).read_bytes()
    files[bundle.SIGNATURE] = runs.dumps_json(signature).encode()
    files[bundle.WEIGHTS] = save({k: v.contiguous() for k, v in model.state_dict().items()},
                                 metadata={"model": json.dumps(spec)})
    profile = rundir.read_json(runs.PROFILE) if rundir.has(runs.PROFILE) else {}
    if profile:
        # The bundle's profile adds the training split's distributions: the server's drift
        # reference (export/reference.py), so a bundle needs no run directory to monitor.
        from dlpipe.export.reference import reference_profile

        profile["reference"] = reference_profile(
            schema["columns"], rundir.read_split_bounded("train", REFERENCE_ROWS),
            target=schema["target"],
            task=schema["task"])
        files[bundle.PROFILE] = runs.dumps_json(profile).encode()
    name = cfg.name or rundir.path.name
    files[bundle.CARD] = bundle.model_card(
        name=name, signature=signature, metrics=metrics, profile=profile, spec=spec,
        compressed=report, files=sorted(files)).encode()
    target = Path(out or section.out or rundir.file(runs.EXPORT))
    return write_bundle(target, files, name=name, version=section.version or _version(files))


def held_out_batches(fitted: Any, rundir: RunDir, rows: int) -> tuple[Any, list[Any]]:
    """(example, [1-row batch, `rows`-row batch]): float32 model inputs for export and parity.

    The example (2 training rows) fixes the feature width; the checks use held-out rows (test,
    else val; training rows only when both are empty), two batch sizes so that the dynamic
    batch axis is exercised too.
    """
    import numpy as np

    from dlpipe.export._runtime import rows_of

    train_x = fitted.transform(rundir.read_split_bounded("train", rows))
    held = [fitted.transform(rundir.read_split_bounded(s, rows)) for s in ("test", "val")]
    pool = next((x for x in held if len(x)), train_x)
    example = rows_of(train_x, 2)
    big = pool[:rows] if len(pool) >= 2 else rows_of(pool, 2)
    return example, [np.ascontiguousarray(pool[:1]), np.ascontiguousarray(big)]


def _deliverable(rundir: RunDir) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(spec, weights, compress/report.json or None) of the model to ship: the network
    compress kept when it kept a pruned one, else the trained one."""
    report = rundir.read_json(runs.COMPRESS_REPORT) if rundir.has(runs.COMPRESS_REPORT) else None
    if report is not None and rundir.has(runs.COMPRESSED_MODEL):
        return (rundir.read_json(runs.COMPRESSED_MODEL),
                rundir.read_tensors(runs.COMPRESSED_WEIGHTS), report)
    rundir.require(runs.WEIGHTS)
    return rundir.read_json(runs.MODEL), rundir.read_tensors(runs.WEIGHTS), report


def _compressed_graphs(rundir: RunDir, section: Any, report: dict[str, Any] | None
                       ) -> dict[str, bytes]:
    """The int8 / fp16 graphs compress kept, when the export section wants them."""
    from dlpipe.export import bundle

    chosen = (report or {}).get("chosen") or {}
    files: dict[str, bytes] = {}
    if section.include_int8 and chosen.get("int8") and rundir.has(runs.COMPRESSED_INT8):
        files[bundle.MODEL_INT8] = rundir.file(runs.COMPRESSED_INT8).read_bytes()
    if section.include_fp16 and chosen.get("fp16") and rundir.has(runs.COMPRESSED_FP16):
        files[bundle.MODEL_FP16] = rundir.file(runs.COMPRESSED_FP16).read_bytes()
    return files


def _version(files: dict[str, bytes]) -> str:
    """What the bundle computes, hashed: its weights, preprocessing, signature and graphs.

    Retraining, fine-tuning, compressing or refitting gives a new version; exporting the same
    run again gives the same one. The model card and the drift profile do not count."""
    from dlpipe.export import bundle

    digest = hashlib.sha256()
    for filename in (bundle.WEIGHTS, bundle.FEATURES, bundle.SIGNATURE, bundle.MODEL_INT8,
                     bundle.MODEL_FP16):
        if filename in files:
            digest.update(filename.encode() + b"\0" + hashlib.sha256(files[filename]).digest())
    return digest.hexdigest()[:12]
