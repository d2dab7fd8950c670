"""Serving benchmark, side by side in one run on the same prompts and model size:

0. one stream's decoding step (time per token) as a multiple of its floor, the model's linear
   layers alone (its weight matrices, the LM head included, one token through each in a chain),
   goal <= 1.5x; float32 and weight-only int8 side by side, goal int8 >= 1.3x float32 (with
   --profile, where a step's time goes, by torch.profiler);
1. single-stream decoding tokens/s: fingpt's sampler (the engine's decoding loop) vs Hugging
   Face transformers' GPT2LMHeadModel of the same n_embd, n_head, n_layer, vocabulary and
   context (random weights, its own KV cache, `generate`), goal >= 1.3x;
2. fingpt's KV cache vs recomputing the whole context at every token, at 512 tokens of
   context, goal >= 5x;
3. aggregate tokens/s of 16 concurrent streams vs 1 through the HTTP server, with p50 and p99
   request latency, goal >= 6x;
4. decoding far past the context: rotary positions, whose cache slides one token per step, vs
   learned positions, whose cache is refilled every block_size / 4 tokens (context 256);
5. llama.cpp as the peer, on the same weights (the demo's layout, exported by fingpt-export
   --format gguf): single-stream greedy tokens/s, fingpt float32 vs llama.cpp f32 and fingpt int8
   vs llama.cpp q8_0, at the demo's size (128/4/4, context 128) and at 384/6/6 (context 1024),
   goal fingpt >= llama.cpp in both pairs; and fingpt's sampler on llama.cpp's arithmetic, what
   `fingpt-serve --backend llama.cpp` decodes with.

    python bench/serve.py [--n-embd 384 --n-head 6 --n-layer 6 --tokens 128] [--parts 045]
        [--profile] [--threads 1]
    (needs '.[bench]')
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from fingpt.card import Card
from fingpt.checkpoint import LoadedModel
from fingpt.generation import SamplingParams, generate
from fingpt.gguf_export import write_gguf
from fingpt.model import GPT, GPTConfig
from fingpt.quantize import Int8Linear, to_dtype
from fingpt.tokenizer import BPETokenizer
from serving.llama_backend import LlamaCppModel

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


def linear_chain(model: GPT):
    """The floor of a decoding step: one token through each of the model's linear layers (int8
    ones too), in the order a step meets them, each taking the previous one's output (its first
    in_features values), so none starts before the one before it ends."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear)) and m is not model.lm_head]
    layers.append(model.lm_head)
    x0 = torch.randn(1, model.config.n_embd, dtype=model.wte.weight.dtype)

    @torch.inference_mode()
    def chain():
        x = x0
        for layer in layers:
            x = layer(x[:, : layer.in_features])

    return chain, len(layers)


def runs(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each function, called in turn `repeats` times after a warm-up (same machine state)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


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
    from serving.testing import serve

    loaded = LoadedModel(model, tokenizer, Card(name="bench"))
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "ignore_eos": True}
    with serve("bench", loaded=loaded, max_batch_size=16) as server:

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


STEP_SAMPLING = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=0.8, top_k=200, top_p=0.95, seed=1),  # the page's defaults
}
PROFILE_GROUPS = {  # aten ops by what they do in a decoding step
    "linear layers (matrix products)": ("addmm", "mm", "_weight_int8pack_mm"),
    "attention over the cache (SDPA)": ("_scaled_dot_product_flash_attention_for_cpu",),
    "KV cache writes and reads": ("_index_put_impl_", "index"),
    "norms": ("native_layer_norm", "_fused_rms_norm", "rms_norm"),
    "MLP activation": ("gelu", "relu", "pow", "silu"),
    "sampler (softmax, top-k, draw, logprobs)": (
        "argmax", "_softmax", "_log_softmax", "topk", "sort", "cumsum", "searchsorted", "gather", "amax",
    ),
}  # fmt: skip


def in_dtypes(model: GPT) -> dict[str, GPT]:
    """Copies of the model in float32, bfloat16 and weight-only int8."""
    return {
        "float32": copy.deepcopy(model).float(),
        "bfloat16": copy.deepcopy(model).bfloat16(),
        "int8": to_dtype(copy.deepcopy(model), "int8"),
    }


