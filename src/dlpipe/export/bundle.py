"""The deployable bundle: one folder with everything a server or another team needs, and
nothing that executes code when loaded (ONNX, JSON, safetensors, Markdown). No torch here.

Layout (these names are the bundle's contract; the serve stage reads them)::

    model.onnx            fp32 graph: `input` float32 (B, F) → `output` (B, out) raw outputs
    model.int8.onnx       int8 graph, when compression kept one (same input and output)
    model.fp16.onnx       fp16 weights, float32 input and output, when compression kept one
    features.json         the fitted preprocessing: raw rows → the (B, F) input
    signature.json        input columns (kinds, dtypes, categories), target, task, classes,
                          output names, binary threshold: what request/response models need
    weights.safetensors   the exported network's weights, with model.json's spec inside
    data_profile.json     the training data profile, the reference for drift monitoring
    README.md             the model card
    manifest.json         name, version, created, every file's size and sha256, versions

The folder is built under a temporary name and renamed into place, so a reader never sees
half a bundle; `verify_bundle` refuses one whose files do not match the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from dlpipe.errors import ExportError
from dlpipe.export.safetensors_check import check_safetensors
from dlpipe.runs import atomic_write, dumps_json

__all__ = ["FORMAT_VERSION", "MANIFEST", "MODEL", "MODEL_FP16", "MODEL_INT8", "SIGNATURE",
           "model_card", "signature_of", "verify_bundle", "write_bundle"]

FORMAT_VERSION = 1
MODEL, MODEL_INT8, MODEL_FP16 = "model.onnx", "model.int8.onnx", "model.fp16.onnx"
FEATURES, SIGNATURE, WEIGHTS = "features.json", "signature.json", "weights.safetensors"
PROFILE, CARD, MANIFEST = "data_profile.json", "README.md", "manifest.json"
VARIANTS = {"fp32": MODEL, "int8": MODEL_INT8, "fp16": MODEL_FP16}
_PACKAGES = ("dlpipe", "torch", "onnx", "onnxruntime", "onnxscript", "numpy")


def write_bundle(folder: str | os.PathLike[str], files: Mapping[str, bytes], *, name: str,
                 version: str) -> Path:
    """Write `files` (bundle name → bytes) and their manifest as the folder `folder`.

    An existing bundle there is replaced only once the new one is complete.
    """
    out = Path(folder)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for filename, data in files.items():
        atomic_write(tmp / filename, data)
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {filename: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for filename, data in sorted(files.items())},
        "versions": _versions(),
    }
    atomic_write(tmp / MANIFEST, dumps_json(manifest).encode())
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ExportError(f"export: {out} exists and is not a bundle (no {MANIFEST}); "
                              f"choose another --out or remove it")
        old = out.with_name(f".{out.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def verify_bundle(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file of a bundle against its manifest; return the manifest.

    Raises:
        ExportError: no manifest, a missing file, a file whose size or sha256 differs
            from the manifest (tampered or truncated), or a safetensors file whose header
            is malformed (see `check_safetensors`).
    """
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        raise ExportError(f"bundle: {root} has no {MANIFEST}; is it a bundle made by "
                          f"`dlpipe export`?")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"bundle: {path} is not a valid manifest; re-export the run") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ExportError(f"bundle: {root} has format {manifest.get('format')!r}; this dlpipe "
                          f"reads format {FORMAT_VERSION}")
    for filename, entry in files.items():
        file = root / filename
        if Path(filename).name != filename:
            raise ExportError(f"bundle: manifest entry {filename!r} points outside the bundle")
        if not file.is_file():
            raise ExportError(f"bundle: {filename} is listed in {MANIFEST} but missing from "
                              f"{root}")
        data = file.read_bytes()
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ExportError(f"bundle: {filename} does not match its sha256 in {MANIFEST} "
                              f"({len(data)} bytes, expected {entry['bytes']}): the file was "
                              f"changed or truncated; re-export the run with `dlpipe export`")
        if filename.endswith(".safetensors"):  # its header, before any reader parses it
            check_safetensors(data, filename)
    return manifest


