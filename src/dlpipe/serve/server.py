"""Run the app on uvicorn: one process, or several workers sharing the port.

Bundles are found and checked (`discover`) before the port is bound, so a bad path fails at
once. SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish (up to
`graceful_timeout_s`), then drains each model's queue and exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from dlpipe.serve.repository import discover
from dlpipe.serve.settings import ServeSettings

__all__ = ["ENVIRONMENT", "app_from_environment", "serve", "uvicorn_config"]

ENVIRONMENT = "DLPIPE_SERVE_SETTINGS"  # the settings (JSON) handed to worker processes
log = logging.getLogger("dlpipe.serve")


def serve(settings: ServeSettings) -> None:
    """Serve until SIGTERM / SIGINT.

    Raises:
        RunDirError, ExportError: nothing servable at the path, or a bad bundle.

    Example:
        >>> serve(ServeSettings(path="runs/quickstart", port=8000))
    """
    import uvicorn

    _log_to_stderr()
    sources = discover(settings.path, name=settings.name)
    for source in sources:
        log.info("found %s version %s at %s", source.name, source.version, source.path)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server is reachable from other machines; it has no "
                    "authentication, put it behind a gateway", settings.host)
    if settings.workers == 1:
        from dlpipe.serve.app import create_app

        app = create_app(settings, sources=sources)
        app.state.serve.freeze_gc = True
        uvicorn.Server(uvicorn_config(app, settings)).run()
        return
    folder = tempfile.mkdtemp(prefix="dlpipe-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    os.environ[ENVIRONMENT] = settings.model_dump_json()
    try:
        uvicorn.run("dlpipe.serve.server:app_from_environment", factory=True,
                    workers=settings.workers, **_options(settings))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def uvicorn_config(app: Any, settings: ServeSettings, **extra: Any) -> Any:
    """uvicorn's Config for `app` with the settings' host, port and graceful timeout."""
    import uvicorn

    return uvicorn.Config(app, **_options(settings), **extra)


def _options(settings: ServeSettings) -> dict[str, Any]:
    return {"host": settings.host, "port": settings.port, "access_log": False,
            "timeout_graceful_shutdown": max(int(settings.graceful_timeout_s), 1),
            "log_level": "info"}


def app_from_environment() -> Any:
    """The app of one worker process, from the settings in `ENVIRONMENT`."""
    from dlpipe.serve.app import create_app

    _log_to_stderr()
    app = create_app(ServeSettings.model_validate_json(os.environ[ENVIRONMENT]))
    app.state.serve.freeze_gc = True
    return app


def _log_to_stderr() -> None:
    logger = logging.getLogger("dlpipe.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
