"""The page (ui/app.py) in Streamlit's AppTest, against live servers on the tiny bundle."""

import csv
import io
import math
from html import escape

import httpx
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

import ui
from serving.testing import serve, wait_for_health
from tests.helpers import KEY

PROMPT = "Operator: Good afternoon, and welcome to the"
WIDGETS = {
    "prompt": "text_area",
    "stop": "text_area",
    "max_tokens": "number_input",
    "top_k": "number_input",
    "seed": "number_input",
    "temperature": "slider",
    "top_p": "slider",
    "trim": "checkbox",
}


def generate(at, **values):
    """Set the page's widgets (prompt, seed, ...) and click Generate."""
    for key, value in values.items():
        getattr(at, WIDGETS[key])(key=key).set_value(value)
    at.button(key="generate").click().run()
    assert not at.exception
    return at


def complete(url: str, **body) -> str:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def messages(elements) -> list[str]:
    return [e.value for e in elements]


def test_the_sidebar_shows_the_server_health_and_the_model_card(server, page):
    model = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    card = model["card"]
    at = page(server.url)
    assert messages(at.sidebar.success) == [f"Ready: serving `{model['id']}`"]
    assert not at.error and not at.warning
    shown = at.sidebar.markdown[0].value
    train = card["data"]["splits"]["train"]
    for number in [
        f"{card['parameters']:,} parameters",
        f"context: {model['context_length']} tokens",
        f"{card['val_bpb']:.3f} bits per byte",
        f"{card['steps']:,} steps, {card['tokens_seen']:,} tokens seen",
        f"`{card['data']['name']}`",
        f"train: {train['calls']:,} calls, {train['tokens']:,} tokens",
    ]:
        assert number in shown
    assert (model["context_length"], card["steps"], card["data"]["name"]) == (32, 12, "cc_by_sa")
    assert at.number_input(key="max_tokens").max == model["max_tokens"] == 2048


def test_a_generation_streams_into_the_page_and_stays_in_the_history(server, page, monkeypatch):
    downloads = {}
    store = MemoryMediaFileStorage.load_and_get_id

    def recorded(self, data, mimetype, kind, filename=None):
        downloads[filename] = data
        return store(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recorded)
    at = generate(page(server.url), prompt=PROMPT, max_tokens=12, seed=3)
    [entry] = at.session_state["history"]
    assert entry["text"] and entry["prompt"] == PROMPT
    assert (entry["finish"], entry["tokens"], entry["model"]) == ("length", 12, "tiny")
    [shown] = messages(at.html)
    assert f"{escape(PROMPT)}</span>{escape(entry['text'])}</div>" in shown
    assert [e.label for e in at.expander] == [f"#1 at {entry['time']}: reached max tokens, 12 tokens"]
    assert downloads["fingpt-1.txt"] == (PROMPT + entry["text"]).encode()

    generate(at, seed=4)
    assert [e["n"] for e in at.session_state["history"]] == [1, 2]
    assert [e.label.split(" at ")[0] for e in at.expander] == ["#2", "#1"]  # newest first
    assert len(at.download_button) == 2


def test_the_settings_reach_the_server(server, page):
    chosen = {"max_tokens": 20, "temperature": 1.2, "top_k": 50, "top_p": 0.9, "seed": 11}
    expected = complete(server.url, prompt=PROMPT, **chosen)
    at = generate(page(server.url), prompt=PROMPT, **chosen)
    entry = at.session_state["history"][-1]
    assert entry["text"] == expected
    assert entry["settings"] == {**chosen, "stop": [], "truncate_prompt_tokens": 32}

    # a stop string from the middle of that text: the page's text must end just before it
    stop = next(
        piece
        for piece in (expected[i : i + 3] for i in range(4, len(expected) - 3))
        if piece == piece.strip() and "\n" not in piece and "\\" not in piece
    )
    assert (
        complete(server.url, prompt=PROMPT, stop=[stop, "\n\n"], **chosen) == expected[: expected.index(stop)]
    )
    generate(at, stop=f"{stop}\n\\n\\n")
    entry = at.session_state["history"][-1]
    assert entry["settings"]["stop"] == [stop, "\n\n"]
    assert entry["text"] == expected[: expected.index(stop)]


