"""The one sampler: training samples, evaluation and the server all generate through it.

`Sampler` decodes a batch of rows with a KV cache. Rows join (`add`) and leave (`remove`)
between steps, each with its own settings and random generator, so a seeded row produces the
same text alone or batched with others. `generate` and `stream` are its simple front doors.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fingpt.model import GPT
from fingpt.tokenizer import Tokenizer


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0
    stop: Sequence[str] = ()  # generation ends before the first stop string; it is not returned
    seed: int | None = None
    logprobs: int = 0  # how many of the most likely alternatives to report at each step
    ignore_eos: bool = False  # go on past <|endoftext|> (benchmarks that need fixed lengths)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps all tokens), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in [0, 20], got {self.logprobs}")


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """Pick one token per row of logits (B, V), each row with its own settings.

    `uniform` (B,) holds one draw in [0, 1) per row, taken from that row's generator, so a row's
    choice never depends on the other rows. Temperature 0 is greedy.
    """
    logits = logits.float()
    greedy = temperature == 0
    if greedy.all():
        return logits.argmax(dim=-1)
    # shifted so the largest logit is 0: a tiny temperature then gives a one-hot, not inf - inf
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    probs = F.softmax(shifted / torch.where(greedy, 1.0, temperature)[:, None], dim=-1)
    uniform = uniform.to(probs.device)
    # a row with nothing to cut draws in vocabulary order, whatever the other rows need: its
    # token must not depend on its neighbours in the batch
    cut = (top_k > 0) | (top_p < 1)
    if cut.all():
        sampled = _sample_cut(probs, top_k, top_p, uniform)
    else:
        sampled = _draw(probs, uniform)
        if cut.any():
            sampled = torch.where(cut, _sample_cut(probs, top_k, top_p, uniform), sampled)
    if greedy.any():
        sampled = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return sampled


def _draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The index, in each row of probs (B, N), where the running sum passes uniform x the row's sum."""
    cdf = probs.cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
    return choice.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def _sample_cut(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor):
    """Draw from the most likely tokens only: the top k, then the top-p nucleus of those."""
    probs, order = _most_likely_first(probs, top_k, top_p)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    keep = (top_k[:, None] == 0) | (rank[None, :] < top_k[:, None])
    # top-p: the smallest set of most likely tokens whose mass reaches p
    mass_before = probs.cumsum(dim=-1) - probs
    keep &= mass_before < top_p[:, None]
    keep[:, 0] = True
    return order.gather(-1, _draw(probs * keep, uniform)[:, None]).squeeze(-1)


