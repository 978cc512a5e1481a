"""The Open Inference Protocol (KServe v2, as spoken by Triton and KServe), over HTTP/REST.

    GET  /v2                                           server metadata
    GET  /v2/health/live | /v2/health/ready            {"live": true} | {"ready": bool}
    GET  /v2/models/{name}[/versions/{v}]              model metadata: inputs, outputs
    GET  /v2/models/{name}[/versions/{v}]/ready        {"name", "ready"}
    POST /v2/models/{name}[/versions/{v}]/infer        inference on tensors
    GET  /v2/models/{name}[/versions/{v}]/drift        dlpipe's drift report (not in the spec)

The model's input is the tensor of its ONNX graph, ``input``: FP32, shape ``[B, F]`` (the
preprocessed features), data flat in row-major order (nested arrays are accepted too).
Alternatively a request may send one tensor per raw column, named as the columns, shape
``[B]`` or ``[B, 1]`` (numbers; BYTES strings for categories and text; base64 strings for
images), preprocessed by the server as `/predict` rows are. Outputs: ``output`` (FP32
``[B, out]``, the raw outputs), and ``probabilities`` (FP32 ``[B, K]``) and ``label``
(INT64, BOOL or BYTES ``[B]``) for classification, or ``value`` (FP64 ``[B]``) for
regression. Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or
version), 413, 503 (not ready, queue full) or 504 (timeout). The binary tensor data
extension is not supported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlpipe.serve.schema import BadRequest, rows_error

__all__ = ["DATATYPES", "InferenceRequest", "router"]

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64", "BYTES"]
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": object,
}
_NUMBERS = {k for k in DATATYPES if k not in ("BOOL", "BYTES")}
Parameters = dict[str, str | int | float | bool]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestInput(_Open):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] = Field(description="Tensor elements, flat in row-major order (or nested).")


class RequestOutput(_Open):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Open):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ErrorBody(BaseModel):
    error: str


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 503, 504)}

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])


def _state(request: Request) -> Any:
    return request.app.state.serve


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    """Server metadata."""
    from importlib import metadata

    try:
        version = metadata.version("dlpipe")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": "dlpipe", "version": version, "extensions": []}


@router.get("/health/live", response_model=Live)
async def live() -> dict[str, bool]:
    """The server process answers."""
    return {"live": True}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(request: Request) -> Response:
    """Every model is loaded and warmed up (200), or not yet (503)."""
    ok = _state(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _model_routes(suffix: str) -> None:
    """Register the per-model routes under `/models/{name}` + `suffix` (with or without a
    version)."""

    @router.get(f"/models/{{name}}{suffix}", response_model=ModelMetadata, responses=_ERRORS)
    async def model_metadata(request: Request, name: str, version: str | None = None
                             ) -> dict[str, Any]:
        """The model's inputs and outputs."""
        served = _state(request).find(name, version)
        return metadata_of(served, _state(request).versions(name))

    @router.get(f"/models/{{name}}{suffix}/ready", response_model=ModelReady,
                responses={**_ERRORS, 503: {"model": ModelReady}})
    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        """The model is loaded and warmed up (200), or not yet (503)."""
        served = _state(request).find(name, version)
        return JSONResponse({"name": name, "ready": served.ready},
                            status_code=200 if served.ready else 503)

    @router.post(f"/models/{{name}}{suffix}/infer", response_model=InferenceResponse,
                 responses=_ERRORS,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {
                         "$ref": "#/components/schemas/InferenceRequest"}}}}})
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        """Inference on tensors: the graph's `input`, or one tensor per raw column."""
        state = _state(request)
        served = state.find(name, version)
        batcher = served.require_ready()
        parsed = parse_infer(await request.body())
        rows, x, n = inputs_of(served, parsed, state.settings.max_rows)
        wanted = requested_outputs(served, parsed)
        output = await batcher.submit(rows=rows, x=x, timeout_s=state.settings.timeout_s)
        body = {"model_name": served.name, "model_version": served.version,
                "outputs": encode_outputs(served, output, wanted, n)}
        if parsed.id is not None:
            body["id"] = parsed.id
        return Response(json.dumps(body).encode(), media_type="application/json")

    @router.get(f"/models/{{name}}{suffix}/drift", tags=["Monitoring"], responses=_ERRORS)
    async def drift(request: Request, name: str, version: str | None = None
                    ) -> dict[str, Any]:
        """Drift of live inputs and predictions against the training data (PSI per
        feature, unseen-category and missing rates); a dlpipe extension."""
        served = _state(request).find(name, version)
        report = served.drift.snapshot() if served.drift is not None else {"available": False}
        return {"model": served.name, "version": served.version, **report}