def step_vs_floor(model: GPT, tokenizer, tokens: int, repeats: int) -> None:
    """Each dtype's floor, greedy and sampled steps, all alternating in one loop."""
    models = in_dtypes(model)
    prompt = tokenizer.encode(PROMPT)
    fns, n_layers = {}, 0
    for dtype, m in models.items():
        chain, n_layers = linear_chain(m)
        fns[dtype, "floor"] = lambda chain=chain: [chain() for _ in range(tokens)]
        for kind, sampling in STEP_SAMPLING.items():
            params = SamplingParams(max_new_tokens=tokens, ignore_eos=True, **sampling)
            fns[dtype, kind] = lambda m=m, params=params: generate(m, tokenizer, [prompt], params)
    ms = {key: sorted(1e3 * t / tokens for t in times) for key, times in runs(fns, repeats).items()}

    labels = {
        "floor": f"floor: the {n_layers} linear layers",
        "greedy": "step, greedy",
        "sampled": "step, T 0.8 top-k 200 top-p .95",
    }
    print(f"0. one stream, {tokens} tokens: ms per token, best (slowest) of {repeats} alternating runs,")
    print("   and the step as a multiple of its floor")
    print(" " * 36 + "".join(f"{dtype:>22s}" for dtype in models))
    for kind, label in labels.items():
        cells = []
        for dtype in models:
            best, slowest = ms[dtype, kind][0], ms[dtype, kind][-1]
            times = "" if kind == "floor" else f" = {best / ms[dtype, 'floor'][0]:.2f}x"
            cells.append(f"{best:.2f} ({slowest:.2f}){times}")
        print(f"   {label:33s}" + "".join(f"{cell:>22s}" for cell in cells))
    for kind in STEP_SAMPLING:
        rates = ", ".join(f"{dtype} {1e3 / ms[dtype, kind][0]:.0f}" for dtype in models)
        faster = ", ".join(f"{d} {ms['float32', kind][0] / ms[d, kind][0]:.2f}x" for d in list(models)[1:])
        print(f"   {kind}: tokens/s {rates}; vs float32: {faster}")
    print("   goals: the float32 step <= 1.5x its floor; int8 >= 1.3x float32")


def profile_step(model: GPT, tokenizer, tokens: int) -> None:
    """Where a greedy step's time goes in each dtype: torch.profiler's self time of each op,
    grouped; the rest of the wall time is Python, dispatch and the profiler's own cost."""
    prompt = tokenizer.encode(PROMPT)
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    table = {}
    for dtype, m in in_dtypes(model).items():
        generate(m, tokenizer, [prompt], params)  # warm up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            generate(m, tokenizer, [prompt], params)
            wall = 1e3 * (time.perf_counter() - start) / tokens
        ops = {e.key: e.self_cpu_time_total / 1e3 / tokens for e in prof.key_averages()}
        ops = {op.removeprefix("aten::"): t for op, t in ops.items() if op.startswith("aten::")}
        rows = {group: sum(ops.pop(op, 0.0) for op in names) for group, names in PROFILE_GROUPS.items()}
        rows["other ops (views, copies, small arithmetic)"] = sum(ops.values())
        rows["Python, dispatch, profiler"] = wall - sum(rows.values())
        rows["a step, profiled"] = wall
        table[dtype] = rows
    print(f"   where a greedy step's time goes (torch.profiler, {tokens} tokens): ms per token, share")
    print(" " * 47 + "".join(f"{dtype:>16s}" for dtype in table))
    for group in table["float32"]:
        cells = [
            f"{rows[group]:.3f} {100 * rows[group] / rows['a step, profiled']:3.0f}%"
            for rows in table.values()
        ]
        print(f"   {group:44s}" + "".join(f"{cell:>16s}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both models'")
    parser.add_argument("--parts", default="012345", help="which of the six measurements to run")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of part 0")
    parser.add_argument("--profile", action="store_true", help="part 0: where a step's time goes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sample = Path(__file__).resolve().parents[1] / "tests" / "corpus" / "maec" / "calls.parquet"
    tokenizer = BPETokenizer.train(pq.read_table(sample)["content"].to_pylist(), vocab_size=args.vocab_size)
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

    if "0" in args.parts:
        step_vs_floor(model, tokenizer, args.tokens, args.repeats)
        if args.profile:
            profile_step(model, tokenizer, args.tokens)
    if "1" in args.parts:
        single_stream(model, tokenizer, args.tokens)
    if "2" in args.parts:
        cache_vs_recompute(model, tokenizer)
    if "3" in args.parts:
        over_http(model, tokenizer, args.tokens)
    if "4" in args.parts:
        slide_vs_refill(config, tokenizer, dtype)
    if "5" in args.parts:
        vs_llama_cpp(tokenizer, args.tokens, args.repeats)


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


DEMO_LAYOUT = {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "bias": False}
PEER_SIZES = {
    "the demo's size, 128/4/4, context 128": {"n_embd": 128, "n_head": 4, "n_layer": 4, "block_size": 128},
    "384/6/6, context 1024": {"n_embd": 384, "n_head": 6, "n_layer": 6, "block_size": 1024},
}


def vs_llama_cpp(tokenizer, tokens: int, repeats: int) -> None:
    print(f"5. llama.cpp on the same weights (the demo's layout), one stream, {tokens} tokens, greedy:")
    print(f"   ms per token, best (slowest) of {repeats} alternating runs")
    for label, size in PEER_SIZES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, **DEMO_LAYOUT, **size)).eval()
        with torch.no_grad():  # zero-initialised projections would make a trivial model
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ms, same = fingpt_and_llama_cpp(model, tokenizer, tokens, repeats)
        print(
            f"   {label}, {model.num_parameters() / 1e6:.1f}M parameters (same greedy tokens in f32: {same})"
        )
        for name, times in ms.items():
            print(f"     {name:24s} {times[0]:6.2f} ({times[-1]:.2f}) ms = {1e3 / times[0]:5.0f} tokens/s")
        for pair in (("fingpt float32", "llama.cpp f32"), ("fingpt int8", "llama.cpp q8_0")):
            print(f"     {pair[0]} vs {pair[1]}: {ms[pair[1]][0] / ms[pair[0]][0]:.2f}x (goal >= 1.00x)")


