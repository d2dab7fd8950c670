"""The fingpt page: start an earnings call, and the model writes the rest.

    streamlit run ui/app.py        (or: fingpt-ui)

It talks to a fingpt server over HTTP only: FINGPT_API_URL (default http://127.0.0.1:8000) and
FINGPT_API_KEY fill the sidebar. Start a server with `fingpt-serve --model models/latest`.
"""

import html
import os
import random
import sys
from contextlib import closing
from datetime import datetime
from pathlib import Path

import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `streamlit run ui/app.py` puts only ui/ on the path
    sys.path.insert(0, ROOT)
from fingpt.card import Card  # noqa: E402
from ui import score  # noqa: E402
from ui.client import DEFAULT_URL, Client, ServerError  # noqa: E402

OPENINGS = {
    "Operator's welcome": (
        "Operator: Good day, and welcome to the {company} {quarter} Earnings Conference Call. At this "
        "time, all participants are in a listen-only mode. After the speakers' remarks, there will be a "
        "question-and-answer session. I would now like to turn the call over to"
    ),
    "CFO's guidance": (
        "Chief Financial Officer: Thank you, and good afternoon, everyone. Let me now turn to our "
        "outlook. For {quarter}, {company} expects revenue in the range of $"
    ),
    "Analyst's question": (
        "Operator: Our first question comes from Alex Chen with Evercore ISI. Your line is open.\n"
        "Alex Chen: Hi, thanks for taking my question. Looking at {company}'s {quarter} results, can "
        "you talk about"
    ),
}
FREE_TEXT = "Free text"
FINISH = {
    "stop": "ended by a stop string or the end of the call",
    "length": "reached max tokens",
    "stopped": "stopped",
    "error": "cut short by an error",
}


def opening_text(s) -> str:
    company = s.company.strip() or "the company"
    quarter = s.quarter.strip() or "the quarter"
    return OPENINGS[s.opening].format(company=company, quarter=quarter)


def fill_prompt() -> None:
    if st.session_state.opening in OPENINGS:
        st.session_state.prompt = opening_text(st.session_state)


def init_state() -> None:
    s = st.session_state
    defaults = {
        "url": os.environ.get("FINGPT_API_URL", DEFAULT_URL),
        "api_key": os.environ.get("FINGPT_API_KEY", ""),
        "opening": next(iter(OPENINGS)),
        "company": "Acme Corp",
        "quarter": "Fourth Quarter 2024",
        "max_tokens": 200,
        "temperature": 0.8,
        "top_k": 200,
        "top_p": 0.95,
        "seed": None,
        "stop": "",
        "trim": True,
        "history": [],
        "count": 0,
    }
    for key, value in defaults.items():
        s.setdefault(key, value)
    if "prompt" not in s:
        s.prompt = opening_text(s)


def call_html(prompt: str, text: str) -> str:
    """The prompt dimmed, then the model's text, exactly as written (Markdown would eat the $ of calls)."""
    return (
        '<div style="white-space: pre-wrap">'
        f'<span style="opacity: 0.6">{html.escape(prompt)}</span>{html.escape(text)}</div>'
    )


def show(error: ServerError) -> None:
    (st.warning if error.warning else st.error)(error.message)


def sidebar() -> tuple[Client, dict | None]:
    """Server settings, health and model card; the model when the server is ready."""
    with st.sidebar:
        st.header("Server")
        st.text_input("Server URL", key="url")
        st.text_input("API key", key="api_key", type="password", help="Needed when the server has one")
        st.button("Check again", key="check")
        client = Client(st.session_state.url, st.session_state.api_key.strip() or None)
        model = server_status(client)
        if model:
            model_card(model)
    return client, model


def server_status(client: Client) -> dict | None:
    try:
        health = client.health()
        if health["status"] == "loading":
            st.warning("The server is up and its model is still loading: check again in a few seconds.")
            return None
        if health["status"] == "error":
            st.error(f"The server could not load its model: {health.get('error')}")
            return None
        model = client.model()
    except ServerError as e:
        show(e)
        return None
    st.success(f"Ready: serving `{model['id']}`")
    return model


def served_card(model: dict) -> Card:
    """The served model's card (an old server's may lack fields: they take their defaults)."""
    return Card.from_dict(model.get("card") or {})


