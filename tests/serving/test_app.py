import json
import threading

import pytest

PROMPT = "Operator: Good afternoon, and welcome to the"


def complete(client, **body):
    return client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, **body})


def events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_health_and_models(client, bundle):
    assert client.get("/health").json()["status"] == "ok"
    (model,) = client.get("/v1/models").json()["data"]
    card = json.loads((bundle / "card.json").read_text())
    assert model["id"] == "tiny" and model["object"] == "model"
    assert model["context_length"] == 32 and model["max_tokens"] == 256
    assert model["card"]["val_bpb"] == card["val_bpb"] and model["card"]["parameters"] == card["parameters"]


def test_the_served_card_is_the_bundles_less_its_checksums_and_training_config(client, bundle):
    (model,) = client.get("/v1/models").json()["data"]
    card = json.loads((bundle / "card.json").read_text())
    assert model["card"] == {k: v for k, v in card.items() if k not in ("sha256", "training_config")}
    assert model["card"]["val_bpb"] > 0 and model["card"]["steps"] == 12
    documented = client.get("/openapi.json").json()["components"]["schemas"]["ServedCard"]["properties"]
    assert set(documented) == set(model["card"])  # /openapi.json lists every field of the card


def test_a_completion_has_the_openai_shape(client):
    response = complete(client, seed=1)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # all 12 tokens, or fewer when the call ended (<|endoftext|>) first
    assert (choice["finish_reason"], usage["completion_tokens"] == 12) in (("length", True), ("stop", False))


def test_seeded_completions_repeat_and_unseeded_differ(client):
    first, again = complete(client, seed=7).json(), complete(client, seed=7).json()
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
    texts = {complete(client, max_tokens=30).json()["choices"][0]["text"] for _ in range(4)}
    assert len(texts) > 1


def test_prompts_lists_n_echo_and_logprobs(client):
    body = complete(client, prompt=["Revenue", "Guidance"], n=2, seed=3, echo=True, logprobs=2).json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [c["text"][: len("Revenue")] for c in choices[:2]] == ["Revenue", "Revenue"]
    assert choices[2]["text"].startswith("Guidance")
    assert choices[0]["text"] != choices[1]["text"]  # n samples differ (seed, seed + 1)
    logprobs = choices[0]["logprobs"]  # with echo: the prompt's tokens, then the completion's
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
    assert "".join(logprobs["tokens"]) == choices[0]["text"] and logprobs["text_offset"][0] == 0
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert all(1 <= len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    without_echo = complete(client, prompt="Revenue", seed=3, logprobs=2).json()["choices"][0]["logprobs"]
    assert without_echo["text_offset"][0] == 0 and without_echo["token_logprobs"][0] is not None


def test_echo_with_max_tokens_0_returns_the_prompt_scored(client):
    body = complete(client, echo=True, logprobs=1, max_tokens=0).json()
    [choice] = body["choices"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert "".join(choice["logprobs"]["tokens"]) == PROMPT and body["usage"]["completion_tokens"] == 0
    streamed = events(complete(client, echo=True, max_tokens=0, stream=True))
    assert [c["choices"][0]["text"] for c in streamed] == [PROMPT, ""]
    assert streamed[-1]["choices"][0]["finish_reason"] == "length"


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(client, bundle):
    import torch

    from fingpt.checkpoint import load_model

    loaded = load_model(bundle)
    ids = loaded.tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected = torch.log_softmax(loaded.model(torch.tensor([ids]))[0][0, :-1], -1)
    expected = expected.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    for stream in (False, True):
        response = complete(client, echo=True, logprobs=1, max_tokens=1, stream=stream)
        if stream:
            logprobs = events(response)[0]["choices"][0]["logprobs"]  # the echo chunk
        else:
            logprobs = response.json()["choices"][0]["logprobs"]
        scored = torch.tensor(logprobs["token_logprobs"][1 : len(ids)])
        assert torch.allclose(scored, expected, atol=1e-4)


def test_stop_strings_cut_the_text(client):
    free = complete(client, seed=11, max_tokens=40).json()["choices"][0]
    stop = free["text"][8:11]
    assert len(stop) == 3
    stopped = complete(client, seed=11, max_tokens=40, stop=[stop, "never-seen"]).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].index(stop)]


