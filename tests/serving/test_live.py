"""Against a real uvicorn server: the official OpenAI client, concurrency, disconnects, 429."""

import asyncio
import time

import httpx
import pytest
from openai import AuthenticationError, OpenAI

from serving.protocol import Limits
from serving.testing import serve

PROMPT = "Operator: Good afternoon, and welcome to the"


def test_the_official_openai_client_works_streaming_and_not(bundle):
    with serve(bundle, api_key="k3y") as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="k3y")
        completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=4)
        assert completion.object == "text_completion" and completion.choices[0].finish_reason in (
            "stop",
            "length",
        )
        streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=4, stream=True)
        assert (
            "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
            == completion.choices[0].text
        )
        assert [m.id for m in client.models.list().data] == ["tiny"]
        with pytest.raises(AuthenticationError) as refused:
            OpenAI(base_url=f"{server.url}/v1", api_key="wrong").completions.create(model="tiny", prompt="x")
        assert refused.value.status_code == 401


def test_32_concurrent_requests_are_batched_and_seeded_text_is_the_same_alone(bundle):
    with serve(bundle, max_batch_size=16) as server:
        body = {"prompt": "Revenue for the quarter", "max_tokens": 24, "seed": 42, "temperature": 0.9}
        alone = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]

        async def many():
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                others = [
                    client.post(
                        "/v1/completions", json={"prompt": f"Call {i}: Operator:", "max_tokens": 24 + i}
                    )
                    for i in range(31)
                ]
                return await asyncio.gather(client.post("/v1/completions", json=body), *others)

        responses = asyncio.run(many())
        assert [r.status_code for r in responses] == [200] * 32
        assert responses[0].json()["choices"][0]["text"] == alone
        metrics = httpx.get(f"{server.url}/metrics").text
        buckets = {
            line.split('le="')[1].split('"')[0]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("fingpt_batch_size_bucket")
        }
        assert buckets["+Inf"] - buckets["1.0"] > 0  # some steps decoded more than one row
        assert buckets["+Inf"] - buckets["8.0"] > 0  # and some more than 8


def test_a_client_that_disconnects_frees_its_row(bundle):
    with serve(bundle, limits=Limits(max_tokens=10**6)) as server:
        body = {"prompt": PROMPT, "max_tokens": 10**6, "stream": True, "ignore_eos": True}  # endless
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert server.engine.owners  # the row is decoding
        deadline = time.time() + 10
        while server.engine.owners and time.time() < deadline:
            time.sleep(0.05)
        assert not server.engine.owners and server.engine.sampler.free_rows == 16


def test_a_client_that_leaves_a_non_streaming_request_frees_its_row(bundle):
    import socket

    with serve(bundle, limits=Limits(max_tokens=10**6)) as server:
        body = b'{"prompt": "Our", "max_tokens": 1000000, "ignore_eos": true}'
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            deadline = time.time() + 10
            while not server.engine.owners and time.time() < deadline:
                time.sleep(0.05)
            assert server.engine.owners  # decoding, no answer yet
        deadline = time.time() + 10
        while server.engine.owners and time.time() < deadline:
            time.sleep(0.05)
        assert not server.engine.owners


def test_a_full_queue_answers_429(bundle):
    with serve(bundle, max_batch_size=1, max_queue=1, limits=Limits(max_tokens=10**6)) as server:
        long = {"prompt": PROMPT, "max_tokens": 10**6, "stream": True, "ignore_eos": True}  # endless

        async def flood():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                async with client.stream("POST", "/v1/completions", json=long) as busy:  # takes the row
                    lines = busy.aiter_lines()  # held: a dropped iterator closes the stream
                    await lines.__anext__()
                    waiting = asyncio.create_task(
                        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5})
                    )
                    for _ in range(1000):  # until it waits in the queue
                        if server.engine.waiting.qsize() == 1:
                            break
                        await asyncio.sleep(0.01)
                    refused = await client.post("/v1/completions", json={"prompt": "y"})
                await waiting
                return refused, waiting.result()

        refused, waited = asyncio.run(flood())
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert waited.status_code == 200  # once the row was free, the waiting request ran


def test_an_unexpected_fault_answers_500_in_the_error_shape_with_an_id_for_its_traceback(bundle, caplog):
    def fault(*args, **kwargs):
        raise RuntimeError("injected fault")

    with serve(bundle) as live:
        live.app.state.fingpt.completions.create = fault
        with caplog.at_level("ERROR", logger="fingpt.serve"):
            response = httpx.post(f"{live.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert httpx.get(f"{live.url}/health").json()["status"] == "ok"  # the server goes on
    request_id = response.headers["x-request-id"]
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": f"internal server error (request id {request_id}): "
            "the server's log holds its traceback",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.getMessage() == f"request {request_id} (POST /v1/completions) failed"
    assert record.exc_info[1].args == ("injected fault",)


def test_fingpt_serve_starts_answers_and_stops_cleanly_on_sigterm(bundle):
    import signal
    import subprocess
    import sys

    from serving.testing import free_port, wait_for_health
    from tests.helpers import ROOT

    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "serving.app", "--model", str(bundle), "--port", url.rsplit(":", 1)[1]]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_health(lambda path: httpx.get(url + path), timeout=120).status_code == 200
        completion = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30)
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] <= 4
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    finally:
        server.kill()
    # uvicorn shuts down gracefully, then ends by the signal it was sent, as a supervisor expects
    assert server.returncode == -signal.SIGTERM
    assert "Application shutdown complete." in log and "Finished server process" in log
    assert "Traceback" not in log and "ERROR" not in log
