"""fingpt-serve --backend llama.cpp: the same API and sampler, llama.cpp's arithmetic on the
bundle's GGUF export. Its answers are compared with the PyTorch backend's on the same bundle."""

import json

import pytest
import torch

from fingpt.checkpoint import load_model
from fingpt.evaluate import score
from fingpt.generation import SamplingParams, generate
from serving.testing import asgi_client

pytest.importorskip("llama_cpp", reason="llama-cpp-python: pip install -e '.[dev]'")

PROMPT = "Operator: Good afternoon, and welcome to the"


@pytest.fixture(scope="module")
def client(demo_bundle):
    with asgi_client(demo_bundle, backend="llama.cpp") as c:
        yield c


def complete(client, **body):
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_greedy_and_seeded_text_is_fingpts_past_the_context_too(client, demo_bundle):
    ours = load_model(demo_bundle)
    prompt = ours.tokenizer.encode(PROMPT)
    length = ours.model.config.block_size + 40  # the rows slide for the last 40 + len(prompt) tokens
    greedy = SamplingParams(max_new_tokens=length, temperature=0.0, ignore_eos=True)
    (expected,) = generate(ours.model, ours.tokenizer, [prompt], greedy)
    body = complete(client, max_tokens=length, temperature=0.0, ignore_eos=True)
    assert body["choices"][0]["text"] == ours.tokenizer.decode(expected.tokens)
    assert body["usage"]["completion_tokens"] == length
    sampled = [SamplingParams(max_new_tokens=30, temperature=0.8, top_k=200, seed=5 + i) for i in range(3)]
    expected = generate(ours.model, ours.tokenizer, [prompt] * 3, sampled)
    body = complete(client, max_tokens=30, temperature=0.8, top_k=200, seed=5, n=3)
    assert [c["text"] for c in body["choices"]] == [ours.tokenizer.decode(e.tokens) for e in expected]


def test_logprobs_and_scoring_are_fingpts_within_1e_3(client, demo_bundle):
    ours = load_model(demo_bundle)
    text = " ".join([PROMPT, "Revenue was $1.48 billion, up 24.9% in Q3'24."] * 30)
    ids = [ours.tokenizer.eot_id, *ours.tokenizer.encode(text)]
    assert len(ids) > 3 * ours.model.config.block_size
    body = complete(client, prompt=ids, echo=True, logprobs=2, max_tokens=0, score_stride=64)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) and all(
        len(t) == 2 for t in logprobs["top_logprobs"][1:]
    )
    expected = score(ours.model, ours.tokenizer, [text], stride=64)
    assert -sum(logprobs["token_logprobs"][1:]) == pytest.approx(expected.nll, rel=1e-5)
    request = {"max_tokens": 20, "temperature": 0.0, "logprobs": 3, "ignore_eos": True}
    theirs = complete(client, **request)["choices"][0]["logprobs"]
    with asgi_client(demo_bundle) as pytorch:  # the same request to the PyTorch backend
        expected = complete(pytorch, **request)["choices"][0]["logprobs"]
    assert theirs["tokens"] == expected["tokens"]
    assert theirs["token_logprobs"] == pytest.approx(expected["token_logprobs"], abs=1e-3)
    for top, top_expected in zip(theirs["top_logprobs"], expected["top_logprobs"], strict=True):
        assert list(top) == list(top_expected)


def test_requests_scoring_at_once_get_what_each_gets_alone(demo_bundle):
    from concurrent.futures import ThreadPoolExecutor

    from serving.llama_backend import LlamaCppModel

    model = LlamaCppModel.of(load_model(demo_bundle), "float32")
    windows = [torch.randint(0, model.config.vocab_size, (2, 64)) for _ in range(4)]
    alone = [model(idx)[0] for idx in windows]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda idx: model(idx)[0], windows))
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def test_streaming_gives_the_same_text(client):
    full = complete(client, seed=9, max_tokens=20)["choices"][0]["text"]
    response = client.post(
        "/v1/completions", json={"prompt": PROMPT, "max_tokens": 20, "seed": 9, "stream": True}
    )
    chunks = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n")[:-2] if line]
    assert response.text.rstrip().endswith("data: [DONE]")
    assert "".join(c["choices"][0]["text"] for c in chunks) == full


def test_a_layout_llama_cpp_cannot_run_is_the_reason_the_model_did_not_load(bundle):
    reason = (
        "learned positions have no llama.cpp architecture that gives fingpt's logits (its gpt2 uses "
        "tanh GELU): export a rotary layout (model=modern_tiny), or --format hf"
    )
    with asgi_client(bundle, backend="llama.cpp", wait="error") as c:  # the tiny GPT-2 layout
        health = c.get("/health")
    assert health.status_code == 503 and health.json() == {"status": "error", "error": reason}
