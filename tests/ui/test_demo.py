"""`python -m ui.demo`, the last step of make demo: it says "up" only once both processes answer."""

import signal
import socket
import subprocess
import sys

import httpx

from serving.testing import free_port
from tests.helpers import ROOT


def demo(model, logs, timeout: int = 120) -> tuple[subprocess.Popen, str, str]:
    api, page = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    ports = ["--api-port", api.rsplit(":", 1)[1], "--ui-port", page.rsplit(":", 1)[1]]
    command = [sys.executable, "-m", "ui.demo", "--model", str(model), *ports, "--logs", str(logs)]
    command += ["--timeout", str(timeout)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, api, page


def test_the_demo_says_up_once_the_server_has_its_model_and_the_page_answers(bundle, tmp_path):
    process, api, page = demo(bundle, tmp_path)
    said = [process.stdout.readline() for _ in range(2)]  # a blank line, then the announcement
    assert said[1].startswith(f"fingpt is up: open {page}  (API: {api}/docs; logs: {tmp_path})"), (
        process.stderr.read()
    )
    health = httpx.get(f"{api}/health")  # at the moment it said so
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    assert httpx.get(f"{page}/_stcore/health").status_code == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0 and process.stdout.read().strip() == "fingpt demo stopped."
    for url in (api, page):  # both processes were stopped with it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0


def test_a_process_that_dies_is_named_with_the_end_of_its_log(tmp_path):
    process, _, _ = demo(tmp_path / "no-such-model", tmp_path)
    assert process.wait(timeout=120) == 1 and process.stdout.read() == ""
    said = process.stderr.read()
    assert said.startswith(
        f"fingpt demo failed: fingpt-serve stopped (exit status 2); the end of {tmp_path / 'serve.log'}:\n"
    )
    last = said.rstrip().splitlines()[-1]  # fingpt-serve's own one-line error
    assert "error: --model" in last and last.endswith(
        "no-such-model does not exist: train and export one first (make demo)"
    )