def test_a_blank_seed_is_drawn_by_the_page_and_kept_with_the_generation(server, page):
    at = generate(page(server.url), prompt=PROMPT, max_tokens=8)
    entry = at.session_state["history"][0]
    assert isinstance(entry["settings"]["seed"], int)
    assert entry["text"] == complete(server.url, prompt=PROMPT, **entry["settings"])


def test_an_opening_fills_the_prompt_with_the_company_and_quarter(server, page):
    at = page(server.url)
    assert at.text_area(key="prompt").value.startswith("Operator: Good day, and welcome to the Acme Corp")
    at.selectbox(key="opening").set_value("CFO's guidance").run()
    at.text_input(key="company").set_value("Agilent Technologies").run()
    at.text_input(key="quarter").set_value("the first quarter of 2021").run()
    assert at.text_area(key="prompt").value.endswith(
        "For the first quarter of 2021, Agilent Technologies expects revenue in the range of $"
    )
    at.selectbox(key="opening").set_value("Free text").run()
    at.text_area(key="prompt").set_value("My own words").run()
    assert at.text_input(key="company").disabled
    assert at.text_area(key="prompt").value == "My own words"


def test_max_tokens_is_bounded_by_the_server_cap(capped_server, page):
    at = page(capped_server.url)
    widget = at.number_input(key="max_tokens")
    assert (widget.max, widget.value) == (8, 8)  # the default of 200, lowered to the cap
    assert "server cap: 8 tokens per request" in at.sidebar.markdown[0].value
    at = generate(at, prompt=PROMPT)
    assert at.session_state["history"][0]["tokens"] == 8


def test_an_unreachable_server_says_how_to_start_one(closed_url, page):
    port = closed_url.rsplit(":", 1)[1]
    expected = (
        f"Cannot reach the server at {closed_url}. Start it with "
        f"`fingpt-serve --model models/latest --port {port}`, or fix the URL in the sidebar."
    )
    at = page(closed_url)
    assert messages(at.sidebar.error) == [expected]
    generate(at)
    assert messages(at.main.error) == [expected]
    assert at.session_state["history"] == []
    assert at.number_input(key="max_tokens").max is None  # no cap known: the server will say


def test_a_url_that_is_not_a_fingpt_server_is_named(server, page):
    at = page(f"{server.url}/nothing")
    assert messages(at.sidebar.error) == [
        f"{server.url}/nothing answered 404 Not Found, not as a fingpt server would: is it the right URL?"
    ]
    at.text_input(key="url").set_value("127.0.0.1:1:2").run()
    assert messages(at.sidebar.error) == [
        "“http://127.0.0.1:1:2” is not a server URL: write it like http://127.0.0.1:8000."
    ]


def test_a_missing_or_wrong_api_key_is_explained(keyed_server, page):
    at = page(keyed_server.url)
    needs = (
        "This server needs an API key: enter it in the sidebar "
        "(or set FINGPT_API_KEY before starting the page)."
    )
    assert messages(at.sidebar.error) == [needs]
    at.text_input(key="api_key").set_value("wrong").run()
    refused = "The server refused this API key: check the key in the sidebar."
    assert messages(at.sidebar.error) == [refused]
    generate(at, prompt=PROMPT, max_tokens=4)
    assert messages(at.main.error) == [refused]

    at = generate(page(keyed_server.url, key=KEY), prompt=PROMPT, max_tokens=4)
    assert not at.error
    assert at.session_state["history"][0]["tokens"] == 4


def test_a_full_queue_asks_to_try_again(full_server, page):
    at = generate(page(full_server.url), prompt=PROMPT, max_tokens=4)
    assert messages(at.main.warning) == ["The server is busy: its queue is full. Try again in a moment."]
    assert at.session_state["history"] == []


