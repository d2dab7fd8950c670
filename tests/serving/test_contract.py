"""The contract: the schemathesis fuzzer, with all of its checks, against a live server."""

import os
import subprocess
import sys

from serving.app import Settings, create_app
from serving.protocol import Limits
from serving.testing import serve

KEY = "c0ntract"
CONFIG = f"""
seed = 1
generation.max-examples = 40
auth.openapi.HTTPBearer.bearer = "{KEY}"
"""


def test_the_server_keeps_its_documented_contract(bundle, tmp_path):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    with serve(bundle, api_key=KEY, limits=Limits(max_tokens=16, max_n=2)) as server:
        fuzz = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "run"]
            + [f"{server.url}/openapi.json", "--checks", "all"],
            cwd=tmp_path,  # its example database and cache stay out of the checkout
            env={**os.environ, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert fuzz.returncode == 0, fuzz.stdout[-8000:] + fuzz.stderr[-2000:]
    assert "No issues found" in fuzz.stdout and "5 selected / 5 total" in fuzz.stdout


ANSWERS = {  # what each route documents: the statuses it can answer, and no others
    "GET /health": ["200", "503"],
    "GET /metrics": ["200"],
    "GET /v1/models": ["200", "503"],
    "POST /v1/completions": ["200", "400", "413", "429", "500", "503", "504"],
    "POST /generate": ["200", "400", "413", "429", "500", "503", "504"],
}


def answers(spec: dict) -> dict[str, list[str]]:
    return {
        f"{method.upper()} {path}": sorted(operation["responses"])
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }


def test_the_spec_documents_exactly_what_each_route_answers(client):
    spec = client.get("/openapi.json").json()
    assert answers(spec) == ANSWERS
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert all(
        completions[status]["content"]["application/json"]["schema"] == error
        for status in ANSWERS["POST /generate"][1:]
    )
    request = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert (request["max_tokens"]["maximum"], request["n"]["maximum"]) == (256, 4)  # the client's caps
    # what the server accepts, exactly: seeds, and (from the loaded model) token ids and score_stride
    assert request["seed"]["anyOf"][0] == {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1}
    _, texts, ids, id_lists = request["prompt"]["anyOf"]
    assert ids["items"] == id_lists["items"]["items"] == {"type": "integer", "minimum": 0, "maximum": 8191}
    assert texts["maxItems"] == id_lists["maxItems"] == 64  # the queue: a prompt is at least one choice
    assert request["score_stride"]["anyOf"][0]["maximum"] == 32
    within = spec["components"]["schemas"]["CompletionRequest"]["allOf"][-1]["else"]["properties"]["prompt"]
    assert [branch.get("maxItems") for branch in within["anyOf"][2:]] == [32, 64]  # ids: the context
    assert within["anyOf"][3]["items"]["maxItems"] == 32
    assert (
        "HTTPValidationError" not in spec["components"]["schemas"]
        and "security" not in spec["paths"]["/generate"]["post"]
    )


def test_with_a_key_the_spec_documents_401_and_the_bearer_scheme():
    spec = create_app(Settings(model="unused", api_key="k3y")).openapi()
    needs_key = {"GET /v1/models", "POST /v1/completions", "POST /generate"}
    assert answers(spec) == {
        route: sorted(statuses + ["401"]) if route in needs_key else statuses
        for route, statuses in ANSWERS.items()
    }
    assert spec["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    prompt = spec["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
    assert prompt["anyOf"][2]["items"] == {"type": "integer"}  # no model loaded: no vocabulary to bound
    assert spec["paths"]["/v1/models"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]