def test_streaming_sends_deltas_then_usage_then_done(client):
    full = complete(client, seed=5, max_tokens=20).json()["choices"][0]
    response = complete(client, seed=5, max_tokens=20, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == full["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == full["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_the_original_generate_endpoint(client):
    response = client.post("/generate", json={"max_tokens": 20})
    assert response.status_code == 200 and set(response.json()) == {"generated_text"}
    seeded = client.post("/generate", json={"max_tokens": 10, "prompt": "Revenue", "seed": 2}).json()
    assert seeded == client.post("/generate", json={"max_tokens": 10, "prompt": "Revenue", "seed": 2}).json()
    assert client.post("/generate", json={"max_tokens": 0}).status_code == 400


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"top_k": -1}, "top_k", "greater than or equal to 0"),
        ({"max_tokens": 0}, "max_tokens", "at least 1 (0 only with echo"),
        ({"max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
        ({"max_tokens": 257}, "max_tokens", "max_tokens is 257, above this server's cap of 256"),
        ({"stop": ""}, "stop", "stop strings must not be empty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings"),
        ({"n": 5}, "n", "n is 5, above this server's cap of 4"),
        ({"max_tokens": "ten"}, "max_tokens", "valid integer"),
        ({"prompt": 5}, "prompt", "prompt: Input should be a valid string"),
        ({"prompt": ["ok", 3]}, "prompt", "prompt: Input should be a valid string"),
        ({"prompt": []}, "prompt", "at least one"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
        ({"prompt": "word " * 40}, "prompt", "longer than the model's context of 32 tokens"),
        ({"top_k": 2**63}, "top_k", "less than or equal to"),
        ({"seed": 2**64}, "seed", "less than"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"prompt": [1, 2, 10**6]}, "prompt", "token id 1000000 is outside the vocabulary"),
        ({"prompt": [PROMPT] * 17, "n": 4, "max_tokens": 1}, "prompt", "asks for 68 completions"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream"),
        ({"score_stride": 8}, "score_stride", "send it with echo, logprobs and max_tokens 0"),
        (
            {"score_stride": 33, "echo": True, "logprobs": 0, "max_tokens": 0},
            "score_stride",
            "score_stride is 33, above the model's context of 32",
        ),
    ],
)
def test_bad_requests_get_400_in_the_openai_error_shape(client, body, param, message):
    response = client.post("/v1/completions", json={"prompt": PROMPT, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]


def test_lone_surrogates_in_json_strings_are_refused(client):
    for raw, param in ((rb'{"prompt": "a\ud800b"}', "prompt"), (rb'{"stop": ["ok", "\udfff"]}', "stop")):
        for path in ("/v1/completions", "/generate"):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 400 and response.json()["error"]["param"] == param
            assert "lone surrogate" in response.json()["error"]["message"]


def test_token_id_prompts_give_the_text_prompts_completion(client, bundle):
    from fingpt.tokenizer import load_tokenizer

    ids = load_tokenizer(bundle / "tokenizer.json").encode(PROMPT)
    as_text = complete(client, seed=3, echo=True).json()["choices"][0]["text"]
    assert complete(client, prompt=ids, seed=3, echo=True).json()["choices"][0]["text"] == as_text
    both = complete(client, prompt=[ids, ids[:3]], seed=3).json()["choices"]
    assert both[0]["text"] == as_text.removeprefix(PROMPT) and len(both) == 2


def test_unknown_routes_and_methods_answer_in_the_openai_shape(client):
    for response, status in (
        (client.get("/v1/completions"), 405),
        (client.post("/v1/chat/completions", json={}), 404),
    ):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/v1/completions").headers["allow"] == "POST"  # what the route does take
    assert client.delete("/health").headers["allow"] == "GET"
    assert client.post("/generate", json={"prompt": ["a", "b"]}).json()["error"]["param"] == "prompt"
    text = client.get("/metrics").text
    assert 'path="unmatched"' in text and "/v1/chat/completions" not in text  # one series for all


def test_integers_written_as_json_floats_are_integers(client):
    body = complete(client, max_tokens=3.0, n=2.0, seed=7.0, logprobs=1.0).json()
    assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 6
    assert (
        body["choices"][0]["text"] == complete(client, max_tokens=3, n=2, seed=7).json()["choices"][0]["text"]
    )
    assert complete(client, n=1.5).status_code == 400


def test_an_empty_prompt_is_echoed_and_scored_as_nothing(client):
    body = complete(client, prompt="", echo=True, logprobs=1, max_tokens=2, seed=1).json()
    [choice] = body["choices"]
    assert body["usage"]["prompt_tokens"] == 0 and "".join(choice["logprobs"]["tokens"]) == choice["text"]
    streamed = events(complete(client, prompt="", echo=True, logprobs=1, max_tokens=0, stream=True))
    assert [c["choices"][0]["text"] for c in streamed] == ["", ""]


def test_a_long_prompt_can_keep_its_last_tokens(client):
    response = complete(client, prompt="word " * 40, truncate_prompt_tokens=20)
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 20


def test_malformed_json_and_huge_bodies(client):
    response = client.post(
        "/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] is None
    response = client.post("/v1/completions", json={"prompt": "x" * 1_100_000})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    chunked = (b'{"prompt": "' + b"x" * 100_000 + b'"}' if i == 11 else b" " * 100_000 for i in range(12))
    response = client.post("/v1/completions", content=chunked, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    for body in ([], None, "text", {"prompt": None}, {"stop": [1]}, {"seed": 1.5}):
        assert client.post("/v1/completions", json=body).status_code == 400


def test_metrics_count_requests_and_tokens(client):
    complete(client)
    text = client.get("/metrics").text
    assert 'fingpt_requests_total{path="/v1/completions",status="200"}' in text
    assert "fingpt_generated_tokens_total" in text and "fingpt_batch_size_bucket" in text
    assert "fingpt_queue_depth" in text and "fingpt_time_to_first_token_seconds_count" in text


def test_health_is_503_until_the_model_is_loaded(bundle, monkeypatch):
    import serving.state
    from fingpt.checkpoint import load_model
    from serving.testing import asgi_client, wait_for_health

    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(30)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(serving.state, "load_model", slow_load)
    with asgi_client(bundle, wait=None) as c:
        assert c.get("/health").status_code == 503
        busy = c.post("/v1/completions", json={"prompt": "x"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "loading"
        release.set()
        wait_for_health(c.get)


def test_the_api_key_is_enforced_except_for_health(bundle):
    from serving.testing import asgi_client

    with asgi_client(bundle, api_key="s3cret") as c:
        assert c.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        wrong = c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        right = c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


def test_the_server_can_decode_in_bfloat16(bundle):
    from serving.testing import asgi_client

    with asgi_client(bundle, dtype="bfloat16") as c:
        assert c.app.state.fingpt.loaded.model.wte.weight.dtype.is_floating_point
        assert str(c.app.state.fingpt.loaded.model.wte.weight.dtype) == "torch.bfloat16"
        body = complete(c, seed=1, max_tokens=8).json()
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_cancelled_jobs_do_not_hold_queue_places(bundle):
    import asyncio

    from fingpt.checkpoint import load_model
    from fingpt.generation import SamplingParams
    from serving.engine import Choice, Engine, Job, Overloaded

    engine = Engine(load_model(bundle), max_batch_size=1, max_queue=4)  # no worker: nothing drains
    loop = asyncio.new_event_loop()

    def job(choices: int) -> Job:
        return Job([Choice([1, 2], SamplingParams())] * choices, loop)

    timed_out = job(4)
    engine.submit(timed_out)
    with pytest.raises(Overloaded, match="4 choices are waiting"):
        engine.submit(job(1))
    timed_out.cancel()  # its client got a 504 and left
    engine.submit(job(4))
    assert engine.waiting_choices() == 4 and engine.waiting.qsize() == 8
    loop.close()


def test_a_model_that_could_not_load_is_never_said_to_be_loading(corrupt_bundle):
    from serving.testing import asgi_client, wait_for_health

    reason = f"bundle {corrupt_bundle}: model.safetensors is corrupt (its SHA-256 differs from card.json)"
    with asgi_client(corrupt_bundle, wait=None) as c:
        health = wait_for_health(c.get, until=("ok", "error"))
        assert health.status_code == 503 and health.json() == {"status": "error", "error": reason}
        for response in (c.post("/v1/completions", json={"prompt": "x"}), c.post("/generate", json={})):
            assert response.status_code == 503
            assert response.json()["error"] == {
                "message": f"the model could not be loaded: {reason}",
                "type": "server_error",
                "param": None,
                "code": "model_not_loaded",
            }
        assert c.get("/v1/models").json()["error"]["code"] == "model_not_loaded"


def test_a_device_this_machine_lacks_is_the_reason_the_model_did_not_load(bundle):
    import torch

    from serving.testing import asgi_client, wait_for_health

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    reason = "device cuda is not available here (torch sees no CUDA GPU): use device=cpu"
    with asgi_client(bundle, wait=None, device="cuda") as c:
        health = wait_for_health(c.get, until=("ok", "error"))
        assert health.status_code == 503 and health.json() == {"status": "error", "error": reason}


def test_fingpt_serve_ends_in_one_line_when_its_model_cannot_load(corrupt_bundle):
    import subprocess
    import sys

    from tests.helpers import ROOT

    serve = [sys.executable, "-m", "serving.app", "--model", str(corrupt_bundle), "--port", "0"]
    run = subprocess.run(serve, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: bundle {corrupt_bundle}: model.safetensors is corrupt (its SHA-256 differs from card.json)"
    ]
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr


def test_score_stride_scores_a_long_call_in_one_request_as_fingpt_evaluate_does(client, bundle):
    import math

    from fingpt.checkpoint import load_model
    from fingpt.evaluate import score

    loaded = load_model(bundle)
    text = " ".join([PROMPT, "Revenue was $1.48 billion, up 24.9% in Q3'24."] * 8)
    ids = [loaded.tokenizer.eot_id, *loaded.tokenizer.encode(text)]  # as fingpt-evaluate sees a call
    assert len(ids) > 3 * 32  # several windows of the tiny model's context
    body = {"prompt": ids, "echo": True, "logprobs": 2, "max_tokens": 0, "score_stride": 16}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    logprobs = response.json()["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) and logprobs["token_logprobs"][0] is None
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])
    expected = score(loaded.model, loaded.tokenizer, [text], stride=16)
    assert -sum(logprobs["token_logprobs"][1:]) == pytest.approx(expected.nll, rel=1e-5)
    bpb = -sum(logprobs["token_logprobs"][1:]) / math.log(2) / len(text.encode())
    assert bpb == pytest.approx(expected.bpb, rel=1e-5)


def test_cors_answers_only_the_allowed_origins(bundle):
    from serving.testing import asgi_client

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed, other = {"Origin": "http://localhost:8501"}, {"Origin": "http://elsewhere.example"}
    with asgi_client(bundle, cors_origins=["http://localhost:8501"]) as c:
        answer = c.options("/v1/completions", headers={**allowed, **preflight})
        assert answer.status_code == 200
        assert {k: v for k, v in answer.headers.items() if k.startswith("access-control-")} == {
            "access-control-allow-origin": "http://localhost:8501",
            "access-control-allow-methods": "GET, POST",
            "access-control-allow-headers": "Accept, Accept-Language, Authorization, Content-Language, "
            "Content-Type",
            "access-control-max-age": "600",
        }
        assert (
            c.get("/health", headers=allowed).headers["access-control-allow-origin"]
            == "http://localhost:8501"
        )
        refused = c.options("/v1/completions", headers={**other, **preflight})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        assert "access-control-allow-origin" not in c.get("/health", headers=other).headers
    with asgi_client(bundle) as c:  # no --cors-origin: no CORS at all
        answer = c.options("/v1/completions", headers={**allowed, **preflight})
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--model", "no/such/bundle"],
            "--model no/such/bundle does not exist: train and export one first (make demo)",
        ),
        (["--max-batch-size", "0"], "--max-batch-size must be positive, got 0"),
        (["--max-queue", "-1"], "--max-queue must be positive, got -1"),
        (["--max-tokens", "0"], "--max-tokens must be positive, got 0"),
        (["--max-n", "0"], "--max-n must be positive, got 0"),
        (["--max-score-positions", "0"], "--max-score-positions must be positive, got 0"),
        (["--timeout", "0"], "--timeout must be positive, got 0.0"),
        (["--timeout", "nan"], "--timeout must be positive, got nan"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
        (
            ["--backend", "onnx"],
            "argument --backend: invalid choice: 'onnx' (choose from 'fingpt', 'llama.cpp')",
        ),
        (
            ["--backend", "llama.cpp", "--device", "cuda"],
            "--backend llama.cpp runs on the CPU here: drop --device cuda",
        ),
        (
            ["--dtype", "float8"],
            "argument --dtype: invalid choice: 'float8' (choose from 'auto', 'float32', 'bfloat16', "
            "'float16', 'int8')",
        ),
    ],
)
def test_each_bad_flag_ends_fingpt_serve_with_its_message_and_status_2(bundle, capsys, flags, message):
    from serving.settings import parse_args

    with pytest.raises(SystemExit) as exit:
        parse_args(["--model", str(bundle), *flags])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"fingpt-serve: error: {message}"


def test_the_flags_make_the_settings(bundle):
    from serving.protocol import Limits
    from serving.settings import Settings, parse_args

    flags = (
        "--max-tokens 64 --max-n 2 --max-score-positions 5000 --timeout 7.5 --cors-origin a --cors-origin b"
    )
    assert parse_args(["--model", str(bundle), *flags.split()]) == Settings(
        model=str(bundle),
        cors_origins=["a", "b"],
        timeout=7.5,
        limits=Limits(max_tokens=64, max_n=2, max_score_positions=5000),
    )
