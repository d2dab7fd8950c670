"""Score a call through the API, as the page's "Score a call" does: time for one long call.

    python bench/score.py --model models/demo [--tokens 20000] [--repeats 3]

Joins real calls of ectsum/validation.parquet ($FINGPT_DATA_DIR) until the text holds --tokens
tokens, starts the server on the bundle in this process, and times `Client.score` (one POST to
/v1/completions with echo, logprobs 5, max_tokens 0 and score_stride half the context) plus
ui.score's per-token and per-sentence tables, best and slowest of --repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import pyarrow.parquet as pq

    from fingpt.checkpoint import load_model
    from serving.testing import serve
    from ui.client import Client
    from ui.score import bits_per_byte, scores_csv, sentences, shaded_html, tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    loaded = load_model(args.model)
    data = Path(os.environ.get("FINGPT_DATA_DIR", ROOT / "data"))  # fingpt-data download ectsum
    calls = pq.read_table(data / "ectsum" / "validation.parquet", columns=["content"])["content"]
    text = ""
    for call in calls:
        text += call.as_py() + "\n"
        if len(loaded.tokenizer.encode(text)) >= args.tokens:
            break
    n_tokens = len(loaded.tokenizer.encode(text))
    context = loaded.model.config.block_size
    print(f"{args.model}: context {context}; the call: {n_tokens:,} tokens, {len(text.encode()):,} bytes")
    with serve(args.model) as server:
        client, times = Client(server.url), []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scored = tokens(client.score(text, context // 2))
            sentences(scored, text), shaded_html(scored), scores_csv(scored)
            times.append(time.perf_counter() - start)
    print(
        f"scored in {min(times):.2f} s (slowest {max(times):.2f} s of {args.repeats}), "
        f"{n_tokens / min(times):,.0f} tokens/s, {bits_per_byte(scored, text):.4f} bits per byte"
    )


if __name__ == "__main__":
    main()
