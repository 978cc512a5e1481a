"""ASGI middleware: the request body limit (before any parsing) and per-route request metrics.

`BodyLimit` answers 413 for a body over the limit without parsing it: at once when the
Content-Length says so, else while the body streams in (chunked transfer), and for a gzip or
deflate body (Content-Encoding) when the *decompressed* size passes the limit, so a small
compressed body cannot expand into a large one. The app downstream gets the decompressed
body and no Content-Encoding header. Other encodings are refused (415).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BodyLimit", "RequestMetrics", "send_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def send_error(send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``{"error": message}`` with `status`."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over `max_bytes` (after decompression) with 413, before parsing.

    Example:
        >>> app.add_middleware(BodyLimit, max_bytes=1 << 20)
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        length, encoding = None, b"identity"
        for key, value in headers:
            if key == b"content-length":
                length = value
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        close = [(b"connection", b"close")]
        if length is not None:
            if not length.isdigit():
                await send_error(send, 400, "invalid Content-Length header", close)
                return
            if int(length) > self.max_bytes:
                await send_error(send, 413, self._too_large(f"Content-Length {int(length)}"),
                                 close)
                return
        if encoding not in (b"identity", b"gzip", b"deflate"):
            await send_error(send, 415, f"Content-Encoding {encoding.decode(errors='replace')!r}"
                             f" is not supported; send identity, gzip or deflate")
            return
        try:
            body = await self._read(receive)
            if body is None:
                return  # the client went away
            if encoding != b"identity":
                body = self._decompress(body, encoding)
        except _TooLarge as exc:
            await send_error(send, 413, self._too_large(str(exc)), close)
            return
        except zlib.error:
            await send_error(send, 400, f"the body is not valid {encoding.decode()} data")
            return
        scope["headers"] = [(k, v) for k, v in headers
                            if k not in (b"content-length", b"content-encoding")]
        scope["headers"].append((b"content-length", str(len(body)).encode()))
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge(f"a streamed body of more than {self.max_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _decompress(self, data: bytes, encoding: bytes) -> bytes:
        # "deflate" is zlib-wrapped by the standard, raw by some clients: try both.
        wbits = [16 + zlib.MAX_WBITS] if encoding == b"gzip" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
        error: zlib.error | None = None
        for bits in wbits:
            inflater = zlib.decompressobj(bits)
            try:
                out = inflater.decompress(data, self.max_bytes + 1)
            except zlib.error as exc:
                error = exc
                continue
            if len(out) > self.max_bytes:
                raise _TooLarge(f"a {encoding.decode()} body that expands past {self.max_bytes} "
                                f"bytes")
            if not inflater.eof:
                raise zlib.error("truncated data")
            return out
        raise error or zlib.error("bad data")

    def _too_large(self, what: str) -> str:
        return (f"request body too large: {what}; the limit is {self.max_bytes} bytes "
                f"(after decompression); send fewer rows per request")


def _match(routes: list[Any], scope: Scope) -> str:
    from starlette.routing import Match

    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route.path
    return "unmatched"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # waits for the disconnect

    return replay


class RequestMetrics:
    """Count every request by route template, method and status; observe its latency."""

    def __init__(self, app: ASGIApp, *, metrics: Any, routes: list[Any] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # to name requests to routes that do not mark the scope
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        self.metrics.in_flight += 1

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            path = getattr(scope.get("route"), "path", None) or self._match(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (path, method, str(status))
            children = self._children.get(key)
            if children is None:  # labels() takes a lock and builds a tuple: once per key
                children = self._children[key] = (self.metrics.requests.labels(*key),
                                                  self.metrics.latency.labels(path))
            children[0].inc()
            children[1].observe(time.perf_counter() - start)

    def _match(self, scope: Scope) -> str:
        return _match(self.routes, scope)