_model_routes("")
_model_routes("/versions/{version}")


# -- request decoding ---------------------------------------------------------------------------


def parse_infer(body: bytes) -> InferenceRequest:
    """Validate an inference request body; 400 naming the field on any problem."""
    try:
        parsed = InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise BadRequest(f"body: malformed JSON: {err['msg']}", status=400) from None
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
        where = where.replace(".[", "[") or "body"
        raise BadRequest(f"{where}: {err['msg']}", status=400) from None
    for key in ("binary_data_output", "binary_data"):
        if any((o.parameters or {}).get(key) for o in parsed.outputs or []):
            raise BadRequest("the binary tensor data extension is not supported; ask for "
                             "JSON outputs", status=400)
    return parsed


def inputs_of(served: Any, parsed: InferenceRequest, max_rows: int
              ) -> tuple[list[dict[str, Any]] | None, np.ndarray | None, int]:
    """(rows, None, B) for raw-column tensors, or (None, x (B, F) float32, B) for `input`."""
    signature = served.source.signature
    tensor = signature["input"]
    names = [i.name for i in parsed.inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"inputs: a tensor is named twice ({', '.join(names)})", status=400)
    if names == [tensor["name"]]:
        x = _matrix(parsed.inputs[0], int(tensor["shape"][1]), max_rows)
        return None, x, len(x)
    columns = served.schemas.columns
    if set(names) == set(columns):
        rows = _rows(served, parsed.inputs, max_rows)
        return rows, None, len(rows)
    raise BadRequest(f"inputs: model {served.name} takes the tensor {tensor['name']!r} (FP32, "
                     f"shape [-1, {tensor['shape'][1]}]) or one tensor per column "
                     f"({', '.join(columns)}); got {', '.join(names)}", status=400)


def _matrix(tensor: RequestInput, width: int, max_rows: int) -> np.ndarray:
    where = f"inputs[{tensor.name!r}]"
    if tensor.datatype != "FP32":
        raise BadRequest(f"{where}: datatype {tensor.datatype} does not match the model's "
                         f"FP32", status=400)
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise BadRequest(f"{where}: shape {tensor.shape} does not match the model's "
                         f"[-1, {width}]", status=400)
    batch = tensor.shape[0]
    if not 1 <= batch <= max_rows:
        raise BadRequest(f"{where}: batch dimension {batch}; send 1 to {max_rows} rows",
                         status=400)
    values = _flat(tensor, batch * width, where)
    if values.dtype.kind not in "fiu":
        raise BadRequest(f"{where}: FP32 data must be numbers", status=400)
    x = values.astype(np.float32).reshape(batch, width)  # (B, F)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise BadRequest(f"{where}: element [{row}, {col}] is {x[row, col]}; NaN and "
                         f"infinities are not allowed", status=400)
    return x


def _flat(tensor: RequestInput, size: int, where: str) -> np.ndarray:
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise BadRequest(f"{where}: data is a ragged nested array", status=400) from None
    if values.dtype == object:
        raise BadRequest(f"{where}: data mixes types or is ragged", status=400)
    values = values.reshape(-1)
    if values.size != size:
        raise BadRequest(f"{where}: shape {tensor.shape} needs {size} elements; got "
                         f"{values.size}", status=400)
    return values


