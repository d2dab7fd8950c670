"""The HTTP server: OpenAI-style completions (streaming too), the original /generate, metrics.

    fingpt-serve --model models/latest [--host 127.0.0.1 --port 8000 --api-key KEY]

Imports the model, tokenizer and sampler modules only: no Lightning, no Hydra.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fingpt.checkpoint import LoadedModel, load_model
from fingpt.generation import Step, prompt_logprobs
from serving.engine import Choice, Engine, Job, Overloaded
from serving.schemas import SEEDS, APIError, CompletionRequest, GenerateRequest, Limits

log = logging.getLogger("fingpt.serve")


@dataclass
class Settings:
    model: str
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, else the bundle's own dtype
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_batch_size: int = 16
    max_queue: int = 64
    timeout: float = 120.0  # seconds a request may take, start to end
    limits: Limits = field(default_factory=Limits)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fingpt_requests", "HTTP requests", ["path", "status"], registry=r)
        self.tokens = Counter("fingpt_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("fingpt_queue_depth", "Choices waiting for a batch row", registry=r)
        self.batch_size = Histogram(
            "fingpt_batch_size",
            "Rows per decoding step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.latency = Histogram("fingpt_request_latency_seconds", "Request latency", ["path"], registry=r)
        self.first_token = Histogram("fingpt_time_to_first_token_seconds", "Time to first token", registry=r)


class Guard:
    """ASGI middleware: refuses bodies over the limit (413), with or without a Content-Length,
    and counts requests by route and status."""

    def __init__(self, app, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def recorded_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self.read_body(scope, receive)
            if body is None:
                return  # the client left before it finished sending
            replayed = False

            async def replay():  # the body at once, then whatever comes next (a disconnect)
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, recorded_send)
        except BodyTooLarge:
            error = APIError(413, f"request body is larger than {self.max_body} bytes", code="body_too_large")
            await error.response()(scope, receive, recorded_send)
        finally:
            # by route, not by raw path: unknown URLs must not each add a series
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def read_body(self, scope, receive) -> bytes | None:
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            raise BodyTooLarge  # refused before reading a byte of it
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                raise BodyTooLarge
            more = message.get("more_body", False)
        return b"".join(chunks)


class BodyTooLarge(Exception):
    pass


def create_app(settings: Settings, loaded: LoadedModel | None = None) -> FastAPI:
    """The app; the model loads in the background (/health says 503 until it is ready)."""
    metrics = Metrics()
    state: dict = {"engine": None, "loaded": None, "error": None}

    def load() -> None:
        try:
            device = settings.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = loaded or load_model(settings.model, device=device)
            dtype = settings.dtype
            if dtype == "auto":
                dtype = "bfloat16" if device.startswith("cuda") else str(model.model.wte.weight.dtype)[6:]
            model.model.to(device=device, dtype=getattr(torch, dtype))
            engine = Engine(model, settings.max_batch_size, settings.max_queue, metrics)
            engine.start()
            state["loaded"], state["engine"] = model, engine
            log.info("serving %s on %s", settings.model, device)
        except Exception as e:  # noqa: BLE001 - reported by /health
            log.exception("could not load %s", settings.model)
            state["error"] = str(e)

    async def lifespan(app: FastAPI):
        threading.Thread(target=load, name="fingpt-load", daemon=True).start()
        yield
        if state["engine"]:
            state["engine"].stop()

    app = FastAPI(title="fingpt", version="0.1.0", lifespan=lifespan)
    app.state.fingpt = state
    app.state.metrics = metrics
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(Guard, max_body=settings.limits.max_body_bytes, metrics=metrics)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return APIError(400, "the body is not valid JSON").response()
        # ("body", "temperature", "float", ...): the field is what the client named
        loc = first.get("loc", ())
        param = str(loc[1]) if len(loc) > 1 and loc[0] == "body" else None
        message = first.get("msg", "invalid request")
        return APIError(400, f"{param}: {message}" if param else message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404, 405 and a body that cannot be read, in the same shape as every other error."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                code="invalid_api_key",
            )

    def ready() -> tuple[Engine, LoadedModel]:
        if state["engine"] is None:
            raise APIError(
                503,
                "the model is still loading: retry shortly",
                type="server_error",
                code="loading",
            )
        return state["engine"], state["loaded"]

    @app.get("/health")
    async def health() -> JSONResponse:
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        if state["engine"] is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": model_id()})

    def model_id() -> str:
        return (state["loaded"].info or {}).get("name") or Path(settings.model).resolve().name

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        _, loaded_model = ready()
        card = {k: v for k, v in loaded_model.info.items() if k not in ("sha256", "training_config")}
        return {
            "object": "list",
            "data": [
                {
                    "id": model_id(),
                    "object": "model",
                    "created": int(os.path.getmtime(settings.model)) if os.path.exists(settings.model) else 0,
                    "owned_by": "fingpt",
                    "context_length": loaded_model.model.config.block_size,
                    "max_tokens": settings.limits.max_tokens,
                    "card": card,
                }
            ],
        }

    async def encode_prompts(
        body: CompletionRequest, loaded_model: LoadedModel
    ) -> tuple[list[str], list[list[int]]]:
        """The prompts as the text echo shows and as token ids, checked against the context."""
        prompt, tokenizer = body.prompt, loaded_model.tokenizer
        texts = None
        if isinstance(prompt, str) or isinstance(prompt[0], str):
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            encoded = await run_in_threadpool(lambda: [tokenizer.encode(p) for p in texts])
        else:  # token ids: one prompt, or a list of them
            encoded = [list(prompt)] if isinstance(prompt[0], int) else [list(ids) for ids in prompt]
            vocab = tokenizer.vocab_size
            if bad := [i for ids in encoded for i in ids if not 0 <= i < vocab]:
                raise APIError(
                    400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt"
                )
        context = loaded_model.model.config.block_size
        keep = body.truncate_prompt_tokens
        for i, ids in enumerate(encoded):
            if keep:
                encoded[i] = ids[-keep:]
            elif len(ids) > context:
                raise APIError(
                    400,
                    f"the prompt is {len(ids)} tokens, longer than the model's context of {context} "
                    "tokens: shorten it, or set truncate_prompt_tokens to keep only its last tokens",
                    param="prompt",
                    code="context_length_exceeded",
                )
        return texts or [tokenizer.decode(ids) for ids in encoded], encoded

    async def run(http: Request, body: CompletionRequest) -> tuple[Job, list[tuple[int, str]], AsyncIterator]:
        engine, loaded_model = ready()
        texts, prompts = await encode_prompts(body, loaded_model)
        if len(prompts) * body.n > engine.max_queue:
            raise APIError(
                400,
                f"this request asks for {len(prompts) * body.n} completions (prompts x n), more than "
                f"this server queues at once ({engine.max_queue}): split it",
                param="prompt" if len(prompts) > 1 else "n",
            )
        choices, labels = [], []
        for p, ids in enumerate(prompts):
            for k in range(body.n):
                seed = None if body.seed is None else (body.seed + k) % SEEDS
                choices.append(Choice(ids, body.sampling_params(seed, getattr(body, "logprobs", None))))
                labels.append((p, texts[p]))
        job = Job(choices=choices, loop=asyncio.get_running_loop())
        if body.max_tokens == 0:  # echo only: the prompts are scored, nothing is generated
            return job, labels, no_steps()
        try:
            engine.submit(job)
        except Overloaded as e:
            raise APIError(
                429,
                f"the server is busy ({e}): retry later",
                type="rate_limit_error",
                code="overloaded",
            ) from e
        return job, labels, steps_of(http, job)

    async def steps_of(http: Request, job: Job) -> AsyncIterator[tuple[int, Step]]:
        """Steps of every choice as they come, until all finish, the client leaves or time runs out."""
        unfinished = len(job.choices)
        deadline = job.submitted + settings.timeout
        first = True
        next_check = time.perf_counter() + 0.5
        try:
            while unfinished:
                now = time.perf_counter()
                if now >= deadline:
                    raise APIError(
                        504,
                        f"the request took longer than {settings.timeout:.0f} s",
                        type="timeout",
                    )
                if now >= next_check:  # twice a second, whether or not tokens are flowing
                    if await http.is_disconnected():
                        return
                    next_check = now + 0.5
                try:
                    index, item = await asyncio.wait_for(job.events.get(), timeout=min(deadline - now, 0.5))
                except asyncio.TimeoutError:
                    continue
                if isinstance(item, BaseException):
                    raise APIError(
                        400 if isinstance(item, ValueError) else 500, str(item), type="server_error"
                    )
                if first:
                    metrics.first_token.observe(time.perf_counter() - job.submitted)
                    first = False
                unfinished -= item.finish_reason is not None
                yield index, item
        finally:
            job.cancel()  # a no-op when done; frees the rows of a client that went away

    def token_text(token: int, tokenizer) -> str:
        return tokenizer.token_bytes(token).decode("utf-8", errors="replace")

    def logprobs_of(steps: list[Step], tokenizer, offset: int) -> dict:
        tokens = [token_text(s.token, tokenizer) for s in steps]
        offsets, position = [], offset
        for text in tokens:
            offsets.append(position)
            position += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [s.logprob for s in steps],
            "top_logprobs": [
                None
                if s.top_logprobs is None and s.logprob is None  # a prompt's first token
                else {token_text(t, tokenizer): lp for t, lp in (s.top_logprobs or {}).items()}
                for s in steps
            ],
            "text_offset": offsets,
        }

    async def echoed_logprobs(body: CompletionRequest, job: Job, labels) -> list[list[Step]]:
        """The prompt tokens of each choice, scored, when echo and logprobs are both asked for
        (as OpenAI does; this is how evaluation harnesses score text through the API)."""
        if not (body.echo and body.logprobs is not None):
            return [[] for _ in labels]
        model, k = state["loaded"].model, body.logprobs
        prompts = {p: job.choices[i].prompt_ids for i, (p, _) in enumerate(labels)}
        scored = await run_in_threadpool(
            lambda: {p: prompt_logprobs(model, ids, k) for p, ids in prompts.items()}
        )
        return [scored[p] for p, _ in labels]

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(http: Request, body: CompletionRequest):
        body.check(settings.limits)
        job, labels, steps = await run(http, body)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prompt_tokens = sum(len(c.prompt_ids) for c in job.choices) // body.n
        echoed = await echoed_logprobs(body, job, labels)
        if body.stream:
            return StreamingResponse(
                stream(body, job, labels, steps, completion_id, created, prompt_tokens, echoed),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        texts = [[] for _ in job.choices]
        recorded: list[list[Step]] = [list(prompt_steps) for prompt_steps in echoed]
        reasons = ["length" if body.max_tokens == 0 else None] * len(job.choices)
        async for index, step in steps:
            texts[index].append(step.text)
            recorded[index].append(step)
            reasons[index] = step.finish_reason
        if any(r is None for r in reasons):  # the client went away
            return Response(status_code=499)
        tokenizer = state["loaded"].tokenizer
        choices = []
        for index, (_, prompt) in enumerate(labels):
            prefix = prompt if body.echo else ""
            choices.append(
                {
                    "index": index,
                    "text": prefix + "".join(texts[index]),
                    "logprobs": logprobs_of(recorded[index], tokenizer, 0 if body.echo else len(prefix))
                    if body.logprobs is not None
                    else None,
                    "finish_reason": reasons[index],
                }
            )
        completion_tokens = sum(len(r) for r in recorded) - sum(len(e) for e in echoed)
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model_id(),
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def stream(
        body, job, labels, steps, completion_id, created, prompt_tokens, echoed
    ) -> AsyncIterator[str]:
        def chunk(choices: list[dict], **extra) -> str:
            payload = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_id(),
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        tokenizer = state["loaded"].tokenizer
        completion_tokens = 0
        offsets = [0] * len(labels)
        try:
            if body.echo:
                for index, (_, prompt) in enumerate(labels):
                    offsets[index] = len(prompt)
                    logprobs = logprobs_of(echoed[index], tokenizer, 0) if echoed[index] else None
                    echo = {"index": index, "text": prompt, "logprobs": logprobs, "finish_reason": None}
                    yield chunk([echo])
            async for index, step in steps:
                completion_tokens += 1
                if not step.text and not step.finish_reason and body.logprobs is None:
                    continue  # bytes of a character still incomplete: nothing to show yet
                logprobs = (
                    logprobs_of([step], tokenizer, offsets[index]) if body.logprobs is not None else None
                )
                offsets[index] += len(step.text)
                yield chunk(
                    [
                        {
                            "index": index,
                            "text": step.text,
                            "logprobs": logprobs,
                            "finish_reason": step.finish_reason,
                        }
                    ]
                )
            if body.max_tokens == 0:  # echo only: every choice ends with its prompt
                for index in range(len(labels)):
                    yield chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": "length"}])
            if body.stream_options and body.stream_options.include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion_tokens))
        except APIError as e:  # the stream has started: report the error in it
            yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/generate", dependencies=[Depends(authorize)])
    async def generate_endpoint(http: Request, body: GenerateRequest) -> dict:
        """The original endpoint: {"max_tokens": N} -> {"generated_text": ...}."""
        body.check(settings.limits)
        completion = CompletionRequest(**body.model_dump())
        _, _, steps = await run(http, completion)
        texts = [step.text async for _, step in steps]
        return {"generated_text": "".join(texts)}

    return app


async def no_steps() -> AsyncIterator[tuple[int, Step]]:
    """The steps of a request that generates nothing (max_tokens 0 with echo)."""
    for step in ():
        yield step


class BackgroundServer:
    """The app on a free loopback port, served by uvicorn in a thread (tests, benchmarks)."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        import httpx

        self.thread.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.server.started and httpx.get(self.url + "/health").status_code == 200:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"the server at {self.url} did not become healthy")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self) -> Engine:
        return self.app.state.fingpt["engine"]


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        description="Serve a fingpt bundle over HTTP (OpenAI-style completions)."
    )
    parser.add_argument("--model", default="models/latest", help="a bundle folder (or a checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and cache; auto: bfloat16 on CUDA, else the bundle's (bfloat16 decodes one stream "
        "~1.5x faster on CPUs with AVX512-BF16 or AMX)",
    )
    parser.add_argument("--api-key", default=os.environ.get("FINGPT_API_KEY"), help="or FINGPT_API_KEY")
    parser.add_argument("--cors-origin", action="append", default=[], help="an origin allowed by CORS")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=2048, help="cap on max_tokens per request")
    parser.add_argument("--max-n", type=int, default=8, help="cap on n per request")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        parser.error(f"--model {args.model} does not exist: train and export one first (make demo)")
    for name in ("max_batch_size", "max_queue", "max_tokens", "max_n", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        api_key=args.api_key or None,
        cors_origins=args.cors_origin,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        timeout=args.timeout,
        limits=Limits(max_tokens=args.max_tokens, max_n=args.max_n),
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