def model_card(model: dict) -> None:
    card = served_card(model)
    st.subheader("Model")
    lines = [f"**`{model['id']}`**"]
    if card.parameters:
        lines.append(f"- {card.parameters:,} parameters ({card.parameters / 1e6:.1f}M)")
    lines.append(f"- context: {model['context_length']:,} tokens")
    if card.val_bpb is not None:
        lines.append(f"- validation: {card.val_bpb:.3f} bits per byte")
    if card.steps is not None:
        lines.append(f"- trained: {card.steps:,} steps, {card.tokens_seen or 0:,} tokens seen")
    data = card.data or {}
    if data:
        lines.append(f"- data: `{data.get('name')}`")
        for split, sizes in (data.get("splits") or {}).items():
            lines.append(f"    - {split}: {sizes.get('calls', 0):,} calls, {sizes.get('tokens', 0):,} tokens")
    if card.dtype:
        lines.append(f"- weights: {card.dtype}, exported {card.created or '?'}")
    lines.append(f"- server cap: {model['max_tokens']:,} tokens per request")
    st.markdown("\n".join(lines))


def prompt_box(context: int | None) -> None:
    st.selectbox("Start from", [*OPENINGS, FREE_TEXT], key="opening", on_change=fill_prompt)
    free = st.session_state.opening == FREE_TEXT
    company, quarter = st.columns(2)
    company.text_input("Company", key="company", on_change=fill_prompt, disabled=free)
    quarter.text_input("Quarter", key="quarter", on_change=fill_prompt, disabled=free)
    st.text_area("Prompt", key="prompt", height=140, help="Empty: the model starts a new call")
    if context:
        st.checkbox(
            f"Trim a long prompt to its last {context:,} tokens",
            key="trim",
            help=f"The model reads {context:,} tokens at a time; untick to have a longer prompt refused",
        )


def controls(cap: int | None) -> None:
    """The sampling settings; max tokens bounded by the server's cap once it is known."""
    if cap and st.session_state.max_tokens > cap:  # a server with a lower cap than the last one
        st.session_state.max_tokens = cap
    left, middle, right = st.columns(3)
    left.number_input("Max tokens", min_value=1, max_value=cap, step=1, key="max_tokens")
    middle.slider("Temperature", 0.0, 2.0, step=0.05, key="temperature", help="0 always picks the likeliest")
    right.slider("Top-p", 0.01, 1.0, step=0.01, key="top_p", help="Sample from this much probability mass")
    left.number_input("Top-k", min_value=0, step=1, key="top_k", help="Sample from the k likeliest; 0: all")
    middle.number_input(
        "Seed", min_value=0, step=1, key="seed", placeholder="random", help="The same seed, the same text"
    )
    right.text_area(
        "Stop strings",
        key="stop",
        height=68,
        placeholder="\\nOperator:",
        help="One per line, at most 4; write \\n for a line break. The text ends before the first one.",
    )


def settings(context: int | None) -> dict:
    """The request's settings as the page shows them; a blank seed is drawn here so it can be kept."""
    s = st.session_state
    seed = s.seed if s.seed is not None else random.randrange(2**31)
    stops = [line.replace("\\n", "\n") for line in s.stop.splitlines() if line]
    chosen = {
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "seed": seed,
        "stop": stops,
    }
    if s.trim and context:
        chosen["truncate_prompt_tokens"] = context
    return chosen


def mark_interrupted() -> list[int]:
    """Generations still running when a new run starts were cut off by Stop (or another click)."""
    stopped = [entry for entry in st.session_state.history if entry["finish"] == "running"]
    for entry in stopped:
        entry["finish"] = "stopped"
    return [entry["n"] for entry in stopped]


def generate(client: Client, model: dict | None, chosen: dict) -> None:
    """Stream a completion into the page; it goes into the history as it comes."""
    s = st.session_state
    s.count += 1
    entry = {
        "n": s.count,
        "time": datetime.now().strftime("%H:%M:%S"),
        "model": model["id"] if model else "?",
        "prompt": s.prompt,
        "text": "",
        "settings": chosen,
        "finish": "running",
        "tokens": None,
        "error": None,
    }
    s.history.append(entry)
    stop = st.empty()
    stop.button("Stop generating", key="stop_generation")
    live = st.empty()
    out = live.container(border=True).empty()
    out.caption("Waiting for the first tokens...")
    try:
        with closing(client.complete({"prompt": entry["prompt"], **chosen})) as chunks:
            for chunk in chunks:
                entry["text"] += chunk.text
                entry["finish"] = chunk.finish_reason or entry["finish"]
                entry["tokens"] = chunk.tokens or entry["tokens"]
                if chunk.text:
                    out.html(call_html(entry["prompt"], entry["text"]))
    except ServerError as e:
        entry["finish"], entry["error"] = "error", e.message
        if not entry["text"]:
            s.history.remove(entry)
        show(e)
    stop.empty()
    live.empty()