def _most_likely_first(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """probs (B, V) sorted most likely first, and their token ids: only the first max(top_k) when
    no row can keep more (a partial sort, 50x cheaper than sorting 8192 tokens)."""
    k = int(top_k.max())
    if 0 < k < probs.shape[-1] and not ((top_k == 0) & (top_p < 1)).any():
        top, ids = torch.topk(probs, k + 1, dim=-1)
        # the full sort's first k, unless equally likely tokens are among them (frequent with
        # bfloat16 logits): the full sort orders those its own way, and seeded texts must not change
        if not (top[:, 1:] == top[:, :-1]).any():
            return top[:, :k], ids[:, :k]
    return torch.sort(probs, dim=-1, descending=True)


class TextStream:
    """Turns one row's tokens into text deltas.

    Deltas are always whole UTF-8 characters (bytes of a character split across tokens wait for
    the rest), and never show a stop string or the start of one that may still complete.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far, possibly truncated at a stop string
        self.sent = 0  # characters of text already returned as deltas
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to show ("" once stopped)."""
        if self.stopped:
            return ""
        self.text += self.decoder.decode(self.tokenizer.token_bytes(token_id))
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._flush()
        held = max((n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        delta = self.text[self.sent : len(self.text) - held]
        self.sent += len(delta)
        return delta

    def finish(self) -> str:
        """End of generation without a stop string: release whatever was held back."""
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        return self._flush()

    def _flush(self) -> str:
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta


@dataclass
class Step:
    """What one decoding step produced for one row."""

    token: int
    logprob: float | None  # of the token under the model's unmodified distribution
    text: str  # the new text delta (may be empty)
    finish_reason: str | None  # "stop" | "length" | None while the row goes on
    top_logprobs: dict[int, float] | None = None  # the most likely tokens, if asked for


@dataclass
class _Row:
    params: SamplingParams
    generator: torch.Generator
    stream: TextStream
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    pending: bool = True  # waiting for its prefill


class Sampler:
    """Decodes up to `max_batch_size` rows together with one KV cache (continuous batching)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.cache = model.new_cache(max_batch_size)
        self.rows: dict[int, _Row] = {}

    @property
    def free_rows(self) -> int:
        return self.cache.batch_size - len(self.rows)

    def add(self, prompt: str | list[int], params: SamplingParams | None = None) -> int:
        """Queue a prompt; it joins the batch at the next step. Returns its row id.

        An empty prompt starts a new document (it is fed as the end-of-text token).
        """
        if self.free_rows == 0:
            raise RuntimeError(f"all {self.cache.batch_size} rows are busy: remove one first")
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        row = min(set(range(self.cache.batch_size)) - set(self.rows))
        self.rows[row] = _Row(
            params=params,
            generator=torch.Generator().manual_seed(seed),
            stream=TextStream(self.tokenizer, params.stop),
            prompt=ids or [self.tokenizer.eot_id],
        )
        return row

    def remove(self, row: int) -> None:
        self.rows.pop(row, None)

    @torch.inference_mode()
    def step(self) -> dict[int, Step]:
        """Advance every row by one token. Finished rows are removed and reported once."""
        if not self.rows:
            return {}
        new = [r for r, row in self.rows.items() if row.pending]
        running = [r for r, row in self.rows.items() if not row.pending]
        logits = []
        if new:
            prompts = [self.rows[r].prompt for r in new]
            logits.append(self.model.prefill(self.cache, self._index(new), prompts).float())
        if running:
            last = torch.tensor([self.rows[r].tokens[-1] for r in running], device=self.device)
            logits.append(self.model.decode(self.cache, self._index(running), last).float())
        order = new + running
        batch = torch.cat(logits) if len(logits) > 1 else logits[0]
        rows = [self.rows[r] for r in order]
        tokens = sample(
            batch,
            temperature=self._param(rows, "temperature", torch.float),
            top_k=self._param(rows, "top_k", torch.long),
            top_p=self._param(rows, "top_p", torch.float),
            uniform=torch.stack([torch.rand((), generator=row.generator) for row in rows]),
        )
        all_logprobs = F.log_softmax(batch, dim=-1)
        logprobs = all_logprobs.gather(-1, tokens[:, None]).squeeze(-1).tolist()
        top_k = max(row.params.logprobs for row in rows)
        top = all_logprobs.topk(top_k, dim=-1) if top_k else None
        steps = {}
        for i, (r, row, token) in enumerate(zip(order, rows, tokens.tolist(), strict=True)):
            row.pending = False
            row.tokens.append(token)
            steps[r] = self._advance(row, token, logprobs[i])
            if k := row.params.logprobs:
                steps[r].top_logprobs = dict(
                    zip(top.indices[i, :k].tolist(), top.values[i, :k].tolist(), strict=True)
                )
            if steps[r].finish_reason:
                self.remove(r)
        return steps

    def _advance(self, row: _Row, token: int, logprob: float) -> Step:
        if token == self.tokenizer.eot_id and not row.params.ignore_eos:  # the model ended the call
            return Step(token, logprob, row.stream.finish(), "stop")
        text = row.stream.push(token)
        if row.stream.stopped:
            return Step(token, logprob, text, "stop")
        if len(row.tokens) >= row.params.max_new_tokens:
            return Step(token, logprob, text + row.stream.finish(), "length")
        return Step(token, logprob, text, None)

    def _index(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows, device=self.device)

    def _param(self, rows: list[_Row], name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([getattr(row.params, name) for row in rows], dtype=dtype, device=self.device)


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str


def stream(
    model: GPT, tokenizer: Tokenizer, prompt: str | list[int], params: SamplingParams | None = None
) -> Iterator[str]:
    """Yield the text of one completion as it is generated, in whole characters."""
    sampler = Sampler(model, tokenizer, max_batch_size=1)
    sampler.add(prompt, params)
    while sampler.rows:
        delta = sampler.step()[0].text
        if delta:
            yield delta


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str | list[int]],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
) -> list[Completion]:
    """Complete every prompt, batched; `params` is one for all or one per prompt."""
    if params is None or isinstance(params, SamplingParams):
        params = [params or SamplingParams()] * len(prompts)
    sampler = Sampler(model, tokenizer, max_batch_size=len(prompts))
    rows = [sampler.add(p, sp) for p, sp in zip(prompts, params, strict=True)]
    texts = {r: [] for r in rows}
    tokens = {r: [] for r in rows}
    reasons = {}
    while sampler.rows:
        for r, step in sampler.step().items():
            texts[r].append(step.text)
            tokens[r].append(step.token)
            if step.finish_reason:
                reasons[r] = step.finish_reason
    return [Completion("".join(texts[r]), tokens[r], reasons[r]) for r in rows]


def continue_text(model: GPT, tokenizer: Tokenizer, sample: Mapping) -> str | None:
    """The continuation of a sample config's prompt (conf/sample: prompt, tokens, sampling), as
    training logs it and fingpt-evaluate prints it; None when it asks for no tokens."""
    if sample["tokens"] < 1:
        return None
    params = SamplingParams(max_new_tokens=sample["tokens"], **sample["sampling"])
    (completion,) = generate(model, tokenizer, [sample["prompt"]], params)
    return completion.text