def test_settings_the_server_rejects_show_its_message(server, page):
    at = generate(page(server.url), prompt=PROMPT, stop="a\nb\nc\nd\ne", trim=False)
    assert messages(at.main.error) == [
        "The server rejected the settings: stop: Value error, at most 4 stop strings, got 5"
    ]
    long_prompt = PROMPT + " Thank you. Our revenue for the quarter was up 8%." * 6
    generate(at, prompt=long_prompt, stop="")
    [error] = messages(at.main.error)
    assert error.startswith("The prompt is too long for this model: the prompt is ")
    assert error.endswith(
        "tokens, longer than the model's context of 32 tokens. Shorten it, or tick “Trim a long prompt”."
    )
    generate(at, trim=True, max_tokens=5)
    assert not at.error
    assert at.session_state["history"][0]["settings"]["truncate_prompt_tokens"] == 32


def test_a_server_still_loading_says_so_then_is_ready(loading_server, page):
    live, release = loading_server
    at = page(live.url)
    assert messages(at.sidebar.warning) == [
        "The server is up and its model is still loading: check again in a few seconds."
    ]
    generate(at, prompt=PROMPT, max_tokens=4)
    assert messages(at.main.warning) == ["The model is still loading: try again in a few seconds."]
    release.set()
    wait_for_health(live.get)
    at.button(key="check").click().run()
    assert messages(at.sidebar.success) == ["Ready: serving `tiny`"]


def test_a_server_that_could_not_load_its_model_says_why(tmp_path, page):
    with serve(tmp_path / "missing", wait="error") as live:
        at = page(live.url)
    [error] = messages(at.sidebar.error)
    assert error.startswith("The server could not load its model: ")
    assert "missing does not exist" in error


def test_a_generation_cut_off_by_stop_is_kept_as_stopped(server, page):
    at = page(server.url)
    running = {
        "n": 1,
        "time": "12:00:00",
        "model": "tiny",
        "prompt": PROMPT,
        "text": " the first $1.48 <b>",
        "settings": {"max_tokens": 100, "stop": []},
        "finish": "running",
        "tokens": None,
        "error": None,
    }
    at.session_state["history"] = [running]  # what a run interrupted by the Stop button leaves
    at.run()
    assert messages(at.info) == ["Stopped generation #1: its text so far is kept below."]
    assert [e.label for e in at.expander] == ["#1 at 12:00:00: stopped"]
    [shown] = messages(at.html)
    assert f"{escape(PROMPT)}</span> the first $1.48 &lt;b&gt;</div>" in shown


@pytest.mark.parametrize("args", [[], ["--server.port", "8600", "--server.headless", "true"]])
def test_fingpt_ui_runs_streamlit_on_the_page(monkeypatch, args):
    calls = []
    monkeypatch.setattr(ui.subprocess, "call", lambda command: calls.append(command) or 0)
    assert ui.main(args) == 0
    assert calls == [[ui.sys.executable, "-m", "streamlit", "run", str(ui.APP), *ui.OPTIONS, *args]]
    assert ui.OPTIONS[:2] == ["--client.toolbarMode", "viewer"]  # no developer toolbar for users
    assert ui.APP.name == "app.py" and ui.APP.is_file()


def test_a_model_that_failed_to_load_is_not_called_still_loading():
    from ui.client import explain

    failed = {"code": "model_not_loaded", "message": "the model could not be loaded: bundle x is corrupt"}
    error = explain(503, failed, has_key=False)
    assert error.message == (
        "The server could not load its model (bundle x is corrupt): restart it with a bundle that loads."
    )
    assert not error.warning
    loading = explain(503, {"code": "loading", "message": "the model is still loading: retry shortly"}, False)
    assert loading.message == "The model is still loading: try again in a few seconds." and loading.warning


CALL = (
    "Operator: Good afternoon, and welcome to the Acme Corp Fourth Quarter 2024 Earnings Call. "
    "Revenue was $1.48 billion, up 24.9% year-over-year. Thank you. Our next question comes from "
    "Alex Chen with Evercore ISI.\nAlex Chen: Can you talk about margins?"
)


