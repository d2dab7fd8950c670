import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import serving.state
from serving.protocol import Limits
from serving.testing import free_port, serve
from tests.helpers import KEY

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"


@pytest.fixture(scope="module")
def server(bundle):
    """A live server on the tiny bundle (context 32 tokens), without an API key."""
    with serve(bundle) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(bundle):
    with serve(bundle, api_key=KEY) as live:
        yield live


@pytest.fixture(scope="module")
def full_server(bundle):
    """Its queue is always full: every completion is refused with 429 (a real full queue is
    tested in tests/serving/test_live.py)."""
    from serving.engine import Overloaded

    def full(job):
        raise Overloaded("64 choices are waiting (at most 64)")

    with serve(bundle, max_batch_size=1) as live:
        live.engine.submit = full
        yield live


@pytest.fixture(scope="module")
def capped_server(bundle):
    with serve(bundle, limits=Limits(max_tokens=8, max_score_positions=64)) as live:
        yield live


@pytest.fixture
def loading_server(bundle, monkeypatch):
    """(server, release): the model loads only once the test sets `release`."""
    release = threading.Event()
    load_model = serving.state.load_model

    def held(*args, **kwargs):
        release.wait()
        return load_model(*args, **kwargs)

    monkeypatch.setattr(serving.state, "load_model", held)
    with serve(bundle, wait=None) as live:
        yield live, release


@pytest.fixture
def closed_url() -> str:
    """The URL of a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def page(monkeypatch):
    """open(url, key=None): the page, run once, its sidebar filled from FINGPT_API_URL and FINGPT_API_KEY."""

    def open_page(url: str, key: str | None = None) -> AppTest:
        monkeypatch.setenv("FINGPT_API_URL", url)
        if key is None:
            monkeypatch.delenv("FINGPT_API_KEY", raising=False)
        else:
            monkeypatch.setenv("FINGPT_API_KEY", key)
        at = AppTest.from_file(str(APP), default_timeout=30)
        at.run()
        assert not at.exception
        return at

    return open_page