def _rows(served: Any, tensors: Sequence[RequestInput], max_rows: int) -> list[dict[str, Any]]:
    kinds = served.schemas.kinds
    columns: dict[str, list[Any]] = {}
    batch = None
    for tensor in tensors:
        where = f"inputs[{tensor.name!r}]"
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequest(f"{where}: shape {tensor.shape}; a column tensor has shape [B] "
                             f"or [B, 1]", status=400)
        if batch is None:
            batch = tensor.shape[0]
        if tensor.shape[0] != batch:
            raise BadRequest(f"{where}: batch dimension {tensor.shape[0]} differs from the "
                             f"other inputs' {batch}", status=400)
        kind = kinds[tensor.name]
        if kind == "numeric" and tensor.datatype not in _NUMBERS | {"BOOL"}:
            raise BadRequest(f"{where}: column {tensor.name!r} is numeric; send a number "
                             f"datatype, not {tensor.datatype}", status=400)
        if kind in ("text", "image") and tensor.datatype != "BYTES":
            raise BadRequest(f"{where}: column {tensor.name!r} is {kind}; send BYTES",
                             status=400)
        values = _nested_flat(tensor.data)
        if len(values) != tensor.shape[0]:
            raise BadRequest(f"{where}: shape {tensor.shape} needs {tensor.shape[0]} elements; "
                             f"got {len(values)}", status=400)
        columns[tensor.name] = values
    if not batch or batch > max_rows:
        raise BadRequest(f"inputs: batch dimension {batch}; send 1 to {max_rows} rows",
                         status=400)
    order = served.schemas.columns
    rows = [{c: columns[c][i] for c in order} for i in range(batch)]
    try:
        return served.schemas.request.model_validate({"rows": rows}).rows
    except ValidationError as exc:
        error = rows_error(exc, kinds)
        raise BadRequest(str(error), status=400, problems=error.problems) from None


def _nested_flat(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for value in data:
        out.extend(_nested_flat(value) if isinstance(value, list) else [value])
    return out


# -- outputs ------------------------------------------------------------------------------------


def output_tensors(served: Any) -> list[dict[str, Any]]:
    """The outputs the model can return: name, datatype, shape."""
    signature = served.source.signature
    raw = signature["outputs"]["raw"]
    tensors = [{"name": raw["name"], "datatype": "FP32", "shape": [-1, int(raw["shape"][1])]}]
    if signature["task"] == "regression":
        tensors.append({"name": "value", "datatype": "FP64", "shape": [-1]})
    else:
        classes = signature.get("classes") or []
        tensors.append({"name": "probabilities", "datatype": "FP32",
                        "shape": [-1, len(classes)]})
        tensors.append({"name": "label", "datatype": _label_type(classes), "shape": [-1]})
    return tensors


def metadata_of(served: Any, versions: list[str]) -> dict[str, Any]:
    tensor = served.source.signature["input"]
    return {"name": served.name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": [{"name": tensor["name"], "datatype": "FP32",
                        "shape": [-1, int(tensor["shape"][1])]}],
            "outputs": output_tensors(served)}


def requested_outputs(served: Any, parsed: InferenceRequest) -> list[str]:
    known = [t["name"] for t in output_tensors(served)]
    if not parsed.outputs:
        return known
    wanted = [o.name for o in parsed.outputs]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise BadRequest(f"outputs: model {served.name} has no output {unknown[0]!r}; it has "
                         f"{', '.join(known)}", status=400)
    return wanted


def encode_outputs(served: Any, output: Any, wanted: list[str], n: int) -> list[dict[str, Any]]:
    tensors = {t["name"]: t for t in output_tensors(served)}
    out = []
    for name in wanted:
        spec = tensors[name]
        if name == "probabilities":
            data = output.probabilities.astype(np.float32)
        elif name in ("label", "value"):
            data = output.labels
        else:
            data = output.raw
        shape = [n, *([int(d) for d in spec["shape"][1:]])]
        flat = np.asarray(data).reshape(-1).tolist() if name != "label" else list(data)
        if spec["datatype"] == "BYTES":
            flat = [str(v) for v in flat]
        elif spec["datatype"] in ("FP32", "FP64"):
            flat = [float(v) if math.isfinite(v) else None for v in flat]
        out.append({"name": name, "shape": shape, "datatype": spec["datatype"], "data": flat})
    return out


def _label_type(classes: Sequence[Any]) -> str:
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    return "BYTES"