def score_on_the_page(at, text: str):
    at.radio(key="mode").set_value("Score a call").run()
    at.text_area(key="transcript").set_value(text).run()
    at.button(key="score").click().run()
    assert not at.exception
    return at


def test_score_a_call_shows_fingpt_evaluates_bits_per_byte_and_ranks_sentences(server, page, bundle):
    from fingpt.checkpoint import load_model
    from fingpt.evaluate import score
    from ui.client import Client
    from ui.score import scores_csv, sentences, tokens

    at = score_on_the_page(page(server.url), CALL * 3)  # several windows of the 32-token context
    loaded = load_model(bundle)
    expected = score(loaded.model, loaded.tokenizer, [CALL * 3], stride=16)  # one-call corpus
    assert float(at.metric[0].value) == pytest.approx(expected.bpb, abs=0.0005)  # as shown: 3 decimals
    assert f"{expected.tokens:,} tokens" in at.caption[-1].value and "sliding by 16" in at.caption[-1].value
    # each token's surprisal is its logprob in bits; sentences rank by their tokens' mean
    scored = tokens(Client(server.url).score(CALL * 3, 16))
    assert [t.bits for t in scored] == [-t.logprob / math.log(2) for t in scored]
    ranked = sentences(scored, CALL * 3)
    table = at.table[0].value
    assert list(table["mean bits"]) == [round(s.bits, 2) for s in ranked[:10]]
    assert list(table["mean bits"]) == sorted(table["mean bits"], reverse=True)
    # every token counts in exactly one sentence's mean
    assert sum(s.tokens for s in ranked) == len(scored)
    assert sum(s.bits * s.tokens for s in ranked) == pytest.approx(sum(t.bits for t in scored))
    # the CSV to download: a row per token, its text, place and figures as the page computed them
    rows = list(csv.DictReader(io.StringIO(scores_csv(scored))))
    assert [(int(r["index"]), r["token"], int(r["offset"])) for r in rows] == [
        (i, t.text, t.offset) for i, t in enumerate(scored)
    ]
    assert "".join(r["token"] for r in rows) == CALL * 3  # the whole call, token by token
    for row, t in zip(rows, scored, strict=True):
        assert float(row["logprob"]) == pytest.approx(t.logprob, abs=5e-7)
        assert float(row["surprisal_bits"]) == pytest.approx(t.bits, abs=5e-5)
        assert float(row["probability"]) == pytest.approx(math.exp(t.logprob), rel=1e-5)
        alternatives = dict(a.rsplit("=", 1) for a in row["top_alternatives"].split("; ")) if t.top else {}
        assert {k: float(v) for k, v in alternatives.items()} == pytest.approx(t.top, abs=5e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", "Paste a transcript, or upload a .txt, to score."),
        ("x" * 200_001, "The text is 200,001 characters, over the limit of 200,000: score a part of it."),
    ],
)
def test_score_a_call_refuses_empty_or_too_long_text(server, page, text, message):
    at = score_on_the_page(page(server.url), text)
    assert messages(at.error) == [message] and not at.metric


def test_score_a_call_over_the_servers_cap_shows_its_advice(capped_server, page):
    at = score_on_the_page(page(capped_server.url), CALL * 3)
    body = {"prompt": "<|endoftext|>" + CALL * 3, "echo": True, "logprobs": 5, "max_tokens": 0}
    refusal = httpx.post(f"{capped_server.url}/v1/completions", json=body | {"score_stride": 16})
    assert refusal.status_code == 413 and refusal.json()["error"]["code"] == "too_many_positions"
    advice = refusal.json()["error"]["message"]
    assert messages(at.error) == [f"The call is too long to score on this server: {advice}."]
    assert not at.metric


def test_score_a_call_says_when_the_server_cannot_be_reached(closed_url, page):
    at = score_on_the_page(page(closed_url), CALL)
    assert any("Cannot reach the server" in m for m in messages(at.error))
    assert "The server is not ready (see the sidebar): the call cannot be scored yet." in messages(at.error)
