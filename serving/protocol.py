"""The HTTP API's requests and responses, in OpenAI's shapes (errors: serving/errors.py).

The routes declare these models, so /openapi.json is built from the code that answers.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
)

from fingpt.card import Card
from fingpt.generation import SamplingParams
from serving.errors import APIError, ErrorResponse


@dataclass
class Limits:
    max_tokens: int = 2048  # per request
    max_n: int = 8
    max_body_bytes: int = 1_000_000
    # token positions (windows x context) one request's scoring may make the model compute: the page's
    # longest call (200,000 characters) at its stride of half the context needs about 100,000 (400,000
    # with the char tokenizer); a million take the demo's model about a minute on 2 cores
    max_score_positions: int = 1_000_000


# Requests


def integral(value: object) -> object:
    """2.0 is the integer 2 to JSON Schema, so to this API too (JSON has one kind of number)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(integral)]


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
    prompt: StrictStr | list[StrictStr] | list[Integer] | list[list[Integer]] = Field(
        "", json_schema_extra={"minItems": 1}
    )
    max_tokens: Integer = Field(16, ge=1)
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)  # JSON's 1 is a float too
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    top_k: Integer = Field(0, ge=0, le=2**31 - 1)  # 0: no top-k cut
    stop: StrictStr | list[StrictStr] | None = Field(
        None, json_schema_extra={"minLength": 1, "maxItems": 4, "items": {"minLength": 1}}
    )
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=SEEDS - 1), BeforeValidator(integral)] | None = None
    # keep only the last k tokens of the prompt
    truncate_prompt_tokens: Annotated[StrictInt, Field(ge=1), BeforeValidator(integral)] | None = None
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
        """The limits the server was started with; a max_tokens not sent is the default, or the cap
        when that is lower (as the spec's default says)."""
        if "max_tokens" not in self.model_fields_set:
            self.max_tokens = min(self.max_tokens, limits.max_tokens)
        if self.max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {self.max_tokens}, above this server's cap of {limits.max_tokens}",
                param="max_tokens",
            )

    def sampling_params(self, seed: int | None, logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),
            seed=seed,
            logprobs=logprobs or 0,
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(Sampling):
    model_config = ConfigDict(  # the rules of check() that a JSON Schema can say
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"max_tokens": {"const": 0}}, "required": ["max_tokens"]},
                    "then": {"properties": {"echo": {"const": True}}, "required": ["echo"]},
                },
                {
                    "if": {"properties": {"score_stride": {"type": "integer"}}, "required": ["score_stride"]},
                    "then": {
                        "properties": {
                            "echo": {"const": True},
                            "logprobs": {"type": "integer"},
                            "max_tokens": {"const": 0},
                        },
                        "required": ["echo", "logprobs", "max_tokens"],
                    },
                },
                {
                    "if": {
                        "properties": {"stream_options": {"type": "object"}},
                        "required": ["stream_options"],
                    },
                    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
                },
            ]
        }
    )
    model: str | None = None
    max_tokens: Integer = Field(16, ge=0)  # 0 with echo: score the prompt, generate nothing
    n: Integer = Field(1, ge=1)
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=5), BeforeValidator(integral)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # with echo, logprobs and max_tokens 0: score a prompt of any length, every token once, by
    # windows of the context sliding by this many tokens (fingpt-evaluate's stride)
    score_stride: Annotated[StrictInt, Field(ge=1), BeforeValidator(integral)] | None = None

    def check(self, limits: Limits) -> None:
        super().check(limits)
        if self.n > limits.max_n:
            raise APIError(400, f"n is {self.n}, above this server's cap of {limits.max_n}", param="n")
        if self.max_tokens == 0 and not self.echo:
            message = "max_tokens must be at least 1 (0 only with echo, to score the prompt)"
            raise APIError(400, message, param="max_tokens")
        scoring = self.echo and self.logprobs is not None and self.max_tokens == 0
        if self.score_stride is not None and not scoring:
            message = "score_stride is for scoring a prompt: send it with echo, logprobs and max_tokens 0"
            raise APIError(400, message, param="score_stride")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")


class GenerateRequest(Sampling):
    """The legacy API: {"max_tokens": N}, now with an optional prompt and sampling fields."""

    prompt: StrictStr = ""  # one text in, one generated_text out
    max_tokens: Integer = Field(100, ge=1)