def describe(chosen: dict) -> str:
    parts = [f"{name} {value}" for name, value in chosen.items() if name != "stop"]
    if chosen["stop"]:
        parts.append(f"stop {', '.join(repr(x) for x in chosen['stop'])}")
    return " · ".join(parts)


def history() -> None:
    entries = st.session_state.history
    st.subheader("History")
    if not entries:
        st.caption("The generations of this visit appear here, newest first.")
        return
    for i, entry in enumerate(reversed(entries)):
        tokens = f", {entry['tokens']} tokens" if entry["tokens"] is not None else ""
        title = f"#{entry['n']} at {entry['time']}: {FINISH.get(entry['finish'], entry['finish'])}{tokens}"
        with st.expander(title, expanded=i == 0):
            st.html(call_html(entry["prompt"], entry["text"]))
            st.caption(f"`{entry['model']}` · {describe(entry['settings'])}")
            if entry["error"]:
                st.caption(entry["error"])
            st.download_button(
                "Download as text",
                entry["prompt"] + entry["text"],
                file_name=f"fingpt-{entry['n']}.txt",
                mime="text/plain",
                key=f"download_{entry['n']}",
                on_click="ignore",
            )
    if st.button("Clear history"):
        entries.clear()
        st.rerun()


def score_call(client: Client, model: dict | None) -> None:
    """Paste or upload a call: each token shaded by how much it surprised the model, the call's
    bits per byte against the model's validation figure, and the most surprising sentences."""
    st.text_area("Transcript", key="transcript", height=220, placeholder="Paste an earnings call here")
    upload = st.file_uploader("or upload a .txt", type=["txt"], key="upload")
    if not st.button("Score", type="primary", key="score"):
        return
    text = upload.getvalue().decode("utf-8", errors="replace") if upload else st.session_state.transcript
    if not text.strip():
        st.error("Paste a transcript, or upload a .txt, to score.")
        return
    if len(text) > score.MAX_CHARS:
        st.error(
            f"The text is {len(text):,} characters, over the limit of {score.MAX_CHARS:,}: "
            "score a part of it."
        )
        return
    if model is None:
        st.error("The server is not ready (see the sidebar): the call cannot be scored yet.")
        return
    context = model["context_length"]
    stride = max(1, context // 2)  # fingpt-evaluate's default
    try:
        with st.spinner("Scoring..."):
            scored = score.tokens(client.score(text, stride))
    except ServerError as e:
        show(e)
        return
    bpb = score.bits_per_byte(scored, text)
    validated = served_card(model).val_bpb
    st.metric(
        "Bits per byte", f"{bpb:.3f}", None if validated is None else f"{bpb - validated:+.3f}", "inverse"
    )
    if validated is not None:
        harder = "harder" if bpb > validated else "easier"
        st.write(f"This call is {harder} for the model than the calls it was validated on ({validated:.3f}).")
    st.caption(
        f"{len(scored):,} tokens, {len(text.encode()):,} bytes, scored in windows of {context} tokens "
        f"sliding by {stride}: every token once, after the first window with at least {context - stride} "
        "tokens of context."
    )
    st.html(score.legend_html() + score.shaded_html(scored))
    st.subheader("The most surprising sentences")
    ranked = score.sentences(scored, text)[:10]
    st.table([{"mean bits": round(s.bits, 2), "tokens": s.tokens, "sentence": s.text} for s in ranked])
    st.download_button(
        "Per-token scores (CSV)", score.scores_csv(scored), "scores.csv", "text/csv", key="csv"
    )


def main() -> None:
    st.set_page_config(page_title="fingpt", page_icon="📈")
    init_state()
    stopped = mark_interrupted()
    client, model = sidebar()
    context = model["context_length"] if model else None
    st.title("fingpt")
    if st.radio("Mode", ["Write a call", "Score a call"], horizontal=True, key="mode") == "Score a call":
        st.caption(
            "Where a transcript departs from how calls usually go: the tokens the model found unlikely."
        )
        score_call(client, model)
        return
    st.caption("A GPT trained from scratch on S&P 500 earnings calls. Start a call; it writes the rest.")
    prompt_box(context)
    controls(model["max_tokens"] if model else None)
    if st.button("Generate", type="primary", key="generate"):
        generate(client, model, settings(context))
    for n in stopped:
        st.info(f"Stopped generation #{n}: its text so far is kept below.")
    history()


main()
