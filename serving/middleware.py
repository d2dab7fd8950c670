"""ASGI middleware around every request: the body size limit, and the request metrics."""

from __future__ import annotations

import time

from serving.metrics import Metrics
from serving.protocol import APIError


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a body over `max_bytes` with 413, with or without a Content-Length: a declared
    length is refused before a byte is read, a chunked body as soon as it passes the limit."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            body = await self.read(scope, receive)
        except BodyTooLarge:
            error = APIError(
                413, f"request body is larger than {self.max_bytes} bytes", code="body_too_large"
            )
            return await error.response()(scope, receive, send)
        if body is None:
            return  # the client left before it finished sending
        replayed = False

        async def replay():  # the body at once, then whatever comes next (a disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def read(self, scope, receive) -> bytes | None:
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            raise BodyTooLarge
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise BodyTooLarge
            more = message.get("more_body", False)
        return b"".join(chunks)


class RequestMetrics:
    """Counts requests by route and status, and times them."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def recorded_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded_send)
        finally:
            # by route, not by raw path: unknown URLs must not each add a series
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
