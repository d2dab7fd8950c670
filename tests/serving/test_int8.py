import time

import pytest
from fastapi.testclient import TestClient

from fingpt.quantize import Int8Linear
from serving.app import create_app
from serving.settings import Settings, parse_args
from tests.serving.conftest import wait_healthy


def test_the_server_decodes_with_int8_weights(bundle):
    with TestClient(create_app(Settings(model=str(bundle), device="cpu", dtype="int8"))) as c:
        wait_healthy(c.get)
        assert isinstance(c.app.state.fingpt.loaded.model.lm_head, Int8Linear)
        body = {"prompt": "Operator: Good day", "max_tokens": 8, "seed": 1, "logprobs": 2}
        answer = c.post("/v1/completions", json=body).json()
        assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["logprobs"]["tokens"]


def test_an_unknown_dtype_is_refused_with_the_choices(bundle, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", str(bundle), "--dtype", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with TestClient(create_app(Settings(model=str(bundle), device="cpu", dtype="int4"))) as c:
        deadline = time.time() + 60
        while c.get("/health").json()["status"] == "loading" and time.time() < deadline:
            time.sleep(0.05)
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["error"] == "dtype must be one of float32, bfloat16, float16, int8, got 'int4'"
