"""A server for tests and benchmarks: the app on a free loopback port, served by uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from serving.engine import Engine


class BackgroundServer:
    """`with BackgroundServer(app) as server:` returns once /health is 200; `server.url` is its address."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.server.started and httpx.get(self.url + "/health").status_code == 200:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"the server at {self.url} did not become healthy")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self) -> Engine:
        return self.app.state.fingpt.engine
