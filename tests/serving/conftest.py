import time

import pytest
from fastapi.testclient import TestClient

from serving.app import Settings, create_app
from serving.protocol import Limits
from serving.testing import BackgroundServer


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


LiveServer = BackgroundServer  # a real uvicorn server on a free loopback port, in a thread


@pytest.fixture
def live_server(bundle):
    """A real uvicorn server on a free loopback port; keyword settings per test via indirect use."""

    def start(**settings) -> LiveServer:
        return LiveServer(create_app(Settings(model=str(bundle), device="cpu", **settings)))

    return start


@pytest.fixture(scope="module")
def corrupt_bundle(bundle, tmp_path_factory):
    """A copy of the tiny bundle whose weights no longer match the checksum in its card."""
    import shutil

    corrupt = shutil.copytree(bundle, tmp_path_factory.mktemp("corrupt") / "tiny")
    weights = corrupt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return corrupt
