"""The HTTP server: OpenAI-style completions (streaming too), the legacy /generate, metrics.

    fingpt-serve --model models/latest [--host 127.0.0.1 --port 8000 --api-key KEY]

Imports the model, tokenizer and sampler modules only: no Lightning, no Hydra.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fingpt.checkpoint import LoadedModel
from fingpt.cli import user_errors
from serving.errors import HANDLERS, APIError, errors
from serving.middleware import BodyLimit, RequestMetrics
from serving.protocol import (
    EVENT_STREAM,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelCard,
    ModelList,
    complete_spec,
)
from serving.settings import Settings, parse_args
from serving.state import ServerState, log_failure


def server_state(request: Request) -> ServerState:
    return request.app.state.fingpt


State = Annotated[ServerState, Depends(server_state)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def authorize(state: State, credentials: Bearer) -> None:
    token = credentials.credentials if credentials else ""
    if not hmac.compare_digest(token.encode(), state.settings.api_key.encode()):
        message = "missing or wrong API key: send Authorization: Bearer <key>"
        raise APIError(401, message, code="invalid_api_key")


public = APIRouter()  # never needs the key
api = APIRouter()  # needs the key when the server has one


@public.get("/health", response_model_exclude_none=True, responses={503: {"model": Health}})
async def health(state: State, response: Response) -> Health:
    """200 once the model is loaded; 503 while it loads, or with the reason it could not be."""
    if state.completions is not None:
        return Health(status="ok", model=state.model_id)
    response.status_code = 503
    return Health(status="loading") if state.error is None else Health(status="error", error=state.error)


@public.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text"}})
async def metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/v1/models", responses=errors(503))
async def models(state: State) -> ModelList:
    state.ready()
    path = state.settings.model
    served = ModelCard(
        id=state.model_id,
        created=int(os.path.getmtime(path)) if os.path.exists(path) else 0,
        context_length=state.loaded.model.config.block_size,
        max_tokens=state.settings.limits.max_tokens,
        card=state.loaded.card.to_dict(),  # less what ServedCard leaves out
    )
    return ModelList(data=[served])


@api.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={200: {"content": EVENT_STREAM}, **errors(400, 413, 429, 500, 503, 504)},
)
async def create_completion(request: CompletionRequest, http: Request, state: State):
    """OpenAI's completions; with `stream`, events of a CompletionChunk each, then `data: [DONE]`.
    With `echo`, `logprobs` and `max_tokens` 0, a prompt is scored; with `score_stride` too, a prompt
    of any length, by windows of the context sliding by that many tokens."""
    request.check(state.settings.limits)
    return await state.ready().create(request, http)


@api.post("/generate", responses=errors(400, 413, 429, 500, 503, 504))
async def generate(request: GenerateRequest, http: Request, state: State) -> GenerateResponse:
    """The legacy endpoint: {"max_tokens": N} -> {"generated_text": ...}."""
    request.check(state.settings.limits)
    return await state.ready().generate(request, http)


class API(FastAPI):
    def openapi(self) -> dict:
        """The spec, with the loaded model's bounds: built again until the model is loaded."""
        if self.openapi_schema is None:
            state: ServerState = self.state.fingpt
            spec, served = super().openapi(), state.served()
            complete_spec(spec, state.settings.limits, state.settings.max_queue, served)
            if served is None:
                self.openapi_schema = None
            return spec
        return self.openapi_schema


def create_app(
    settings: Settings, loaded: LoadedModel | None = None, on_load_failure: Callable = log_failure
) -> FastAPI:
    """The app; the model loads in the background (/health says 503 until it is ready)."""
    state = ServerState(settings)

    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(loaded, on_load_failure), daemon=True).start()
        yield
        if state.engine:
            state.engine.stop()

    app = API(title="fingpt", version="0.1.0", lifespan=lifespan, exception_handlers=HANDLERS)
    app.state.fingpt = state
    app.include_router(public)
    if settings.api_key is None:
        app.include_router(api)
    else:
        app.include_router(api, dependencies=[Depends(authorize)], responses=errors(401))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: it counts the 413s too
    return app


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here rather than by uvicorn: a port in use or a host that does
    not resolve ends in one line, not in uvicorn's log and exit status 3."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:  # a negative errno is the resolver's: the host name is not known
        why = os.strerror(e.errno) if e.errno and e.errno > 0 else "no such host"
        raise ValueError(f"cannot listen on {host}:{port} ({why}): give another --host or --port") from e


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failure: list[Exception] = []

    def stop(e: Exception) -> None:  # a server that cannot load its model ends, as vLLM's and TGI's do
        failure.append(e)
        server.should_exit = True

    with user_errors():
        sock = listen(settings.host, settings.port)
    app = create_app(settings, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    server.run(sockets=[sock])
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
