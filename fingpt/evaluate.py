"""Bits per byte of a trained model on any corpus the data stage reads.

    python -m fingpt.evaluate model=lightning_logs/RUN/checkpoints/best.ckpt \\
        data=local data.path=data/ectsum/validation.parquet
    fingpt-evaluate model=models/latest data=ectsum split=validation stride=64

Every call is tokenized with the model's own tokenizer, preceded by <|endoftext|> as in
training, and every one of its tokens is scored once: windows of block_size tokens slide by
`stride` (the last one ends at the call's end), each scoring only the tokens the previous window
did not, so all but the first block_size tokens of a call are predicted from at least
block_size - stride tokens of context.
bpb = summed negative log-likelihood / ln 2 / UTF-8 bytes of the calls.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fingpt.checkpoint import load_model
from fingpt.cli import run_hydra, user_errors
from fingpt.config import CONF_DIR
from fingpt.devices import dtype_of, resolve_device, resolve_dtype
from fingpt.errors import DataError, check_count
from fingpt.generation import continue_text
from fingpt.model import GPT
from fingpt.quantize import to_dtype
from fingpt.scoring import window_logprobs, windows
from fingpt.tokenizer import Tokenizer


@dataclass
class Score:
    bpb: float
    perplexity: float
    tokens: int
    bytes: int
    calls: int
    nll: float  # nats, summed


@torch.inference_mode()
def score(
    model: GPT,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    stride: int | None = None,
    batch_size: int = 32,
) -> Score:
    block_size = model.config.block_size
    stride = block_size // 2 if stride is None else stride
    if not isinstance(stride, int) or not 0 < stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    check_count("batch_size", batch_size)
    counted = {"calls": 0, "bytes": 0}

    def every_window() -> Iterator[tuple[list[int], list[int]]]:
        for text in texts:
            counted["calls"] += 1
            counted["bytes"] += len(text.encode("utf-8"))
            yield from windows([tokenizer.eot_id, *tokenizer.encode(text)], block_size, stride)

    nll, tokens = 0.0, 0
    for logprobs, new in window_logprobs(model, every_window(), batch_size):
        nll = nll - logprobs.gather(-1, new[:, None]).sum().double()  # stays on the device
        tokens += len(new)
    calls, n_bytes, nll = counted["calls"], counted["bytes"], float(nll)
    if calls == 0 or n_bytes == 0:
        raise DataError("the corpus has no text to score: check data.path and split")
    return Score(nll / math.log(2) / n_bytes, math.exp(nll / tokens), tokens, n_bytes, calls, nll)


def evaluate(cfg: DictConfig) -> Score:
    from fingpt.data.corpus import Corpus

    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model_path, device=device)
    to_dtype(loaded.model, resolve_dtype(cfg.dtype, device, own=dtype_of(loaded.model)))
    texts = Corpus(cfg.data).texts(cfg.split)
    result = score(loaded.model, loaded.tokenizer, texts, cfg.stride, cfg.batch_size)
    unknown = getattr(loaded.tokenizer, "unknown", None)
    if unknown:
        print(f"{sum(unknown.values())} characters unknown to the tokenizer were scored as one id")
    completion = continue_text(loaded.model, loaded.tokenizer, cfg.sample)
    if completion is not None:
        print(f"sample: {cfg.sample.prompt}{completion}")
    return result


def main() -> None:
    """fingpt-evaluate model_path=PATH [Hydra overrides]. `model=PATH` works too: training configs
    use `model` for the group of model sizes, so here it is rewritten before Hydra reads it."""
    import hydra
    from omegaconf import OmegaConf

    sys.argv = [re.sub(r"^model=", "model_path=", arg) for arg in sys.argv]

    @hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        with user_errors():
            if OmegaConf.is_missing(cfg, "model_path"):
                raise ValueError("which model? add model=PATH (a bundle, a run folder or a .ckpt)")
            result = evaluate(cfg)
        print(
            f"bpb {result.bpb:.4f}  perplexity {result.perplexity:.2f}  tokens {result.tokens:,}  "
            f"bytes {result.bytes:,}  calls {result.calls:,}"
        )

    run_hydra(run)


if __name__ == "__main__":
    main()
