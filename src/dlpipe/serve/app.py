"""The FastAPI application: `/predict` on raw rows, the v2 protocol, health and metrics.

    POST /predict                                   the model (when one name is served)
    POST /models/{name}/predict                     a model by name (newest version)
    POST /models/{name}/versions/{version}/predict  a model by name and version
    GET  /models                                    what is served, loaded and how
    GET  /health                                    {"status": "ok" | "loading", ...}
    GET  /metrics                                   Prometheus text format
    /v2/...                                         the Open Inference Protocol (v2.py)
    GET  /docs, /openapi.json                       the generated documentation

Each model's `/predict` routes are registered with the request and response models generated
from its signature.json, so OpenAPI documents its exact fields. Bodies are parsed by
pydantic-core straight from bytes. Every error body is ``{"error": "..."}`` (422s add
``"detail"``, one entry per bad field); bad input is never a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dlpipe.serve.batching import QueueFull
from dlpipe.serve.limits import BodyLimit, RequestMetrics
from dlpipe.serve.monitoring import CONTENT_TYPE
from dlpipe.serve.repository import BundleSource, discover
from dlpipe.serve.schema import BadRequest, parse_rows
from dlpipe.serve.settings import ServeSettings
from dlpipe.serve.state import ModelNotFound, NotReady, Served, ServerState
from dlpipe.serve.v2 import ErrorBody, InferenceRequest
from dlpipe.serve.v2 import router as v2_router

__all__ = ["create_app"]

log = logging.getLogger("dlpipe.serve")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503, 504)}


def create_app(settings: ServeSettings, *, sources: list[BundleSource] | None = None
               ) -> FastAPI:
    """The server's ASGI app for the bundles at `settings.path` (loaded once it starts).

    Args:
        sources: bundles already found by `discover` (the CLI checks them before binding).

    Raises:
        RunDirError, ExportError: nothing servable at the path, or a bad bundle.

    Example:
        >>> app = create_app(ServeSettings(path="runs/quickstart"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    sources = sources if sources is not None else discover(settings.path, name=settings.name)
    state = ServerState(settings, sources)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="dlpipe serve", lifespan=lifespan,
                  description="Predictions from dlpipe bundles; see docs/SERVE.md.",
                  version=_version())
    app.state.serve = state
    _routes(app, state)
    app.include_router(v2_router)
    _error_handlers(app)
    app.openapi = _openapi(app, state)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics, routes=app.routes)
    return app


def _routes(app: FastAPI, state: ServerState) -> None:
    names = state.names
    for served in state.models:
        newest = state.find(served.name) is served
        paths = [f"/models/{served.name}/versions/{served.version}/predict"]
        if newest:
            paths.insert(0, f"/models/{served.name}/predict")
            if len(names) == 1:
                paths.insert(0, "/predict")
        for path in paths:
            app.add_api_route(
                path, _predict_endpoint(served, state), methods=["POST"],
                response_model=served.schemas.response, responses=_ERRORS,
                tags=["Predict"], name=f"predict {served.name} {served.version} {path}",
                summary=f"Predict with {served.name} (version {served.version})",
                openapi_extra={"requestBody": {"required": True, "content": {
                    "application/json": {"schema": {
                        "$ref": f"#/components/schemas/{served.schemas.request.__name__}"}}}}})

    @app.get("/models", tags=["Models"])
    async def models() -> dict[str, Any]:
        """Every served model: name, version, graph, readiness, batching, drift reference."""
        return {"models": [_describe(m) for m in state.models]}

    @app.get("/health", tags=["Health"])
    async def health() -> JSONResponse:
        """"ok" once every model is ready (200), else "loading" (503)."""
        ok = state.ready
        return JSONResponse({"status": "ok" if ok else "loading",
                             "models": {f"{m.name}:{m.version}": m.ready for m in state.models}},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["Monitoring"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def _predict_endpoint(served: Served, state: ServerState) -> Callable[..., Any]:
    timeout_s = state.settings.timeout_s
    keys = [str(c) for c in served.source.signature.get("classes") or []]
    regression = served.source.signature["task"] == "regression"

    async def predict(request: Request) -> Response:
        batcher = served.require_ready()
        rows = parse_rows(served.schemas, await request.body())
        output = await batcher.submit(rows=rows, timeout_s=timeout_s)
        if regression:
            predictions = [{"value": float(v)} for v in output.labels]
        else:
            predictions = [{"label": label, "probabilities": dict(zip(keys, p, strict=True))}
                           for label, p in zip(output.labels, output.probabilities.tolist(),
                                               strict=True)]
        body = {"model": served.name, "version": served.version, "predictions": predictions}
        return Response(json.dumps(body).encode(), media_type="application/json")

    predict.__doc__ = (f"Predict raw rows with {served.name} version {served.version}: the "
                       f"bundle's preprocessing runs on the server.")
    return predict


def _describe(served: Served) -> dict[str, Any]:
    batcher = served.batcher
    return {
        "name": served.name, "version": served.version, "path": str(served.source.path),
        "ready": served.ready, "error": served.error,
        "precision": served.model.variant if served.model else None,
        "variants": served.source.variants(), "task": served.source.signature["task"],
        "columns": served.source.signature["columns"],
        "batching": {"max_batch_size": batcher.max_batch_size,
                     "max_delay_ms": batcher.max_delay_ms} if batcher else None,
        "tuning": served.tuning,
        "drift_reference": bool(served.drift and served.drift.available),
        "notes": served.notes,
    }


def _error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status,
                            headers={"Retry-After": "1"} if status == 503 else None)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        extra = {"detail": exc.problems} if exc.problems and exc.status == 422 else {}
        return error(exc.status, str(exc), **extra)

    @app.exception_handler(ModelNotFound)
    async def not_found(_: Request, exc: ModelNotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error(503, f"server busy: {exc}; retry after 1 s")

    @app.exception_handler(TimeoutError)
    async def timed_out(_: Request, exc: TimeoutError) -> JSONResponse:
        return error(504, f"request timed out: {exc}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return error(422, f"{where}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %r", exc)
        return error(500, "internal server error; see the server's log")


def _openapi(app: FastAPI, state: ServerState) -> Callable[[], dict[str, Any]]:
    """OpenAPI with the generated request models added to the components."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=app.description)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        models = [m.schemas.request for m in state.models] + [InferenceRequest]
        for model in models:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    return build


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dlpipe")
    except metadata.PackageNotFoundError:
        return "unknown"
