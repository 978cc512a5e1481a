"""The serve stage: a FastAPI server over ONNX Runtime for dlpipe bundles.

`dlpipe serve PATH` serves a run directory's bundle, a bundle folder, or a folder of bundles
(each by name and version): `/predict` on raw rows (the bundle's preprocessing runs on the
server), the Open Inference Protocol (KServe v2) on tensors, Prometheus `/metrics`, drift
against the training data. Concurrent requests are coalesced by a micro-batcher into one ONNX
Runtime call. Endpoints are documented in docs/SERVE.md.

Needs the `serve` extra (fastapi, uvicorn, prometheus-client) and the `onnx` extra; this
package never imports torch (nor the train stage).

Example:
    >>> from dlpipe.serve import ServeSettings, create_app, serve
    >>> serve(ServeSettings(path="runs/quickstart", port=8000))     # blocks until SIGTERM
    >>> app = create_app(ServeSettings(path="runs/quickstart"))     # an ASGI app to embed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlpipe.errors import DlpipeError
from dlpipe.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["INSTALL", "ServeSettings", "create_app", "require_serve", "serve"]

INSTALL = "pip install 'dlpipe[serve,onnx]'"


def require_serve() -> None:
    """Raise a `DlpipeError` naming the install command when a serving package is missing."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                            ("prometheus_client", "prometheus-client"),
                            ("onnxruntime", "onnxruntime"), ("onnx", "onnx")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DlpipeError(f"dlpipe serve needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed; run "
                          f"`{INSTALL}`")


def create_app(settings: ServeSettings, **kwargs: Any) -> FastAPI:
    """The server's ASGI app (see `dlpipe.serve.app.create_app`)."""
    require_serve()
    from dlpipe.serve.app import create_app as _create_app

    return _create_app(settings, **kwargs)


def serve(settings: ServeSettings) -> None:
    """Serve until SIGTERM (see `dlpipe.serve.server.serve`)."""
    require_serve()
    from dlpipe.serve.server import serve as _serve

    _serve(settings)
