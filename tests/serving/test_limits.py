"""Every request bounded: scoring's cap on token positions (413), the timeout (504, in a stream
too), a failed decoding step (500), and a server under four maximal scorings at once."""

import asyncio
import json
import math
import time
from itertools import count

import httpx
import pytest

from fingpt.generation import TextStream
from serving.protocol import Limits
from serving.testing import asgi_client, serve

CONTEXT = 32  # the tiny model's
IDS = list(range(100, 1100)) * 30  # token ids of a long call (the tiny vocabulary has 8192)


def scoring(ids, stride: int = 1) -> dict:
    return {"prompt": ids, "echo": True, "logprobs": 5, "max_tokens": 0, "score_stride": stride}


def events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def too_many_positions(message: str) -> dict:
    return {
        "message": message,
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "too_many_positions",
    }


@pytest.fixture(scope="module")
def capped(bundle):
    """A server that scores at most 10,000 token positions a request."""
    with asgi_client(bundle, limits=Limits(max_score_positions=10_000)) as c:
        yield c


def test_scoring_over_the_cap_is_refused_with_how_to_fit_it(capped):
    # 1,000 tokens at stride 1: 1 + (1000 - 1 - 32) = 968 windows of 32 tokens
    response = capped.post("/v1/completions", json=scoring(IDS[:1000]))
    assert response.status_code == 413
    assert response.json()["error"] == too_many_positions(
        "this prompt of 1,000 tokens at score_stride 1 needs 30,976 token positions (windows of 32 "
        "tokens), above this server's cap of 10,000: use score_stride >= 4 or a text of at most 344 tokens"
    )
    # the advice holds, to the token: 312 windows fit (9,984 positions), 313 do not
    assert capped.post("/v1/completions", json=scoring(IDS[:1000], stride=4)).status_code == 200
    assert capped.post("/v1/completions", json=scoring(IDS[:1000], stride=3)).status_code == 413
    assert capped.post("/v1/completions", json=scoring(IDS[:344])).status_code == 200
    assert capped.post("/v1/completions", json=scoring(IDS[:345])).status_code == 413


def test_prompts_that_fit_alone_but_not_together_are_told_to_go_separately(capped):
    response = capped.post("/v1/completions", json=scoring([IDS[:300], IDS[300:600]]))  # 8,576 each
    assert response.status_code == 413
    assert response.json()["error"] == too_many_positions(
        "these 2 prompts need 17,152 token positions together (windows of 32 tokens), above this "
        "server's cap of 10,000: score them in separate requests"
    )
    too_long = capped.post("/v1/completions", json=scoring([IDS[:10], IDS[:1000]], stride=2))
    assert too_long.json()["error"]["message"] == (
        "prompt 1, of 1,000 tokens at score_stride 2, needs 15,520 token positions (windows of 32 "
        "tokens), above this server's cap of 10,000: use score_stride >= 4 or a text of at most 655 tokens"
    )


def test_a_max_tokens_not_sent_is_the_default_or_the_cap_when_lower(bundle):
    with asgi_client(bundle, limits=Limits(max_tokens=16)) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        assert schemas["GenerateRequest"]["properties"]["max_tokens"]["default"] == 16  # not 100
        assert schemas["CompletionRequest"]["properties"]["max_tokens"]["default"] == 16
        assert c.post("/generate", json={"prompt": "Operator:", "ignore_eos": True}).status_code == 200
        assert c.post("/generate", json={"max_tokens": 17}).status_code == 400


def megabyte_body(text: str) -> bytes:
    """A scoring request at stride 1 of as much of `text` as a body of 1,000,000 bytes holds."""
    text = text[:1_000_000]
    while len(body := json.dumps(scoring(text)).encode()) > 1_000_000:
        text = text[: len(text) - (len(body) - 1_000_000)]
    return body


def test_a_megabyte_prompt_at_stride_1_is_refused_in_under_a_second(bundle, sample_calls):
    from fingpt.tokenizer import load_tokenizer

    body = megabyte_body(" ".join(sample_calls * 2))  # real calls
    tokens = len(load_tokenizer(bundle / "tokenizer.json").encode(json.loads(body)["prompt"]))
    windows = 1_000_000 // CONTEXT  # the default cap's whole windows
    with serve(bundle) as server:
        start = time.perf_counter()
        response = httpx.post(
            f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        elapsed = time.perf_counter() - start
    print(f"\n1 MB prompt ({tokens:,} tokens) at score_stride 1 refused in {elapsed * 1000:.0f} ms")
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        f"this prompt of {tokens:,} tokens at score_stride 1 needs {CONTEXT * (tokens - CONTEXT):,} token "
        f"positions (windows of 32 tokens), above this server's cap of 1,000,000: use score_stride >= "
        f"{math.ceil((tokens - 1 - CONTEXT) / (windows - 1))} or a text of at most "
        f"{CONTEXT + 1 + windows - 1:,} tokens"
    )
    assert elapsed < 1.0  # the bound: tokenized and refused before any scoring


@pytest.fixture(scope="module")
def impatient(bundle):
    """A server whose requests may take half a second."""
    limits = Limits(max_tokens=10**6, max_score_positions=10**8)
    with asgi_client(bundle, timeout=0.5, limits=limits) as c:
        yield c


