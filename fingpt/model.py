"""A decoder-only GPT written from scratch, with a KV cache for decoding.

Plain PyTorch: no Lightning, no Hydra, so the server can load a model without the training stack.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256
    n_embd: int = 384
    n_head: int = 6
    n_layer: int = 6
    dropout: float = 0.2
    bias: bool = True  # biases in the linear layers and LayerNorms (the LM head's: if untied)
    qkv_bias: bool | None = None  # bias on the Q/K/V projection; None follows `bias`
    activation: str = "gelu"  # relu | gelu
    tie_weights: bool = True  # the LM head shares the token embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"pick n_embd = n_head * head size, e.g. {self.n_head * 64}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GPTConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.qkv_bias is None:
            self.qkv_bias = self.bias

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for a batch of rows, each row with its own length.

    Slot t of a row holds the token at position t of that row's context, so a row can be
    reset, refilled or left alone independently of the others (continuous batching).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=None) -> None:
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        # the token ids each row holds, to refill a row when its context slides
        self.tokens = torch.zeros(batch_size, config.block_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def context(self, row: int) -> list[int]:
        """The token ids that row `row` currently attends to, oldest first."""
        return self.tokens[row, : self.lengths[row]].tolist()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cached: tuple | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cached is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # write the new keys/values into their slots, then attend over the row's whole cache
            k_cache, v_cache, rows, slots, mask = cached  # rows: consecutive (a slice) or an index
            if isinstance(rows, slice):  # work on views of the rows: no copies
                k_cache, v_cache, rows = k_cache[rows], v_cache[rows], slice(None)
                where = (torch.arange(B, device=x.device)[:, None], slice(None), slots)
            else:
                where = (rows[:, None], slice(None), slots)
            k_cache[where] = k.transpose(1, 2)
            v_cache[where] = v.transpose(1, 2)
            if mask is None:  # a fresh prefill: the new tokens are the whole context
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                used = mask.shape[-1]
                keys, values = k_cache[rows, :, :used], v_cache[rows, :, :used]
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cached: tuple | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cached)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        # an untied head has a bias as in the original, a tied one none as in GPT-2
        head_bias = config.bias and not config.tie_weights
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=head_bias)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Trainable parameters; a tied LM head is counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); loss when targets are given (-100 ignored)."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds block_size {self.config.block_size}: "
                "crop the input, or decode with a KVCache, which slides the context"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    # --- decoding with a KV cache -------------------------------------------------------------

    def new_cache(self, batch_size: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype)

    def _forward_cached(self, idx: torch.Tensor, cache: KVCache, rows: torch.Tensor) -> torch.Tensor:
        """Append idx (R, T) to the contexts of cache rows `rows`; return logits (R, T, V)."""
        T = idx.shape[1]
        slots = cache.lengths[rows, None] + torch.arange(T, device=idx.device)  # (R, T)
        # a query at slot s sees the row's slots 0..s: the cache is causal per row. Attention
        # reads only the slots in use by some row, not the whole block
        used = torch.arange(int(slots.max()) + 1, device=idx.device)
        mask = (used[None, None, :] <= slots[:, :, None]).unsqueeze(1)  # (R, 1, T, S)
        if T > 1 and not cache.lengths[rows].any():
            mask = None  # every row starts empty: plain causal attention, the fast kernels
        x = self.drop(self.wte(idx) + self.wpe(slots))
        first = int(rows[0])
        consecutive = torch.equal(rows, torch.arange(first, first + len(rows), device=rows.device))
        layer_rows = slice(first, first + len(rows)) if consecutive else rows
        for i, block in enumerate(self.blocks):
            x = block(x, (cache.k[i], cache.v[i], layer_rows, slots, mask))
        cache.tokens[rows[:, None], slots] = idx
        cache.lengths[rows] += T
        return self.lm_head(self.ln_f(x))

    def prefill(self, cache: KVCache, rows: torch.Tensor, prompts: list[list[int]]) -> torch.Tensor:
        """Reset `rows` to the given prompts (of any lengths); return next-token logits (R, V).

        A prompt longer than block_size keeps only its last block_size tokens.
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one token per prompt")
        block = self.config.block_size
        prompts = [list(p[-block:]) for p in prompts]
        lengths = torch.tensor([len(p) for p in prompts], device=cache.lengths.device)
        idx = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=lengths.device)
        for i, p in enumerate(prompts):  # right padding: causal attention never looks at it
            idx[i, : len(p)] = torch.tensor(p)
        cache.lengths[rows] = 0
        logits = self._forward_cached(idx, cache, rows)
        cache.lengths[rows] = lengths  # the padding's slots are overwritten by the next tokens
        return logits[torch.arange(len(prompts), device=idx.device), lengths - 1]

    def decode(self, cache: KVCache, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to each of `rows`; return next-token logits (R, V).

        A full row (block_size tokens) slides: it drops its oldest block_size // 4 tokens (at
        least one) and is refilled from the tokens it keeps, since learned positions make the
        cached keys of a shifted context invalid. Sliding in chunks costs a refill every
        block_size // 4 steps instead of a full recomputation at every step.
        """
        block = self.config.block_size
        full = cache.lengths[rows] == block
        logits = torch.empty(len(rows), self.config.vocab_size, device=tokens.device)
        if (~full).any():
            step = self._forward_cached(tokens[~full, None], cache, rows[~full])
            logits[~full] = step[:, -1].to(logits.dtype)
        if full.any():
            drop = max(1, block // 4)
            kept = torch.cat([cache.tokens[rows[full], drop:], tokens[full, None]], dim=1)
            logits[full] = self.prefill(cache, rows[full], kept.tolist()).to(logits.dtype)
        return logits
