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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    fast = _routes(app, state)
    app.include_router(v2_router)
    _error_handlers(app)
    app.openapi = _openapi(app, state)  # type: ignore[method-assign]
    # Outermost last: request metrics → body limit → fast /predict → FastAPI.
    app.add_middleware(_FastPredict, handlers=fast)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics, routes=app.routes)
    return app


def _routes(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """Register the routes; return the `/predict` paths → (route, handler) for `_FastPredict`."""
    names = state.names
    fast: dict[str, Any] = {}
    for served in state.models:
        newest = state.find(served.name) is served
        handler = _predict_handler(served, state)
        paths = [f"/models/{served.name}/versions/{served.version}/predict"]
        if newest:
            paths.insert(0, f"/models/{served.name}/predict")
            if len(names) == 1:
                paths.insert(0, "/predict")
        for path in paths:
            app.add_api_route(
                path, _predict_endpoint(served, handler), methods=["POST"],
                response_model=served.schemas.response, responses=_ERRORS,
                tags=["Predict"], name=f"predict {served.name} {served.version} {path}",
                summary=f"Predict with {served.name} (version {served.version})",
                openapi_extra={"requestBody": {"required": True, "content": {
                    "application/json": {"schema": {
                        "$ref": f"#/components/schemas/{served.schemas.request.__name__}"}}}}})
            fast[path] = (app.routes[-1], handler)

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

    return fast


def _predict_handler(served: Served, state: ServerState) -> Callable[[bytes], Awaitable[bytes]]:
    """The `/predict` handler of one model: request body → response body (JSON bytes).

    Raises:
        BadRequest, NotReady, QueueFull, TimeoutError: answered by `error_reply`.
    """
    timeout_s = state.settings.timeout_s
    keys = [str(c) for c in served.source.signature.get("classes") or []]
    regression = served.source.signature["task"] == "regression"

    async def predict(body: bytes) -> bytes:
        batcher = served.require_ready()
        rows = parse_rows(served.schemas, body)
        output = await batcher.submit(rows=rows, timeout_s=timeout_s)
        if regression:
            predictions = [{"value": float(v)} for v in output.labels]
        else:
            predictions = [{"label": label, "probabilities": dict(zip(keys, p, strict=True))}
                           for label, p in zip(output.labels, output.probabilities.tolist(),
                                               strict=True)]
        return json.dumps({"model": served.name, "version": served.version,
                           "predictions": predictions}).encode()

    return predict


def _predict_endpoint(served: Served, handler: Callable[[bytes], Awaitable[bytes]]
                      ) -> Callable[..., Any]:
    async def predict(request: Request) -> Response:
        return Response(await handler(await request.body()), media_type="application/json")

    predict.__doc__ = (f"Predict raw rows with {served.name} version {served.version}: the "
                       f"bundle's preprocessing runs on the server.")
    return predict


class _FastPredict:
    """Send POSTs to the `/predict` routes straight to their handler, around FastAPI's
    per-request machinery (middleware layers, routing, dependency injection, Request and
    Response objects): most of the server's CPU per request goes to HTTP handling, and this
    takes a large share of it off the hot path (benchmarks/bench_serve.py). The FastAPI routes
    stay, with the same handlers: they document the endpoints and serve anything that does
    not come this way (a trailing slash, a mounted app)."""

    def __init__(self, app: Any, *, handlers: dict[str, tuple[Any, Callable[[bytes],
                                                                          Awaitable[bytes]]]]
                 ) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hit = (self.handlers.get(scope["path"])
               if scope["type"] == "http" and scope["method"] == "POST" else None)
        if hit is None:
            await self.app(scope, receive, send)
            return
        route, handler = hit
        scope["route"] = route  # the request metrics' route label
        chunks = []
        while True:  # BodyLimit has read and checked the body already: one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, body = 200, await handler(b"".join(chunks))
        except Exception as exc:
            reply = error_reply(exc)
            if reply is None:
                log.exception("unhandled error in %s", scope["path"])
                reply = (500, {"error": "internal server error; see the server's log"})
            status, body = reply[0], json.dumps(reply[1]).encode()
            if status == 503:
                headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})


def error_reply(exc: BaseException) -> tuple[int, dict[str, Any]] | None:
    """(status, body) for the errors a request can meet; None for a bug."""
    if isinstance(exc, BadRequest):
        extra = {"detail": exc.problems} if exc.problems and exc.status == 422 else {}
        return exc.status, {"error": str(exc), **extra}
    if isinstance(exc, ModelNotFound):
        return 404, {"error": str(exc)}
    if isinstance(exc, NotReady):
        return 503, {"error": str(exc)}
    if isinstance(exc, QueueFull):
        return 503, {"error": f"server busy: {exc}; retry after 1 s"}
    if isinstance(exc, TimeoutError):
        return 504, {"error": f"request timed out: {exc}"}
    return None


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
    async def known(_: Request, exc: Exception) -> JSONResponse:
        status, body = error_reply(exc) or (500, {"error": "internal server error"})
        return JSONResponse(body, status_code=status,
                            headers={"Retry-After": "1"} if status == 503 else None)

    for kind in (BadRequest, ModelNotFound, NotReady, QueueFull, TimeoutError):
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %r", exc)
        return JSONResponse({"error": "internal server error; see the server's log"},
                            status_code=500)


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