def fingpt_and_llama_cpp(model: GPT, tokenizer, tokens: int, repeats: int) -> tuple[dict, bool]:
    """ms per token of each engine and dtype, greedy from the same prompt, alternating runs
    (llama.cpp with its defaults, a float16 KV cache, on torch's thread count); and whether both
    float32 engines chose the same tokens."""
    import llama_cpp

    prompt = tokenizer.encode(PROMPT)
    greedy = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    int8 = to_dtype(copy.deepcopy(model), "int8")
    with tempfile.TemporaryDirectory() as tmp:
        f32, q8_0 = (
            llama_cpp.Llama(
                str(write_gguf(model, tokenizer, Path(tmp) / f"{dtype}.gguf", dtype)),
                n_ctx=model.config.block_size, n_threads=torch.get_num_threads(), verbose=False,
            )
            for dtype in ("float32", "q8_0")
        )  # fmt: skip

    def llama_generate(llm) -> list[int]:
        out = []
        for token in llm.generate(prompt, temp=0.0, reset=True):
            out.append(token)
            if len(out) == tokens:
                return out

    # what fingpt-serve --backend llama.cpp decodes with: fingpt's sampler, llama.cpp's arithmetic
    loaded = LoadedModel(model, tokenizer, Card(name="bench"))
    backend = {dtype: LlamaCppModel.of(loaded, dtype) for dtype in ("float32", "int8")}
    fns = {
        "fingpt float32": lambda: generate(model, tokenizer, [prompt], greedy),
        "llama.cpp f32": lambda: llama_generate(f32),
        "--backend llama.cpp f32": lambda: generate(backend["float32"], tokenizer, [prompt], greedy),
        "fingpt int8": lambda: generate(int8, tokenizer, [prompt], greedy),
        "llama.cpp q8_0": lambda: llama_generate(q8_0),
        "--backend llama.cpp q8_0": lambda: generate(backend["int8"], tokenizer, [prompt], greedy),
    }
    ms = {name: sorted(1e3 * t / tokens for t in times) for name, times in runs(fns, repeats).items()}
    (completion,) = generate(model, tokenizer, [prompt], greedy)
    same = completion.tokens == llama_generate(f32)
    f32.close(), q8_0.close()
    return ms, same


if __name__ == "__main__":
    main()
