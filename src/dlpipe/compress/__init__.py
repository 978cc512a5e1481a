"""The compress stage: pruning, int8 quantization and half precision under an accuracy guard.

`run` takes the trained model of a run, tries the methods of the `compress:` section (see
`_search.py` for the order and the search), scores every variant on the validation split
with ONNX Runtime on this machine, keeps only those within `compress.max_metric_drop` of the
original, scores the kept ones on test, and writes compress/ in the run directory:
report.json, the kept pruned model (model.json, weights.safetensors, model.onnx) and the kept
model.int8.onnx / model.fp16.onnx / weights.bf16.safetensors. The export stage ships them.

The building blocks are public: `magnitude_prune` (Linear, Conv, LSTM/GRU weights),
`shrink` (structured: mlp neurons, cnn channels), `quantize_int8`, `to_fp16_onnx`,
`to_bf16`, `Guard`.

Example:
    >>> report = compress.run(cfg, rundir)
    >>> report["chosen"]          # {"fp32": "structured-0.5", "int8": "int8"}
"""

from __future__ import annotations

import platform
import shutil
from importlib import metadata
from typing import TYPE_CHECKING, Any

from dlpipe import runs
from dlpipe.compress.cast import from_bf16, to_bf16, to_fp16_onnx
from dlpipe.compress.guard import Guard, guarded_metric, score_outputs
from dlpipe.compress.prune import (
    count_parameters,
    magnitude_prune,
    make_permanent,
    shrink,
    shrink_mlp,
    structured_support,
)
from dlpipe.compress.quantize import quantize_int8
from dlpipe.compress.report import Variant, table
from dlpipe.errors import ConfigError

if TYPE_CHECKING:
    from dlpipe.config import PipelineConfig
    from dlpipe.runs import RunDir

__all__ = ["Guard", "Variant", "count_parameters", "from_bf16", "guarded_metric",
           "magnitude_prune", "make_permanent", "quantize_int8", "run", "score_outputs",
           "shrink", "shrink_mlp", "structured_support", "table", "to_bf16", "to_fp16_onnx"]

_FILES = {"int8": runs.COMPRESSED_INT8, "fp16": runs.COMPRESSED_FP16,
          "bf16": runs.COMPRESSED_BF16}


def run(cfg: PipelineConfig, rundir: RunDir) -> dict[str, Any]:
    """Compress the run's trained model under the guard; write and return report.json.

    Raises:
        ConfigError: no validation rows (the guard needs them) or a bad `compress.metric`.
        RunDirError: the run has no trained model yet.
    """
    from dlpipe.compress._search import Arrays, Compressor
    from dlpipe.config import CompressConfig
    from dlpipe.export._runtime import require_onnx
    from dlpipe.features import load as load_features
    from dlpipe.models.spec import load_network

    require_onnx("compress")
    section = cfg.compress or CompressConfig()
    fitted = load_features(rundir)
    model, spec = load_network(rundir), rundir.read_json(runs.MODEL)
    arrays = Arrays(*(fitted.arrays(rundir.read_split(s)) for s in runs.SPLITS))
    if len(arrays.val[0]) == 0:
        raise ConfigError([("data.split.val", "compress judges every variant on the validation "
                                              "split, which is empty; set data.split.val > 0")])
    metric = guarded_metric(fitted.task, section.metric)
    compressor = Compressor(cfg, section, fitted=fitted, arrays=arrays,
                            metric=metric, threshold=_threshold(cfg, rundir))
    outcome = compressor.run(model, spec)

    shutil.rmtree(rundir.file(runs.COMPRESS_DIR), ignore_errors=True)  # no stale variants
    if outcome.chain is not outcome.original:
        rundir.write_json(runs.COMPRESSED_MODEL, outcome.chain.spec)
        rundir.write_tensors(runs.COMPRESSED_WEIGHTS, outcome.chain.model.state_dict())
        rundir.write_bytes(runs.COMPRESSED_ONNX, outcome.chain.onnx)
    for method, data in outcome.files.items():
        rundir.write_bytes(_FILES[method], data)
    report = {
        "metric": metric,
        "higher_is_better": compressor.guard.higher_is_better if compressor.guard else True,
        "max_metric_drop": section.max_metric_drop,
        "baseline": outcome.original.variant.val,
        "chosen": outcome.kept,
        "files": {**({"fp32": runs.COMPRESSED_ONNX.filename}
                     if outcome.chain is not outcome.original else {}),
                  **{m: _FILES[m].filename for m in outcome.files}},
        "variants": [v.to_json() for v in outcome.variants],
        "machine": _machine(),
    }
    rundir.write_json(runs.COMPRESS_REPORT, report)
    return report


def _threshold(cfg: PipelineConfig, rundir: RunDir) -> float:
    """The binary decision threshold evaluate chose on validation (or the configured one)."""
    if rundir.has(runs.METRICS):
        metrics = rundir.read_json(runs.METRICS)
        value = (metrics.get("val") or metrics.get("test") or {}).get("threshold")
        if value is not None:
            return float(value)
    threshold = cfg.evaluate.threshold
    return threshold if isinstance(threshold, float) else 0.5


def _machine() -> dict[str, Any]:
    versions = {}
    for package in ("onnxruntime", "onnx", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "processor": platform.machine(), **versions}

