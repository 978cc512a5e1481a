"""ONNX export with a parity gate: the exported graph must compute what the PyTorch model does.

Exporter: torch 2.13's default, the torch.export-based ("dynamo") exporter with onnxscript.
The TorchScript exporter (``dynamo=False``) still runs but has been deprecated since torch 2.9
and warns that it will be removed. The dynamo exporter starts from the same `torch.export`
capture that the model contract test checks, takes a symbolic batch dimension natively, and
records each node's module path (``pkg.torch.onnx.name_scopes``), which the parity gate uses
to name the layer whose outputs diverge. It costs about 1 s per export (0.1 s for TorchScript),
which is nothing next to training.

The graph has one input ``input``: float32 (B, F), and one output ``output``: (B, out) raw
outputs (logits, or values on the training scale), with B dynamic.

Example:
    >>> export_onnx(model.eval(), x[:2], "model.onnx", check=[x[:1], x[:64]])
"""

from __future__ import annotations

import ast
import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlpipe.errors import ExportError
from dlpipe.export import _runtime
from dlpipe.runs import atomic_write

__all__ = ["ATOL", "DEFAULT_OPSET", "INPUT", "OUTPUT", "RTOL", "check_parity", "export_onnx",
           "first_divergent_layer", "to_onnx"]

DEFAULT_OPSET = 18
INPUT, OUTPUT = "input", "output"

# Both runtimes compute in fp32; their kernels differ only in summation order and fused
# multiply-adds (ONNX Runtime's MLAS GEMM vs PyTorch's), a few ulps (~1e-7 relative) per
# accumulation, ~1e-6 after a few layers. 1e-5 relative (plus 1e-5 absolute, for outputs near
# zero) leaves 10x headroom yet catches any real difference: a wrong or stale weight, a dropped
# op, a layer left in training mode, which show up at 1e-3 and above.
RTOL = ATOL = 1e-5

_SCOPES = "pkg.torch.onnx.name_scopes"


def to_onnx(model: nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET) -> Any:
    """Export `model` (in eval mode) to an `onnx.ModelProto` with a dynamic batch axis.

    Args:
        example: a float32 (B, F) batch with B >= 2 (the exporter specializes a size of 1).

    Raises:
        ExportError: the exporter failed; the message carries its reason.
    """
    _runtime.require_onnx()
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError(f"ONNX export needs onnxscript; run `{_runtime.INSTALL}`") from None
    if example.ndim < 1 or example.shape[0] < 2:
        raise ExportError(f"export: the example batch needs at least 2 rows (a batch of 1 "
                          f"would be specialized); got shape {tuple(example.shape)}")
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, verbose=False,
                input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f"export: torch.onnx.export failed for {type(model).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                          ) from exc
    proto = _lean(program.model_proto)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"export.opset: the exporter could not write opset {opset} (the graph "
                          f"has opset {written}); use an opset from 18 to 23")
    return proto


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    check: Sequence[torch.Tensor] = (),
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Path:
    """Export `model` to `path`; `onnx.checker` and the parity gate pass before it is written.

    Args:
        example: a float32 (B, F) batch (B >= 2) that fixes every dimension but the batch.
        check: held-out batches (two sizes, say 1 and 64) run through both runtimes.

    Raises:
        ExportError: the export or the checker failed, or the ONNX outputs differ from
            PyTorch's (the parity gate), naming the first layer whose outputs diverge.
    """
    import onnx

    proto = to_onnx(model, example, opset=opset)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"export: onnx.checker rejects the exported graph: {exc}") from None
    if check:
        check_parity(model, proto, check, rtol=rtol, atol=atol)
    out = Path(path)
    atomic_write(out, proto.SerializeToString())
    return out


