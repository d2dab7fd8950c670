"""Serving benchmark, side by side in one run on the same prompts and model size:

1. single-stream decoding tokens/s: fingpt's sampler (the engine's decoding loop) vs Hugging
   Face transformers' GPT2LMHeadModel of the same n_embd, n_head, n_layer, vocabulary and
   context (random weights, its own KV cache, `generate`), goal >= 1.3x;
2. fingpt's KV cache vs recomputing the whole context at every token, at 512 tokens of
   context, goal >= 5x;
3. aggregate tokens/s of 16 concurrent streams vs 1 through the HTTP server, with p50 and p99
   request latency, goal >= 6x;
4. decoding far past the context: rotary positions, whose cache slides one token per step, vs
   learned positions, whose cache is refilled every block_size / 4 tokens (context 256).

    python bench/serve.py [--n-embd 384 --n-head 6 --n-layer 6 --tokens 128] [--parts 4]
    (needs '.[bench]')
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx
import torch

from fingpt.checkpoint import LoadedModel
from fingpt.generation import SamplingParams, generate
from fingpt.model import GPT, GPTConfig
from fingpt.tokenizer import BPETokenizer

PROMPT = "Operator: Good afternoon, and welcome to the fourth quarter earnings conference call."


def side_by_side(a, b, tokens: int, repeats: int = 3) -> tuple[float, float]:
    """Best tokens/s of two generators, run alternately so both see the same machine."""
    a(), b()  # warm up
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return tokens / best[0], tokens / best[1]


def vs_transformers(model: GPT, tokenizer, prompt: list[int], tokens: int) -> tuple[float, float]:
    """Both in the model's dtype, greedy, exactly `tokens` new tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
            n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    ).eval().to(model.wte.weight.dtype)  # fmt: skip
    ids = torch.tensor([prompt])
    greedy = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)

    def hf_generate():
        with torch.inference_mode():
            out = hf.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                do_sample=False, use_cache=True, pad_token_id=0,
            )  # fmt: skip
        assert out.shape[1] == len(prompt) + tokens

    return side_by_side(lambda: generate(model, tokenizer, [prompt], greedy), hf_generate, tokens)


def vs_recompute(model: GPT, tokenizer, context: int, tokens: int) -> tuple[float, float]:
    prompt = torch.randint(0, model.config.vocab_size, (context,)).tolist()
    greedy = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)

    @torch.inference_mode()
    def recompute():
        ids = torch.tensor([prompt])
        for _ in range(tokens):
            logits, _ = model(ids[:, -model.config.block_size :])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)

    return side_by_side(lambda: generate(model, tokenizer, [prompt], greedy), recompute, tokens, repeats=2)


def sliding(config: GPTConfig, tokenizer, tokens: int, dtype: torch.dtype) -> tuple[float, float]:
    """One stream generating `tokens` past a context of 256: rotary vs learned positions."""
    shape = config.to_dict() | {"block_size": 256}
    rope, learned = (GPT(GPTConfig(**shape | {"pos_emb": p})).eval().to(dtype) for p in ("rope", "learned"))
    prompt = tokenizer.encode(PROMPT)
    greedy = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    return side_by_side(
        lambda: generate(rope, tokenizer, [prompt], greedy),
        lambda: generate(learned, tokenizer, [prompt], greedy),
        tokens,
        repeats=2,
    )


def concurrency(
    model: GPT, tokenizer, streams: int, requests: int, tokens: int
) -> tuple[float, float, float]:
    """Aggregate tokens/s, p50 and p99 latency of `requests` requests, `streams` at a time."""
    from serving.app import Settings, create_app
    from serving.testing import BackgroundServer

    loaded = LoadedModel(model, tokenizer, {"name": "bench"})
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "ignore_eos": True}
    with BackgroundServer(
        create_app(Settings(model="bench", device="cpu", max_batch_size=16), loaded)
    ) as server:

        async def run():
            latencies, generated = [], 0
            limit = asyncio.Semaphore(streams)
            async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:

                async def one(i):
                    nonlocal generated
                    async with limit:
                        start = time.perf_counter()
                        r = await client.post("/v1/completions", json={**body, "seed": i})
                        latencies.append(time.perf_counter() - start)
                        generated += r.json()["usage"]["completion_tokens"]

                start = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(requests)))
                return generated / (time.perf_counter() - start), latencies

        tps, latencies = asyncio.run(run())
    latencies.sort()
    return tps, statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both models'")
    parser.add_argument("--parts", default="1234", help="which of the four measurements to run")
    args = parser.parse_args()

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp500_sample" / "input.txt"
    text = data.read_text() if data.exists() else PROMPT * 200
    tokenizer = BPETokenizer.train([text], vocab_size=args.vocab_size)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=1024, n_embd=args.n_embd, n_head=args.n_head,
        n_layer=args.n_layer, dropout=0.0,
    )  # fmt: skip
    dtype = getattr(torch, args.dtype)
    model = GPT(config).eval().to(dtype)
    size = (
        f"{args.n_embd}/{args.n_head}/{args.n_layer}, vocab {config.vocab_size}, context 1024, {args.dtype}"
    )
    print(f"model {size}, {model.num_parameters() / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")

    if "1" in args.parts:
        single_stream(model, tokenizer, args.tokens)
    if "2" in args.parts:
        cache_vs_recompute(model, tokenizer)
    if "3" in args.parts:
        over_http(model, tokenizer, args.tokens)
    if "4" in args.parts:
        slide_vs_refill(config, tokenizer, dtype)


def single_stream(model: GPT, tokenizer, tokens: int) -> None:
    ours, hf = vs_transformers(model, tokenizer, tokenizer.encode(PROMPT), tokens)
    print(f"1. single stream: fingpt {ours:.0f} tokens/s, transformers GPT2LMHeadModel {hf:.0f} tokens/s")
    print(f"   = {ours / hf:.2f}x (goal >= 1.3x)")


def cache_vs_recompute(model: GPT, tokenizer) -> None:
    cached, recomputed = vs_recompute(model, tokenizer, context=512, tokens=32)
    print(
        f"2. at 512 tokens of context: KV cache {cached:.0f} tokens/s, recomputing {recomputed:.0f} tokens/s"
    )
    print(f"   = {cached / recomputed:.1f}x (goal >= 5x)")


def over_http(model: GPT, tokenizer, tokens: int) -> None:
    one, p50_1, p99_1 = concurrency(model, tokenizer, streams=1, requests=4, tokens=tokens)
    many, p50_16, p99_16 = concurrency(model, tokenizer, streams=16, requests=32, tokens=tokens)
    print(f"3. over HTTP, {tokens} tokens per request:")
    print(f"   1 stream:   {one:6.0f} tokens/s, latency p50 {p50_1:.2f} s, p99 {p99_1:.2f} s")
    print(f"   16 streams: {many:6.0f} tokens/s, latency p50 {p50_16:.2f} s, p99 {p99_16:.2f} s")
    print(f"   = {many / one:.1f}x (goal >= 6x)")


def slide_vs_refill(config: GPTConfig, tokenizer, dtype: torch.dtype) -> None:
    rope, learned = sliding(config, tokenizer, tokens=1024, dtype=dtype)
    print("4. 1024 tokens generated with a context of 256 (the cache slides 768 times):")
    print(
        f"   rotary, sliding a token per step {rope:.0f} tokens/s, learned, refilled {learned:.0f} tokens/s"
    )
    print(f"   = {rope / learned:.2f}x")


if __name__ == "__main__":
    main()
