"""What fingpt-serve is started with: its settings, and the command line that sets them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from fingpt.devices import DTYPES
from serving.protocol import Limits


@dataclass
class Settings:
    model: str
    backend: str = "fingpt"  # or llama.cpp: the model computed by llama.cpp (serving/llama_backend.py)
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, else the bundle's own dtype
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_batch_size: int = 16
    max_queue: int = 64
    timeout: float = 120.0  # seconds a request may take, start to end
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8000


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="fingpt-serve", description="Serve a fingpt bundle over HTTP (OpenAI-style completions)."
    )
    parser.add_argument("--model", default="models/latest", help="a bundle folder (or a checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--backend",
        default="fingpt",
        choices=["fingpt", "llama.cpp"],
        help="what computes the model: fingpt's PyTorch, or llama.cpp on its GGUF export (CPU; "
        "rotary layouts; 3-5x the tokens/s of one stream, bench/serve.py)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and cache; auto: bfloat16 on CUDA, else the bundle's; int8: weight-only int8 "
        "linear layers on a CPU (one stream decodes 2-3x faster than in float32, bench/serve.py)",
    )
    parser.add_argument("--api-key", default=os.environ.get("FINGPT_API_KEY"), help="or FINGPT_API_KEY")
    parser.add_argument("--cors-origin", action="append", default=[], help="an origin allowed by CORS")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=2048, help="cap on max_tokens per request")
    parser.add_argument("--max-n", type=int, default=8, help="cap on n per request")
    parser.add_argument(
        "--max-score-positions",
        type=int,
        default=Limits.max_score_positions,
        help="cap on the token positions (windows x context) one request's scoring may compute",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        parser.error(f"--model {args.model} does not exist: train and export one first (make demo)")
    if args.backend == "llama.cpp" and args.device not in ("auto", "cpu"):
        parser.error(f"--backend llama.cpp runs on the CPU here: drop --device {args.device}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0-65535, got {args.port}")
    for name in ("max_batch_size", "max_queue", "max_tokens", "max_n", "max_score_positions", "timeout"):
        if not getattr(args, name) > 0:  # nan too
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return Settings(
        model=args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        api_key=args.api_key or None,
        cors_origins=args.cors_origin,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        timeout=args.timeout,
        limits=Limits(
            max_tokens=args.max_tokens, max_n=args.max_n, max_score_positions=args.max_score_positions
        ),
        host=args.host,
        port=args.port,
    )
