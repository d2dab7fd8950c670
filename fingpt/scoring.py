"""Scoring a text: windows over a call and the log-probability of each token.

fingpt-evaluate scores calls through `windows` and `window_logprobs`; the server's echo with
logprobs through `prompt_logprobs`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from fingpt.generation import Step
from fingpt.model import GPT


@torch.inference_mode()
def windows(ids: list[int], block_size: int, stride: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) of each window over one call; targets already scored are -100. The last
    window ends at the call's end, so its new tokens get a whole window of context."""
    scored_until = 0  # ids[1:scored_until + 1] have been scored
    start = 0
    while scored_until < len(ids) - 1:
        start = min(start, max(0, len(ids) - 1 - block_size))
        chunk = ids[start : start + block_size + 1]
        targets = list(chunk[1:])
        first_new = scored_until - start  # targets before this index were scored already
        targets[:first_new] = [-100] * first_new
        yield chunk[:-1], targets
        scored_until = start + len(chunk) - 1
        start += stride


def positions(length: int, block_size: int, stride: int | None = None) -> int:
    """How many token positions the model computes to score `length` tokens as `prompt_logprobs`
    does (its windows times their width), without computing them: what a server caps."""
    if stride is None:  # the last block_size tokens only, in one window
        length, stride = min(length, block_size), block_size
    if length < 2:
        return 0
    width = min(block_size, length - 1)
    return width * (1 + -(-max(0, length - 1 - block_size) // stride))


def window_logprobs(
    model: GPT, windows: Iterable[tuple[list[int], list[int]]], batch_size: int = 32
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each window (inputs, targets) of `windows`, run batch_size at a time: the
    log-probabilities at its new tokens' places (N, vocab) and those tokens (N,)."""
    batch: list[tuple[list[int], list[int]]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield from _window_batch(model, batch)
            batch = []
    if batch:
        yield from _window_batch(model, batch)


def _window_batch(model: GPT, batch: list[tuple[list[int], list[int]]]):
    width = max(len(inputs) for inputs, _ in batch)
    x = torch.zeros(len(batch), width, dtype=torch.long)
    for row, (inputs, _) in enumerate(batch):
        x[row, : len(inputs)] = torch.tensor(inputs)
    logprobs = F.log_softmax(model(x.to(model.device))[0].float(), dim=-1)
    for row, (_, targets) in enumerate(batch):
        new = [t for t, target in enumerate(targets) if target != -100]  # not scored before
        yield logprobs[row, new], torch.tensor([targets[t] for t in new], device=logprobs.device)


@torch.inference_mode()
def prompt_logprobs(
    model: GPT,
    ids: list[int],
    top: int = 0,
    stride: int | None = None,
    batch_size: int = 32,
    deadline: float | None = None,
) -> list[Step]:
    """Each prompt token's log-probability given the tokens before it (None for the first), with
    the `top` most likely tokens at its place: what OpenAI's echo with logprobs reports. Without
    `stride`, only the last block_size tokens are scored, as the model sees them, and earlier ones
    get None too; with it, every token is, by windows sliding by `stride` (fingpt-evaluate's).
    Past `deadline` (a time.perf_counter() value) it stops between batches: TimeoutError."""
    block_size = model.config.block_size
    steps = []
    if stride is None:
        steps = [Step(token, None, "", None, None) for token in ids[:-block_size]]
        ids, stride = ids[-block_size:], block_size
    steps.append(Step(ids[0], None, "", None, None))
    for logprobs, new in window_logprobs(model, windows(ids, block_size, stride), batch_size):
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError(f"scoring {len(ids)} tokens ran past its deadline")
        chosen = logprobs.gather(-1, new[:, None]).squeeze(-1).tolist()
        best = logprobs.topk(top, dim=-1) if top else None
        for i, (token, logprob) in enumerate(zip(new.tolist(), chosen, strict=True)):
            alternatives = None
            if top:
                alternatives = dict(zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True))
            steps.append(Step(token, logprob, "", None, alternatives))
    return steps
