"""The app on a bundle for tests and benchmarks: served by uvicorn in a thread on a free loopback port
(`serve`), or through the ASGI test client (`asgi_client`); either waits for /health to say a status."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fingpt.checkpoint import LoadedModel
from serving.app import create_app
from serving.engine import Engine
from serving.settings import Settings

Wish = str | tuple[str, ...] | None  # the /health status(es) to wait for; None: any answer at all


def free_port() -> int:
    """A loopback port nothing listens on (free now: a server may take it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(
    get: Callable[[str], httpx.Response], until: Wish = "ok", timeout: float = 60
) -> httpx.Response:
    """GET /health with `get` (a TestClient's, or BackgroundServer.get) until its status is `until`
    (one of them, for a tuple): its last answer. A server not listening yet is waited for too."""
    wanted = (until,) if isinstance(until, str) else until
    deadline = time.monotonic() + timeout
    status = None
    while True:
        try:
            health = get("/health")
            status = health.json()["status"]
            if wanted is None or status in wanted:
                return health
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            said = f"still said {status!r}" if status else "never answered"
            raise TimeoutError(f"/health {said} after {timeout:g} s (waited for {until!r})")
        time.sleep(0.05)


class BackgroundServer:
    """`with BackgroundServer(app) as server:` returns once /health says `wait` (see wait_for_health);
    `server.url` is its address."""

    def __init__(self, app: FastAPI, wait: Wish = "ok") -> None:
        self.port = free_port()
        self.app, self.wait = app, wait
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        try:
            wait_for_health(self.get, self.wait)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path)

    @property
    def engine(self) -> Engine:
        return self.app.state.fingpt.engine


def bundle_app(model: str | Path, loaded: LoadedModel | None = None, **settings) -> FastAPI:
    """The app on `model` (a bundle folder, or the name of `loaded`), on the CPU unless `settings`
    name another device."""
    return create_app(Settings(model=str(model), **{"device": "cpu", **settings}), loaded)


def serve(
    model: str | Path, wait: Wish = "ok", loaded: LoadedModel | None = None, **settings
) -> BackgroundServer:
    """`with serve(bundle, api_key=...) as server:` the app on a bundle, live (a BackgroundServer)."""
    return BackgroundServer(bundle_app(model, loaded, **settings), wait)


@contextmanager
def asgi_client(model: str | Path, wait: Wish = "ok", **settings) -> Iterator[TestClient]:
    """`with asgi_client(bundle, dtype=...) as c:` the app on a bundle through the ASGI test client."""
    with TestClient(bundle_app(model, **settings)) as client:
        wait_for_health(client.get, wait)
        yield client