# Responses


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: a prompt's first token, which nothing predicts
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None  # None: the choice goes on (streams)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """One `data:` event of a stream: a text delta, or at the end the usage (when asked for)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, exclude_if=lambda usage: usage is None)


class CompletionEvent(BaseModel):
    """One server-sent event of a stream: `data: <a chunk as JSON>`; an error once the stream has
    started, as `data: <the error as JSON>`; and last, `data: [DONE]`."""

    data: Json[CompletionChunk | ErrorResponse] | Literal["[DONE]"]


# A route's 200 that may be such a stream, as OpenAPI 3.2 says it (FastAPI and schemathesis read it)
EVENT_STREAM = {"text/event-stream": {"itemSchema": {"$ref": "#/components/schemas/CompletionEvent"}}}


def served(name: str, of: type, leave_out: tuple[str, ...]) -> type[BaseModel]:
    """A pydantic model of the dataclass `of`'s fields, less `leave_out`: /openapi.json lists them."""
    hints = get_type_hints(of)

    def default(f):
        return Field(default_factory=f.default_factory) if f.default is MISSING else f.default

    kept = {f.name: (hints[f.name], default(f)) for f in fields(of) if f.name not in leave_out}
    return create_model(name, __doc__=of.__doc__, **kept)


# the bundle's card.json (fingpt.card.Card), less its checksums and training config
ServedCard = served("ServedCard", Card, leave_out=("sha256", "training_config"))


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fingpt"
    context_length: int
    max_tokens: int  # the server's cap per request
    card: ServedCard


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str | None = None  # when ok
    error: str | None = None  # why the model could not be loaded


class GenerateResponse(BaseModel):
    generated_text: str


@dataclass
class Served:
    """What the spec says of the loaded model: its context and vocabulary, in tokens."""

    context: int
    vocab_size: int


def complete_spec(spec: dict[str, Any], limits: Limits, max_queue: int, model: Served | None) -> None:
    """What FastAPI's spec cannot say from the models alone: no 422 (a body that does not validate
    is answered 400), the caps this server was started with and its model's bounds (once loaded),
    and the events of a stream."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    schemas = spec["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name in ("CompletionRequest", "GenerateRequest"):
        properties = schemas[name]["properties"]
        properties["max_tokens"]["maximum"] = limits.max_tokens
        properties["max_tokens"]["default"] = min(properties["max_tokens"]["default"], limits.max_tokens)
        # exact integers: pydantic writes these bounds as floats, which miss them by thousands
        properties["seed"]["anyOf"][0].update(minimum=-(2**63), maximum=SEEDS - 1)
    request = schemas["CompletionRequest"]
    request["properties"]["n"]["maximum"] = limits.max_n
    _, texts, _, id_lists = request["properties"]["prompt"]["anyOf"]
    texts["maxItems"] = id_lists["maxItems"] = max_queue  # each prompt is at least one completion
    if model is not None:
        bound_prompts(request, model)
    operation = spec["paths"]["/v1/completions"]["post"]
    operation["description"] += (
        f" This server queues {max_queue} completions at once and scores at most "
        f"{limits.max_score_positions:,} token positions (windows x context) per request"
        + (f"; its model's context is {model.context} tokens." if model else ".")
    )
    event = CompletionEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in event.pop("$defs").items():  # CompletionChunk, and any FastAPI left out
        schemas.setdefault(name, schema)
    schemas["CompletionEvent"] = event  # what EVENT_STREAM refers to


def bound_prompts(request: dict[str, Any], model: Served) -> None:
    """Token ids within the vocabulary; score_stride within the context; and, unless score_stride
    or truncate_prompt_tokens is set, prompts of token ids no longer than the context."""
    properties = request["properties"]
    properties["score_stride"]["anyOf"][0]["maximum"] = model.context
    text, texts, ids, id_lists = properties["prompt"]["anyOf"]
    ids["items"] = id_lists["items"]["items"] = {
        "type": "integer",
        "minimum": 0,
        "maximum": model.vocab_size - 1,
    }
    within = {**ids, "maxItems": model.context}
    lists_within = {**id_lists, "items": {**id_lists["items"], "maxItems": model.context}}
    request["allOf"].append(
        {
            "if": {
                "anyOf": [
                    {"properties": {name: {"type": "integer"}}, "required": [name]}
                    for name in ("score_stride", "truncate_prompt_tokens")
                ]
            },
            "then": {},
            "else": {"properties": {"prompt": {"anyOf": [text, texts, within, lists_within]}}},
        }
    )