def signature_of(schema: Mapping[str, Any], features: Mapping[str, Any], *,
                 threshold: float, n_inputs: int, n_outputs: int) -> dict[str, Any]:
    """What a server needs to build request and response models, from the run's files.

    Args:
        schema: schema.json (columns, target, task, classes).
        features: features.json (the categories each encoder learned).
        threshold: the binary decision threshold chosen on validation.
    """
    allowed = _allowed_values(features.get("inputs", {}))
    columns = []
    for column in schema["columns"]:
        entry = {"name": column["name"], "kind": column["kind"], "dtype": column["dtype"]}
        if column["name"] in allowed:
            entry["categories"] = allowed[column["name"]]
        columns.append(entry)
    task = schema["task"]
    outputs: dict[str, Any] = {"raw": {"name": "output", "shape": ["batch", n_outputs],
                                       "meaning": _RAW[task]},
                               "prediction": "label" if task != "regression" else "value"}
    if task != "regression":
        outputs["probabilities"] = [f"probability_{c}" for c in schema["classes"]]
    return {
        "format": FORMAT_VERSION,
        "target": schema["target"],
        "task": task,
        "classes": list(schema.get("classes") or []),
        "threshold": threshold if task == "binary" else None,
        "columns": columns,
        "input": {"name": "input", "dtype": "float32", "shape": ["batch", n_inputs]},
        "outputs": outputs,
    }


_RAW = {"binary": "logit of the positive (second) class",
        "multiclass": "one logit per class, in the order of `classes`",
        "regression": "the prediction on the standardized target scale (see features.json)"}


def _allowed_values(inputs: Mapping[str, Any]) -> dict[str, list[Any]]:
    allowed: dict[str, list[Any]] = {}
    for part in inputs.get("fitted", {}).get("parts", {}).values():
        fitted, columns = part.get("fitted", {}), part.get("params", {}).get("columns", [])
        values = fitted.get("categories", fitted.get("values"))
        if values is not None:
            allowed.update(zip(columns, (list(v) for v in values), strict=False))
    return allowed


def model_card(*, name: str, signature: Mapping[str, Any], metrics: Mapping[str, Any],
               profile: Mapping[str, Any], spec: Mapping[str, Any],
               compressed: Mapping[str, Any] | None, files: list[str]) -> str:
    """The bundle's README.md: task, data, test metrics, intended use, limits, how to call.

    Args:
        compressed: compress/report.json when the run was compressed.
    """
    test = {k: v for k, v in (metrics.get("test") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
            and k not in ("threshold", "top_k")}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in test.items()) or "| — | — |"
    columns = ", ".join(f"`{c['name']}` ({c['kind']})" for c in signature["columns"])
    sizes = profile.get("rows") or {}
    variants = ", ".join(f"`{f}`" for f in files if f.endswith(".onnx"))
    compression, measured = "", "the trained network"
    if compressed:
        variants = {v["name"]: v for v in compressed.get("variants", [])}
        lines = []
        for kind, chosen in (compressed.get("chosen") or {}).items():
            v = variants.get(chosen or "", {})
            if chosen and v:
                lines.append(f"- {kind}: `{chosen}`, {v['parameters']:,} parameters "
                             f"({v['nonzero']:,} non-zero), validation {compressed['metric']} "
                             f"{_fmt(v.get('val'))}, test {_fmt(v.get('test'))}")
        if "fp32" in (compressed.get("files") or {}):  # model.onnx is the pruned network
            measured = "the trained network before compression; the shipped graphs' below"
        compression = ("\n## Compression\n\nKept within a validation "
                       f"{compressed['metric']} drop of {compressed['max_metric_drop']:g} "
                       "(compress/report.json of the run):\n\n" + "\n".join(lines) + "\n")
    return f"""# {name}

A `{spec.get('name')}` network for **{signature['task']}** prediction of `{signature['target']}`,
exported by dlpipe. Classes: {', '.join(map(str, signature['classes'])) or '—'}.

## Data

Input columns: {columns}.
Rows per split: {json.dumps(sizes) if sizes else 'see data_profile.json'}.

## Metrics on the held-out test split

Of {measured}.

| metric | value |
|---|---|
{rows}
{compression}
## Intended use and limits

Rows drawn from the same population as the training data, with the columns above. The model
has not been checked for fairness or robustness beyond these metrics; inputs far from the
training profile (data_profile.json) get unreliable predictions; categories never seen in
training fall into the unseen bucket.

## How to call it

ONNX graphs: {variants}. Preprocess raw rows with features.json, then run the graph:

```python
from dlpipe.export import load_bundle

predictor = load_bundle("path/to/bundle")      # verifies manifest.json; no torch needed
predictor.predict(rows).labels                 # rows: DataFrame or list of dicts
```
"""


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