def check_parity(
    model: nn.Module,
    onnx_model: Any,
    batches: Sequence[torch.Tensor],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> float:
    """Compare ONNX Runtime with PyTorch on each batch; return the largest absolute difference.

    Args:
        onnx_model: an `onnx.ModelProto`, its bytes, or a file path.

    Raises:
        ExportError: on the first batch that disagrees, naming the first layer whose outputs
            diverge (and by how much) when the graph records module paths.
    """
    proto = _proto(onnx_model)
    sess = _runtime.session(proto.SerializeToString())
    worst = 0.0
    model.eval()
    for x in batches:
        with torch.inference_mode():
            expected = model(x).float().numpy()  # (B, out)
        got = _runtime.run(sess, x.numpy())
        if got.shape != expected.shape:
            raise ExportError(f"export: the ONNX output has shape {got.shape} for a batch of "
                              f"{len(x)} rows; PyTorch gives {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        worst = max(worst, diff)
        if not np.allclose(got, expected, rtol=rtol, atol=atol):
            raise ExportError(_parity_message(model, proto, x, diff, rtol, atol))
    return worst


def first_divergent_layer(model: nn.Module, onnx_model: Any, x: torch.Tensor, *,
                          rtol: float = RTOL, atol: float = ATOL) -> tuple[str, str, float] | None:
    """Name the first module, in execution order, whose ONNX and PyTorch outputs differ.

    Each module's output in the graph is the last value computed under its path in the nodes'
    ``name_scopes``; the graph gets those values as extra outputs and is run next to the model
    with forward hooks. Modules whose output the exporter fused away are skipped.

    Returns:
        (module path, module class, largest absolute difference), or None when every module
        with a value in the graph agrees.
    """
    proto = _proto(onnx_model)
    values = _module_values(proto)
    modules = dict(model.named_modules())
    captured: list[tuple[str, torch.Tensor]] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                captured.append((name, output.detach().clone()))
        return record

    handles = [modules[name].register_forward_hook(hook(name))
               for name in values if name in modules]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    import onnx

    probe = copy.deepcopy(proto)
    existing = {o.name for o in probe.graph.output}
    for name, tensor in captured:
        value = values[name]
        if value not in existing:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(tensor.numpy().dtype)
            probe.graph.output.append(onnx.helper.make_tensor_value_info(value, dtype, None))
            existing.add(value)
    sess = _runtime.session(probe.SerializeToString())
    wanted = [values[name] for name, _ in captured]
    outputs = dict(zip(wanted, sess.run(wanted, {sess.get_inputs()[0].name: x.numpy()}),
                       strict=True))
    for name, tensor in captured:  # hooks fire as modules finish: innermost first
        got, expected = outputs[values[name]], tensor.numpy()
        if got.shape != expected.shape:
            continue
        if not np.allclose(got, expected, rtol=rtol, atol=atol):
            diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
            return name or "(the model itself)", type(modules[name]).__name__, diff
    return None


def _parity_message(model: nn.Module, proto: Any, x: torch.Tensor, diff: float,
                    rtol: float, atol: float) -> str:
    head = (f"export: the ONNX model's outputs differ from PyTorch's on a batch of {len(x)} "
            f"rows (largest absolute difference {diff:.3g}; allowed {atol:g} + {rtol:g}·|y|)")
    try:
        found = first_divergent_layer(model, proto, x, rtol=rtol, atol=atol)
    except Exception as exc:  # the diagnosis is best effort; the gate has already failed
        return f"{head}; the diverging layer could not be isolated ({exc})"
    if found is None:
        return (f"{head}; every layer with an output in the graph agrees, so the difference "
                f"comes from operations outside the modules")
    name, kind, layer_diff = found
    return (f"{head}; the first layer whose outputs diverge is {name!r} ({kind}, largest "
            f"absolute difference {layer_diff:.3g}). Check that the layer computes the same in "
            f"eager mode and under torch.export (no branches on torch.compiler.is_exporting(), "
            f"no Python-side state)")


def _module_values(proto: Any) -> dict[str, str]:
    """Module path → name of the last value computed under it, in graph order."""
    values: dict[str, str] = {}
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES), None)
        if scopes is None or not node.output:
            continue
        try:
            path = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        for module in path[:-1]:  # the last entry is the op's own name
            values[module] = node.output[0]
    return values


def _lean(proto: Any) -> Any:
    """Drop what the exporter records for debugging (stack traces with local paths, FX node
    text) but keep each node's module path, which the parity gate needs."""
    for node in proto.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key == _SCOPES]
        del node.metadata_props[:]
        for key, value in keep:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
        node.doc_string = ""
    for info in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del info.metadata_props[:]
    for init in proto.graph.initializer:
        del init.metadata_props[:]
    proto.doc_string = ""
    proto.graph.doc_string = ""
    return proto


def _proto(onnx_model: Any) -> Any:
    import onnx

    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    if isinstance(onnx_model, bytes):
        return onnx.load_from_string(onnx_model)
    return onnx.load(str(onnx_model))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise ('torchvision is not installed' log lines, FutureWarnings
    torch raises at its own code while capturing the graph: LeafSpec, and `_check_is_size` in
    the graph it traces from a recurrent model) and reuse its op table (see below)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _reused_op_table():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*_check_is_size.*",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


_OP_TABLES: dict[int, Any] = {}


@contextlib.contextmanager
def _reused_op_table() -> Iterator[None]:
    """Build the exporter's ATen → ONNX op table once per opset instead of once per export.

    torch 2.13 rebuilds it on every `torch.onnx.export` call, re-reading the source of ~500
    onnxscript functions: 1.3 s of the 1.6 s a small MLP's export takes, which compress pays
    once per variant. The table depends only on the opset and export only reads it. This
    touches a private torch class, so it is undone on exit and skipped if the class changes.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def reused(cls: type, opset_version: int = 18) -> Any:
        if opset_version not in _OP_TABLES:
            _OP_TABLES[opset_version] = build(cls, opset_version=opset_version)
        return _OP_TABLES[opset_version]

    _registration.ONNXRegistry.from_torchlib = classmethod(reused)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original