TIMED_OUT = {"message": "the request took longer than 0.5 s", "type": "timeout", "param": None, "code": None}
ENDLESS = {"prompt": "Operator:", "max_tokens": 10**6, "ignore_eos": True}


def test_generation_and_scoring_past_the_timeout_answer_504(impatient):
    generation = impatient.post("/v1/completions", json=ENDLESS)
    assert generation.status_code == 504 and generation.json() == {"error": TIMED_OUT}
    assert impatient.post("/generate", json=ENDLESS).json() == {"error": TIMED_OUT}
    scored = impatient.post("/v1/completions", json=scoring(IDS[:20_000]))  # 640,000 positions: seconds
    assert scored.status_code == 504 and scored.json() == {"error": TIMED_OUT}
    assert impatient.get("/health").json()["status"] == "ok"


def test_an_error_after_a_stream_started_is_its_last_event_before_done(impatient):
    response = impatient.post("/v1/completions", json={**ENDLESS, "stream": True})
    assert response.status_code == 200  # sent before the timeout
    *chunks, error = events(response)
    assert chunks and all(chunk["object"] == "text_completion" for chunk in chunks)
    assert error == {"error": TIMED_OUT}


@pytest.fixture(scope="module")
def live(bundle):
    with serve(bundle) as server:  # live: the test client would raise the 500's exception itself
        yield server


@pytest.fixture
def decoding_fails_at_the_third_token(monkeypatch):
    push, pushed = TextStream.push, count(1)

    def push_or_fail(self, token_id):
        if next(pushed) == 3:
            raise RuntimeError("injected decoding fault")
        return push(self, token_id)

    monkeypatch.setattr(TextStream, "push", push_or_fail)


def internal_error(request_id: str) -> dict:
    return {
        "message": f"internal server error (request id {request_id}): the server's log holds its traceback",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


def test_a_failed_decoding_step_answers_500_with_an_id_for_its_traceback(
    live, decoding_fails_at_the_third_token, caplog
):
    body = {"prompt": "Operator:", "max_tokens": 8, "ignore_eos": True, "seed": 1}
    with caplog.at_level("ERROR", logger="fingpt.serve"):
        response = httpx.post(f"{live.url}/v1/completions", json=body)
    request_id = response.headers["x-request-id"]
    assert response.status_code == 500 and response.json() == {"error": internal_error(request_id)}
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info[1].args == ("injected decoding fault",)
    assert httpx.post(f"{live.url}/v1/completions", json=body).status_code == 200  # the engine goes on


def test_a_failed_decoding_step_mid_stream_is_the_streams_last_event(
    live, decoding_fails_at_the_third_token, caplog
):
    body = {"prompt": "Operator:", "max_tokens": 8, "ignore_eos": True, "seed": 1, "stream": True}
    with caplog.at_level("ERROR", logger="fingpt.serve"):
        response = httpx.post(f"{live.url}/v1/completions", json=body)
    *chunks, error = events(response)
    assert response.status_code == 200 and len(chunks) == 2  # two tokens decoded, then the fault
    (record,) = [r for r in caplog.records if r.getMessage().startswith("request ")]
    request_id = record.getMessage().split()[1]
    assert error == {"error": internal_error(request_id)}


def test_four_maximal_scorings_leave_completions_refusals_and_health_answering(bundle):
    """4 scorings at the cap and 4 just over it at once, with 4 completions beside them, while
    /health is asked every 50 ms: the figures are printed (pytest -s)."""
    at_cap = scoring(IDS[:532])  # 1 + (532 - 1 - 32) = 500 windows: 16,000 positions
    over_cap = scoring(IDS[:533])

    async def load(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def timed(path: str, body: dict | None = None) -> tuple[int, float]:
                start = time.perf_counter()
                response = await (client.post(path, json=body) if body else client.get(path))
                return response.status_code, time.perf_counter() - start

            async def health_until(done: asyncio.Event) -> list[tuple[int, float]]:
                answers = []
                while not done.is_set():
                    answers.append(await timed("/health"))
                    await asyncio.sleep(0.05)
                return answers

            done = asyncio.Event()
            health = asyncio.create_task(health_until(done))
            completion = {"prompt": "Operator: Good afternoon", "max_tokens": 32, "ignore_eos": True}
            requests = [at_cap] * 4 + [over_cap] * 4 + [completion] * 4
            answers = await asyncio.gather(*(timed("/v1/completions", body) for body in requests))
            done.set()
            return answers[:4], answers[4:8], answers[8:], await health

    with serve(bundle, timeout=30, limits=Limits(max_score_positions=16_000)) as server:
        scored, refused, completed, health = asyncio.run(load(server.url))

    print()
    for name, answers in (
        ("scored", scored),
        ("refused", refused),
        ("completed", completed),
        ("health", health),
    ):
        seconds = sorted(s for _, s in answers)
        print(f"{name}: {len(seconds)} answers in {seconds[0]:.3f}-{seconds[-1]:.3f} s")
    assert [status for status, _ in scored] == [200] * 4
    assert [status for status, _ in refused] == [413] * 4
    assert [status for status, _ in completed] == [200] * 4  # within the timeout, or it would be 504
    assert health and {status for status, _ in health} == {200}
    assert max(seconds for _, seconds in refused) < 1.0  # refused before any compute, even now
