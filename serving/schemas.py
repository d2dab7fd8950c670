"""Request bodies and errors of the HTTP API, in OpenAI's shapes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from fingpt.generation import SamplingParams


@dataclass
class Limits:
    max_tokens: int = 2048  # per request; the original allowed 2000
    max_n: int = 8
    max_body_bytes: int = 1_000_000


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


SEEDS = 2**64  # torch generators take seeds in [-2**63, 2**64)


def unicode_text(text: str) -> str:
    """JSON can carry lone surrogates ("\ud800"), which are not text and cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text: a lone surrogate {text[e.start]!r} at {e.start}") from e
    return text


class Sampling(BaseModel):
    """Settings shared by /v1/completions and /generate."""

    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, suffix...)

    # text, texts, or token ids as OpenAI allows: a list of ids, or a list of such lists
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = ""
    max_tokens: StrictInt = Field(16, ge=1)
    temperature: StrictFloat | StrictInt = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat | StrictInt = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(0, ge=0, le=2**31 - 1)  # 0: no top-k cut
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=SEEDS)
    truncate_prompt_tokens: StrictInt | None = Field(None, ge=1)  # keep only the last k tokens
    ignore_eos: StrictBool = False  # generate max_tokens even past <|endoftext|> (as vLLM)

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return [unicode_text(s) for s in stops]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("a list of prompts must hold at least one")
        for text in [prompt] if isinstance(prompt, str) else prompt:
            if isinstance(text, str):
                unicode_text(text)
        return prompt

    def check(self, limits: Limits) -> None:
        """The limits the server was started with."""
        if self.max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {self.max_tokens}, above this server's cap of {limits.max_tokens}",
                param="max_tokens",
            )

    def sampling_params(self, seed: int | None, logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max(1, self.max_tokens),  # 0 (echo only) never reaches the engine
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),
            seed=seed,
            logprobs=logprobs or 0,
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(Sampling):
    model: str | None = None
    max_tokens: StrictInt = Field(16, ge=0)  # 0 with echo: score the prompt, generate nothing
    n: StrictInt = Field(1, ge=1)
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    def check(self, limits: Limits) -> None:
        super().check(limits)
        if self.n > limits.max_n:
            raise APIError(400, f"n is {self.n}, above this server's cap of {limits.max_n}", param="n")
        if self.max_tokens == 0 and not self.echo:
            message = "max_tokens must be at least 1 (0 only with echo, to score the prompt)"
            raise APIError(400, message, param="max_tokens")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")


class GenerateRequest(Sampling):
    """The original API: {"max_tokens": N}, now with an optional prompt and sampling fields."""

    prompt: StrictStr = ""  # one text in, one generated_text out
    max_tokens: StrictInt = Field(100, ge=1)
