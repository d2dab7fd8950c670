"""`fingpt-serve --backend llama.cpp`: the bundle's model computed by llama.cpp, behind fingpt's
own sampler, engine and API.

`LlamaCppModel` offers what the sampler and the scoring use of a `GPT` (`config`, `device`,
`new_cache`, `prefill`, `decode`, and a forward over windows), computed by llama.cpp on the
bundle's GGUF export (fingpt/gguf_export.py), written at start-up: float32 as f32, int8 as q8_0,
bfloat16 and float16 as themselves. Each row of the engine's batch is one sequence of one
llama.cpp context, its cache the model's context long (float32 for float32, else llama.cpp's
float16); a full row slides as fingpt's
rotary cache does (its oldest token goes, the rest keep their relative positions). Sampling,
seeds, logprobs, stop strings and the whole HTTP contract stay fingpt's.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from fingpt.checkpoint import LoadedModel
from fingpt.gguf_export import write_gguf
from fingpt.model import GPTConfig

GGUF_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int8": "q8_0"}


class LlamaCppModel:
    """A fingpt model as llama.cpp runs it, with the interface of fingpt.model.GPT's inference."""

    device = torch.device("cpu")

    def __init__(self, path: Path, config: GPTConfig, exact: bool, threads: int | None = None) -> None:
        """llama.cpp on the GGUF file `path` of a model of `config`. `exact`: a float32 cache, as
        fingpt's (llama.cpp's flash attention is slow on one); else llama.cpp's default float16
        cache and flash attention, 2.5x faster."""
        try:
            import llama_cpp
        except ImportError as e:
            raise ValueError(
                "--backend llama.cpp needs llama-cpp-python: pip install 'fingpt[llama]' "
                "(it builds llama.cpp from source, about 7 minutes on 2 cores)"
            ) from e

        self.llama_cpp, self.config, self.exact = llama_cpp, config, exact
        self.threads = threads or torch.get_num_threads()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = False  # read whole: the file may be a temporary one
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log of llama.cpp's
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {path}")
        weakref.finalize(self, llama_cpp.llama_model_free, self.model)
        self.scoring = self.new_cache(1)  # the windows of echo with logprobs: one at a time
        self.scoring_lock = threading.Lock()  # requests score in the server's thread pool

    @classmethod
    def of(cls, loaded: LoadedModel, dtype: str, threads: int | None = None) -> LlamaCppModel:
        """`loaded` in `dtype` as llama.cpp runs it, from its GGUF export (int8 as q8_0)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = write_gguf(loaded.model, loaded.tokenizer, Path(tmp) / "model.gguf", GGUF_DTYPE[dtype])
            return cls(path, loaded.model.config, exact=dtype == "float32", threads=threads)

    def eval(self) -> LlamaCppModel:
        return self

    def new_cache(self, batch_size: int) -> LlamaCppCache:
        return LlamaCppCache(self, batch_size)

    def prefill(self, cache: LlamaCppCache, rows: torch.Tensor, prompts: list[list[int]]) -> torch.Tensor:
        """Reset `rows` to the given prompts (their last block_size tokens); next-token logits (R, V)."""
        batch, last = [], []
        for row, prompt in zip(rows.tolist(), prompts, strict=True):
            cache.clear(row)
            prompt = prompt[-self.config.block_size :]
            final = len(prompt) - 1
            batch += [(token, position, row, position == final) for position, token in enumerate(prompt)]
            last.append(len(batch) - 1)
            cache.lengths[row] = len(prompt)
        return cache.run(batch, last)

    def decode(self, cache: LlamaCppCache, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to each of `rows`; next-token logits (R, V). A full row slides."""
        batch = []
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            if cache.lengths[row] == self.config.block_size:
                cache.drop_oldest(row)
            batch.append((token, cache.lengths[row], row, True))
            cache.lengths[row] += 1
        return cache.run(batch, list(range(len(batch))))

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(logits (B, T, V), None) for every position of each row of idx, as GPT.forward."""
        out = []
        with self.scoring_lock:
            for window in idx.tolist():
                self.scoring.clear(0)
                batch = [(token, position, 0, True) for position, token in enumerate(window)]
                out.append(self.scoring.run(batch, list(range(len(window)))))
        return torch.stack(out), None


class LlamaCppCache:
    """One llama.cpp context of `batch_size` sequences of the model's context each: the rows."""

    def __init__(self, model: LlamaCppModel, batch_size: int) -> None:
        llama_cpp, block_size = model.llama_cpp, model.config.block_size
        self.llama_cpp, self.vocab_size = llama_cpp, model.config.vocab_size
        self.model = model  # freed after its contexts
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = block_size * batch_size
        params.n_seq_max = batch_size
        params.n_threads = params.n_threads_batch = model.threads
        if model.exact:
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise ValueError(f"llama.cpp could not make a context of {batch_size} x {block_size} tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        weakref.finalize(self, llama_cpp.llama_free, self.ctx)
        weakref.finalize(self, llama_cpp.llama_batch_free, self.batch)
        self.lengths = [0] * batch_size

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def clear(self, row: int) -> None:
        self.llama_cpp.llama_memory_seq_rm(self.memory, row, -1, -1)
        self.lengths[row] = 0

    def drop_oldest(self, row: int) -> None:
        """The oldest token of `row` goes and the others move one position down: llama.cpp
        turns their cached keys by one rotary step, so relative positions stay as they were."""
        self.llama_cpp.llama_memory_seq_rm(self.memory, row, 0, 1)
        self.llama_cpp.llama_memory_seq_add(self.memory, row, 1, -1, -1)
        self.lengths[row] -= 1

    def run(self, tokens: list[tuple[int, int, int, bool]], outputs: list[int]) -> torch.Tensor:
        """Decode (token, position, row, wants logits) in one llama.cpp batch; the logits of the
        entries at `outputs`, float32 (len(outputs), V)."""
        batch = self.batch
        for i, (token, position, row, logits) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = row, logits
        batch.n_tokens = len(tokens)
        if (status := self.llama_cpp.llama_decode(self.ctx, batch)) != 0:
            raise RuntimeError(f"llama.cpp could not decode the batch (llama_decode returned {status})")
        rows = [
            np.ctypeslib.as_array(self.llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.vocab_size,))
            for i in outputs
        ]
        return torch.from_numpy(np.stack(rows))  # a copy: llama.cpp reuses its buffer
