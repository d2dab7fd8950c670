import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from serving.app import Settings, create_app
from serving.schemas import Limits


def wait_healthy(get, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the server never became healthy")


@pytest.fixture(scope="module")
def client(bundle):
    """The app through the ASGI test client, model loaded."""
    app = create_app(Settings(model=str(bundle), device="cpu", limits=Limits(max_tokens=256, max_n=4)))
    with TestClient(app) as c:
        wait_healthy(c.get)
        yield c


class LiveServer:
    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        wait_healthy(lambda path: httpx.get(self.url + path))
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self):
        return self.app.state.fingpt["engine"]


@pytest.fixture
def live_server(bundle):
    """A real uvicorn server on a free loopback port; keyword settings per test via indirect use."""

    def start(**settings) -> LiveServer:
        return LiveServer(create_app(Settings(model=str(bundle), device="cpu", **settings)))

    return start
