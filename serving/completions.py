"""Completions: a request becomes an engine job, and the job's steps become a response or a stream.

create:   encode the prompts -> (scoring: check its work, score) -> (echo only: answer now)
          -> submit a job -> collect or stream its steps, all before the request's deadline
generate: the same for the legacy /generate, answered with the text
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fingpt.checkpoint import LoadedModel
from fingpt.generation import Step
from fingpt.scoring import positions, prompt_logprobs
from serving.engine import Choice, Engine, Job, Overloaded
from serving.errors import APIError, internal_error
from serving.metrics import Metrics
from serving.protocol import (
    SEEDS,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    Logprobs,
    Usage,
)

Steps = AsyncIterator[tuple[int, Step]]  # (choice index, step), as the engine decodes them


@dataclass
class Prompt:
    text: str  # as echo shows it
    ids: list[int]  # as the model reads it
    scored: list[Step]  # its tokens with their logprobs, when echo and logprobs ask for them


class Completions:
    def __init__(
        self,
        loaded: LoadedModel,
        engine: Engine,
        model_id: str,
        timeout: float,
        max_positions: int,
        metrics: Metrics,
    ) -> None:
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.engine, self.model_id, self.timeout, self.metrics = engine, model_id, timeout, metrics
        self.max_positions = max_positions  # the most token positions one request's scoring may compute

    async def create(self, request: CompletionRequest, http: Request) -> Response | CompletionResponse:
        deadline = time.perf_counter() + self.timeout
        prompts = await self.encode(request)
        if request.echo and request.logprobs is not None:
            self.check_work(prompts, request.score_stride)
            await self.score(prompts, request.logprobs, request.score_stride, deadline)
        prompt_of = [p for p in prompts for _ in range(request.n)]  # choice i continues prompt_of[i]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_id}
        if request.max_tokens == 0:  # echo only: the prompts, scored, and nothing generated
            return self.echo_only(request, prompt_of, head, http)
        steps = self.steps(self.submit(request, prompt_of), http, deadline)
        if request.stream:
            return self.sse(self.stream(request, prompt_of, head, steps), http)
        generated: list[list[Step]] = [[] for _ in prompt_of]
        async for index, step in steps:
            generated[index].append(step)
        if not all(g and g[-1].finish_reason for g in generated):
            return Response(status_code=499)  # the client went away: nobody reads this
        choices = [
            self.choice(request, i, prompt_of[i], done, done[-1].finish_reason)
            for i, done in enumerate(generated)
        ]
        usage = self.usage(request, prompt_of, sum(map(len, generated)))
        return CompletionResponse(**head, choices=choices, usage=usage)

    async def generate(self, request: GenerateRequest, http: Request) -> GenerateResponse:
        completion = CompletionRequest(**request.model_dump())
        deadline = time.perf_counter() + self.timeout
        steps = self.steps(self.submit(completion, await self.encode(completion)), http, deadline)
        return GenerateResponse(generated_text="".join([step.text async for _, step in steps]))

    async def encode(self, request: CompletionRequest) -> list[Prompt]:
        """The prompts as token ids, checked against the vocabulary, the context and the queue."""
        prompt, tokenizer = request.prompt, self.tokenizer
        texts = None
        if isinstance(prompt, str) or isinstance(prompt[0], str):
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            encoded = await run_in_threadpool(tokenizer.encode_batch, texts)  # a MB in well under 1 s
        else:  # token ids: one prompt, or a list of them
            encoded = [list(prompt)] if isinstance(prompt[0], int) else [list(ids) for ids in prompt]
            vocab = tokenizer.vocab_size
            if bad := [i for ids in encoded for i in ids if not 0 <= i < vocab]:
                raise APIError(
                    400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt"
                )
        context, keep = self.model.config.block_size, request.truncate_prompt_tokens
        if request.score_stride is not None and request.score_stride > context:
            message = f"score_stride is {request.score_stride}, above the model's context of {context}"
            raise APIError(400, message, param="score_stride")
        for i, ids in enumerate(encoded):
            if keep:
                encoded[i] = ids[-keep:]
            elif len(ids) > context and request.score_stride is None:
                raise APIError(
                    400,
                    f"the prompt is {len(ids)} tokens, longer than the model's context of {context} "
                    "tokens: shorten it, or set truncate_prompt_tokens to keep only its last tokens",
                    param="prompt",
                    code="context_length_exceeded",
                )
        if (count := len(encoded) * request.n) > self.engine.max_queue:
            raise APIError(
                400,
                f"this request asks for {count} completions (prompts x n), more than "
                f"this server queues at once ({self.engine.max_queue}): split it",
                param="prompt" if len(encoded) > 1 else "n",
            )
        texts = texts or [tokenizer.decode(ids) for ids in encoded]
        return [Prompt(text, ids, []) for text, ids in zip(texts, encoded, strict=True)]

    def check_work(self, prompts: list[Prompt], stride: int | None) -> None:
        """Refuse (413), before any is computed, scoring that needs more token positions than the cap."""
        context, cap = self.model.config.block_size, self.max_positions
        needed = [positions(len(p.ids), context, stride) for p in prompts]
        if sum(needed) <= cap:
            return
        worst = max(range(len(prompts)), key=needed.__getitem__)
        length, at = len(prompts[worst].ids), f" at score_stride {stride}" if stride else ""
        if needed[worst] <= cap:
            asked = f"these {len(prompts)} prompts need {sum(needed):,} token positions together"
            fix = "score them in separate requests"
        else:
            which = f"prompt {worst}, of {length:,} tokens{at}," if len(prompts) > 1 else None
            which = which or f"this prompt of {length:,} tokens{at}"
            asked = f"{which} needs {needed[worst]:,} token positions"
            fix = fitting(length, context, stride or context, cap)
        raise APIError(
            413,
            f"{asked} (windows of {context} tokens), above this server's cap of {cap:,}: {fix}",
            param="prompt",
            code="too_many_positions",
        )

    async def score(self, prompts: list[Prompt], top: int, stride: int | None, deadline: float) -> None:
        """Each prompt's tokens with their logprobs, as OpenAI's echo with logprobs reports them
        (how evaluation harnesses score text through the API)."""

        def score_all() -> None:
            for prompt in prompts:
                if prompt.ids:
                    prompt.scored = prompt_logprobs(self.model, prompt.ids, top, stride, deadline=deadline)

        try:
            await run_in_threadpool(score_all)
        except TimeoutError:
            raise self.timed_out() from None

    def timed_out(self) -> APIError:
        return APIError(504, f"the request took longer than {self.timeout:g} s", type="timeout")

    def submit(self, request: CompletionRequest, prompt_of: list[Prompt]) -> Job:
        choices = []
        for i, prompt in enumerate(prompt_of):
            seed = None if request.seed is None else (request.seed + i % request.n) % SEEDS
            choices.append(Choice(prompt.ids, request.sampling_params(seed, request.logprobs)))
        job = Job(choices=choices, loop=asyncio.get_running_loop())
        try:
            self.engine.submit(job)
        except Overloaded as e:
            raise APIError(
                429, f"the server is busy ({e}): retry later", type="rate_limit_error", code="overloaded"
            ) from e
        return job

    async def steps(self, job: Job, http: Request, deadline: float) -> Steps:
        """Steps of every choice as they come, until all finish, the client leaves or time runs out."""
        unfinished, first = len(job.choices), True
        next_check = time.perf_counter() + 0.5
        try:
            while unfinished:
                now = time.perf_counter()
                if now >= deadline:
                    raise self.timed_out()
                if now >= next_check:  # twice a second, whether or not tokens are flowing
                    if await http.is_disconnected():
                        return
                    next_check = now + 0.5
                try:
                    index, item = await asyncio.wait_for(job.events.get(), timeout=min(deadline - now, 0.5))
                except asyncio.TimeoutError:
                    continue
                if isinstance(item, ValueError):  # the sampler refused the choice's settings
                    raise APIError(400, str(item))
                if isinstance(item, BaseException):  # decoding failed: a 500 whose traceback is logged
                    raise item
                if first:
                    self.metrics.first_token.observe(time.perf_counter() - job.submitted)
                    first = False
                unfinished -= item.finish_reason is not None
                yield index, item
        finally:
            job.cancel()  # a no-op when done; frees the rows of a client that went away

    def echo_only(
        self, request: CompletionRequest, prompt_of: list[Prompt], head: dict, http: Request
    ) -> CompletionResponse | StreamingResponse:
        """max_tokens 0 with echo: each choice is its prompt (scored if asked) and ends there."""
        choices = [self.choice(request, i, prompt, [], "length") for i, prompt in enumerate(prompt_of)]
        usage = self.usage(request, prompt_of, 0)
        if not request.stream:
            return CompletionResponse(**head, choices=choices, usage=usage)

        async def stream() -> AsyncIterator[CompletionChunk]:
            for chunk in self.echoes(request, prompt_of, head):
                yield chunk
            for i in range(len(prompt_of)):
                end = CompletionChoice(index=i, text="", logprobs=None, finish_reason="length")
                yield CompletionChunk(**head, choices=[end])
            if request.stream_options and request.stream_options.include_usage:
                yield CompletionChunk(**head, choices=[], usage=usage)

        return self.sse(stream(), http)

    async def stream(
        self, request: CompletionRequest, prompt_of: list[Prompt], head: dict, steps: Steps
    ) -> AsyncIterator[CompletionChunk]:
        """The echoes (if asked for), a chunk per text delta, then the usage (if asked for)."""
        for chunk in self.echoes(request, prompt_of, head):
            yield chunk
        offsets = [len(prompt.text) if request.echo else 0 for prompt in prompt_of]
        generated = 0
        async for index, step in steps:
            generated += 1
            if not step.text and not step.finish_reason and request.logprobs is None:
                continue  # bytes of a character still incomplete: nothing to show yet
            logprobs = self.logprobs([step], offsets[index]) if request.logprobs is not None else None
            offsets[index] += len(step.text)
            delta = CompletionChoice(
                index=index, text=step.text, logprobs=logprobs, finish_reason=step.finish_reason
            )
            yield CompletionChunk(**head, choices=[delta])
        if request.stream_options and request.stream_options.include_usage:
            yield CompletionChunk(**head, choices=[], usage=self.usage(request, prompt_of, generated))

    def echoes(
        self, request: CompletionRequest, prompt_of: list[Prompt], head: dict
    ) -> list[CompletionChunk]:
        """A stream's first chunks when echo is asked for: each choice's prompt (scored if asked)."""
        chunks = []
        for i, prompt in enumerate(prompt_of if request.echo else []):
            logprobs = self.logprobs(prompt.scored, 0) if prompt.scored else None
            echo = CompletionChoice(index=i, text=prompt.text, logprobs=logprobs, finish_reason=None)
            chunks.append(CompletionChunk(**head, choices=[echo]))
        return chunks

    @staticmethod
    def sse(chunks: AsyncIterator[CompletionChunk], http: Request) -> StreamingResponse:
        """Server-sent events: `data: {chunk}` each, then `data: [DONE]`. An error once the stream
        has started is reported in it, as a `data: {error}` event in the shape of every error."""

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {chunk.model_dump_json()}\n\n"
            except APIError as e:
                yield f"data: {e.body.model_dump_json()}\n\n"
            except Exception as e:  # noqa: BLE001 - the 500 of a stream that has started
                yield f"data: {internal_error(http, e).body.model_dump_json()}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def choice(
        self, request: CompletionRequest, index: int, prompt: Prompt, steps: list[Step], finish: str | None
    ) -> CompletionChoice:
        """A whole choice: the prompt if echoed, the text generated, and the logprobs of both."""
        logprobs = self.logprobs(prompt.scored + steps, 0) if request.logprobs is not None else None
        text = (prompt.text if request.echo else "") + "".join(step.text for step in steps)
        return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)

    @staticmethod
    def usage(request: CompletionRequest, prompt_of: list[Prompt], generated: int) -> Usage:
        prompt_tokens = sum(len(prompt.ids) for prompt in prompt_of) // request.n  # each prompt once
        return Usage(
            prompt_tokens=prompt_tokens, completion_tokens=generated, total_tokens=prompt_tokens + generated
        )

    def logprobs(self, steps: list[Step], offset: int) -> Logprobs:
        tokens = [self.token_text(step.token) for step in steps]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        top = [
            None
            if step.top_logprobs is None and step.logprob is None  # a prompt's first token
            else {self.token_text(t): lp for t, lp in (step.top_logprobs or {}).items()}
            for step in steps
        ]
        tokens_logprobs = [step.logprob for step in steps]
        return Logprobs(tokens=tokens, token_logprobs=tokens_logprobs, top_logprobs=top, text_offset=offsets)

    def token_text(self, token: int) -> str:
        return self.tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def fitting(length: int, context: int, stride: int, cap: int) -> str:
    """How `length` tokens scored by windows of `context` sliding by `stride` fit in `cap` token
    positions: the least stride that fits (if any does), or the most tokens that fit at `stride`."""
    windows = cap // context  # whole windows within the cap
    if windows < 1:
        return f"a text of at most {cap + 1:,} tokens"
    ways = []
    if windows > 1 and (least := -(-(length - 1 - context) // (windows - 1))) <= context:
        ways.append(f"score_stride >= {least:,}")
    ways.append(f"a text of at most {context + 1 + (windows - 1) * stride:,} tokens")
    return " or ".join(["use " + ways[0], *ways[1:]])
