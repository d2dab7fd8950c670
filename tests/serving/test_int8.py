import pytest

from fingpt.quantize import Int8Linear
from serving.settings import parse_args
from serving.testing import asgi_client


def test_the_server_decodes_with_int8_weights(bundle):
    with asgi_client(bundle, dtype="int8") as c:
        assert isinstance(c.app.state.fingpt.loaded.model.lm_head, Int8Linear)
        body = {"prompt": "Operator: Good day", "max_tokens": 8, "seed": 1, "logprobs": 2}
        answer = c.post("/v1/completions", json=body).json()
        assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["logprobs"]["tokens"]


def test_an_unknown_dtype_is_refused_with_the_choices(bundle, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", str(bundle), "--dtype", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with asgi_client(bundle, wait=("ok", "error"), dtype="int4") as c:
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["error"] == "dtype must be one of float32, bfloat16, float16, int8, got 'int4'"
