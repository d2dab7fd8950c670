"""fingpt's HTTP API as the page uses it, and its failures in words a person understands.

Only httpx: the page never imports torch or fingpt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
STATUS_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# chunks come one token at a time; the server itself ends a request after its timeout (120 s by default)
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=3.0, read=300.0)
EOT = "<|endoftext|>"  # as the tokenizer writes the end of a call: fingpt-evaluate starts each call with it


class ServerError(Exception):
    """A failed request: `message` to show, `warning` when trying again later may be enough."""

    def __init__(self, message: str, warning: bool = False) -> None:
        super().__init__(message)
        self.message, self.warning = message, warning


@dataclass
class Chunk:
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length", on the last text chunk
    tokens: int | None = None  # completion tokens, from the usage chunk at the end


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def serve_command(url: str) -> str:
    """The command that starts a server this URL reaches."""
    command = "fingpt-serve --model models/latest"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return command
    if host not in (None, "127.0.0.1", "localhost"):
        command += f" --host {host}"
    if port not in (None, 8000):
        command += f" --port {port}"
    return command


def explain(status: int, error: dict, has_key: bool) -> ServerError:
    """The server's {"error": {...}} answer, said for the person at the page."""
    message, code = error.get("message", ""), error.get("code")
    if status == 401:
        if has_key:
            return ServerError("The server refused this API key: check the key in the sidebar.")
        return ServerError(
            "This server needs an API key: enter it in the sidebar (or set FINGPT_API_KEY before "
            "starting the page)."
        )
    if status == 429:
        return ServerError("The server is busy: its queue is full. Try again in a moment.", warning=True)
    if status == 503 and code == "model_not_loaded":
        reason = message.removeprefix("the model could not be loaded: ")
        return ServerError(
            f"The server could not load its model ({reason}): restart it with a bundle that loads."
        )
    if status == 503:
        return ServerError("The model is still loading: try again in a few seconds.", warning=True)
    if code == "context_length_exceeded":
        return ServerError(
            f"The prompt is too long for this model: {message.split(':')[0]}. Shorten it, or tick "
            "“Trim a long prompt”."
        )
    if status == 400:
        return ServerError(f"The server rejected the settings: {message}")
    if code == "too_many_positions":
        return ServerError(f"The call is too long to score on this server: {message}.")
    if status == 413:
        return ServerError(f"The prompt is too large: {message}.")
    if status == 504:
        return ServerError(
            f"The server ran out of time: {message}. Ask for fewer tokens, or score a shorter text."
        )
    return ServerError(f"The server failed ({status}): {message}")


class Client:
    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = normalize_url(url)
        self.has_key = bool(api_key)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def health(self) -> dict:
        """{"status": "ok", "model": ...}, {"status": "loading"} or {"status": "error", "error": ...}."""
        with self._reaching():
            response = httpx.get(f"{self.url}/health", timeout=STATUS_TIMEOUT)
        if response.status_code not in (200, 503):
            raise self._error(response)
        health = self._json(response)
        if health.get("status") not in ("ok", "loading", "error"):
            raise self._not_fingpt(response)
        return health

    def model(self) -> dict:
        """The served model: id, context_length, max_tokens (the server's cap) and its card."""
        with self._reaching():
            response = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=STATUS_TIMEOUT)
        if response.status_code != 200:
            raise self._error(response)
        try:
            return self._json(response)["data"][0]
        except (KeyError, IndexError, TypeError):
            raise self._not_fingpt(response) from None

    def complete(self, settings: dict) -> Iterator[Chunk]:
        """Stream a completion (POST /v1/completions, stream: true) chunk by chunk.

        Close the iterator (contextlib.closing) to stop early: the connection closes and the
        server drops the request.
        """
        body = {**settings, "stream": True, "stream_options": {"include_usage": True}}
        url = f"{self.url}/v1/completions"
        with (
            self._reaching(),
            httpx.stream("POST", url, json=body, headers=self.headers, timeout=STREAM_TIMEOUT) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise self._error(response)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    return
                yield self._chunk(json.loads(data))

    def score(self, text: str, stride: int) -> dict:
        """Every token of `text` scored in one request: the echoed prompt's `logprobs` (tokens,
        token_logprobs, top_logprobs, text_offset), `<|endoftext|>` first as fingpt-evaluate
        scores a call, then windows of the model's context sliding by `stride` tokens."""
        body = {
            "prompt": EOT + text,
            "echo": True,
            "logprobs": 5,
            "max_tokens": 0,
            "score_stride": stride,
        }
        url = f"{self.url}/v1/completions"
        with self._reaching():
            response = httpx.post(url, json=body, headers=self.headers, timeout=STREAM_TIMEOUT)
        if response.status_code != 200:
            raise self._error(response)
        try:
            return self._json(response)["choices"][0]["logprobs"]
        except (KeyError, IndexError, TypeError):
            raise self._not_fingpt(response) from None

    def _chunk(self, payload: dict) -> Chunk:
        if "error" in payload:  # the stream had started when the request failed
            error = payload["error"]
            raise explain(504 if error.get("type") == "timeout" else 500, error, self.has_key)
        if not payload["choices"]:
            return Chunk(tokens=payload["usage"]["completion_tokens"])
        choice = payload["choices"][0]
        return Chunk(choice["text"], choice["finish_reason"])

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Failures to reach the server (or to read what it sent) as ServerError."""
        try:
            yield
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise ServerError(f"“{self.url}” is not a server URL: write it like {DEFAULT_URL}.") from None
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ServerError(
                f"Cannot reach the server at {self.url}. Start it with `{serve_command(self.url)}`, "
                "or fix the URL in the sidebar."
            ) from None
        except httpx.TimeoutException:
            raise ServerError(f"The server at {self.url} stopped answering.") from None
        except httpx.HTTPError as e:
            raise ServerError(f"The connection to {self.url} broke: {e}.") from None
        except (ValueError, KeyError, TypeError):  # a body that is not the JSON fingpt sends
            raise ServerError(
                f"{self.url} does not answer like a fingpt server: is it the right URL?"
            ) from None

    def _json(self, response: httpx.Response) -> dict:
        try:
            return response.json()
        except ValueError:
            raise self._not_fingpt(response) from None

    def _error(self, response: httpx.Response) -> ServerError:
        if response.status_code == 404:  # every route the page calls exists on a fingpt server
            return self._not_fingpt(response)
        try:
            error = response.json()["error"]
            return explain(response.status_code, error, self.has_key)
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._not_fingpt(response)

    def _not_fingpt(self, response: httpx.Response) -> ServerError:
        return ServerError(
            f"{self.url} answered {response.status_code} {response.reason_phrase}, not as a fingpt "
            "server would: is it the right URL?"
        )
