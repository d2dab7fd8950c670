"""A decoder-only GPT written from scratch: training's loss, and decoding with a KV cache.

`GPTConfig` picks the layout: GPT-2's by default (learned positions, LayerNorm, a 4x GELU MLP),
or the pieces later models replaced them with (rotary positions, RMSNorm, normalised queries and
keys, ReLU² or SwiGLU MLPs, zero-initialised output projections, capped logits).

The KV cache lives in kv_cache.py, the chunked loss of the LM head in loss.py. Plain PyTorch: no
Lightning, no Hydra, so the server can load a model without the training stack.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fingpt.kv_cache import KVCache, LayerCache
from fingpt.loss import linear_cross_entropy

CHOICES = {
    "pos_emb": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "relu", "relu2", "swiglu"),
}
NORM_EPS = 1e-5


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
    mlp: str = "gelu"  # gelu | relu | relu2 (4x hidden, that nonlinearity) | swiglu (gated, ~8/3 x)
    tie_weights: bool = True  # the LM head shares the token embedding matrix
    pos_emb: str = "learned"  # learned (a table of block_size vectors) | rope (rotary, RoFormer)
    rope_base: float = 10000.0  # rotary wavelengths: 2 pi x rope_base ** (2i / head_size)
    norm: str = "layernorm"  # layernorm | rmsnorm
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    zero_init_proj: bool = False  # projections into the residual stream start at zero
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    activation: str | None = None  # the earlier name of `mlp` (relu | gelu): old configs load

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
        if self.activation is not None:
            if self.mlp not in ("gelu", self.activation):  # "gelu" is mlp's default: take activation's
                raise ValueError(
                    f"GPTConfig.activation ({self.activation!r}) and mlp ({self.mlp!r}) disagree: "
                    "activation is the old name of mlp, set only mlp"
                )
            self.mlp, self.activation = self.activation, None
        for name, options in CHOICES.items():
            if (value := getattr(self, name)) not in options:
                raise ValueError(f"GPTConfig.{name} must be one of {list(options)}, got {value!r}")
        if self.pos_emb == "rope" and self.head_size % 2:
            raise ValueError(f"GPTConfig.pos_emb=rope needs an even head size, got {self.head_size}")
        if not self.rope_base > 0:
            raise ValueError(f"GPTConfig.rope_base must be positive, got {self.rope_base!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"GPTConfig.logit_softcap must be positive or null, got {self.logit_softcap!r}")
        if self.qkv_bias is None:
            self.qkv_bias = self.bias

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """4 n_embd; for SwiGLU, which has three matrices instead of two, 2/3 of that rounded to a
        multiple of 16, so both MLPs have the same parameters (within 2% from n_embd = 128 up)."""
        if self.mlp == "swiglu":
            return 16 * max(1, round(8 * self.n_embd / 3 / 16))
        return 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


def rotary(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles of `positions` (...), shaped (..., 1, head_size) to
    broadcast over the heads of (..., n_head, head_size). Angles are computed in float64, so
    positions far past the block (a sliding KV cache) rotate as exactly as the first ones."""
    even = torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float64)
    inv_freq = base ** -(even / head_size)
    angles = positions.to(torch.float64)[..., None, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + d/2]) of the last dimension by its angle (Llama's layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


def norm_layer(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_size
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # one RMSNorm over the head size for queries and one for keys, shared by the heads (Qwen3)
        self.q_norm = nn.RMSNorm(config.head_size, eps=NORM_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_size, eps=NORM_EPS) if config.qk_norm else None

    def forward(
        self, x: torch.Tensor, rope: tuple | None = None, cache: LayerCache | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_size).unbind(2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_size)
        if cache is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            keys, values = cache.update(k, v)
            y = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=cache.mask, is_causal=not cache.used
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        gated = 2 if config.mlp == "swiglu" else 1  # SwiGLU: gate and value in one matrix
        self.c_fc = nn.Linear(config.n_embd, gated * hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu":
            h = F.relu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:  # swiglu
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple | None = None, cache: LayerCache | None = None):
        x = x + self.attn(self.ln_1(x), rope, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm_layer(config)
        # tied: no bias, as in GPT-2; untied: a bias, as in Karpathy's char-level lecture model
        head_bias = config.bias and not config.tie_weights
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=head_bias)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

        self.apply(self._init_weights)
        # the projections that write into the residual stream: GPT-2 scales them by
        # 1/sqrt(2 n_layer); zero_init_proj starts them at zero, so each block starts as the identity
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def num_parameters(self) -> int:
        """Trainable parameters; a tied LM head is counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, None) for every position of idx (B, T); with targets (-100 ignored),
        (None, loss): the loss is taken chunk by chunk without building the logits."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds block_size {self.config.block_size}: "
                "crop the input, or decode with a KVCache, which slides the context"
            )
        x, rope = self._embed(idx, torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x, rope)
        x = self.ln_f(x)
        if targets is None:
            return self._logits(x), None
        h, cap = x.flatten(0, 1), self.config.logit_softcap
        return None, linear_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, targets.flatten(), cap)

    def _embed(self, idx: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Token embeddings at `positions`: plus learned position vectors, or with the rotary
        tables the attention layers apply to queries and keys."""
        x = self.wte(idx)
        if self.wpe is not None:
            return self.drop(x + self.wpe(positions)), None
        return self.drop(x), rotary(positions, self.config.head_size, self.config.rope_base)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    # --- decoding with a KV cache -------------------------------------------------------------

    def new_cache(self, batch_size: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, device=p.device, dtype=p.dtype)

    def _forward_cached(self, idx: torch.Tensor, cache: KVCache, rows: torch.Tensor) -> torch.Tensor:
        """Append idx (R, T) to the contexts of cache rows `rows`; return logits (R, T, V)."""
        plan = cache.plan(rows, idx.shape[1])
        x, rope = self._embed(idx, plan.positions)
        for block, layer_cache in zip(self.blocks, plan.layers, strict=True):
            x = block(x, rope, layer_cache)
        cache.record(plan, idx)
        return self._logits(self.ln_f(x))

    def prefill(self, cache: KVCache, rows: torch.Tensor, prompts: list[list[int]]) -> torch.Tensor:
        """Reset `rows` to the given prompts (of any lengths); return next-token logits (R, V).

        A prompt longer than block_size keeps only its last block_size tokens.
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one token per prompt")
        prompts = [torch.tensor(p[-self.config.block_size :]) for p in prompts]
        lengths = torch.tensor([len(p) for p in prompts], device=cache.lengths.device)
        # right padding: causal attention never looks at it
        idx = nn.utils.rnn.pad_sequence(prompts, batch_first=True).to(lengths.device)
        cache.lengths[rows] = cache.positions[rows] = 0
        logits = self._forward_cached(idx, cache, rows)
        cache.lengths[rows] = cache.positions[rows] = lengths  # padding slots: overwritten next
        return logits[torch.arange(len(prompts), device=idx.device), lengths - 1]

    def decode(self, cache: KVCache, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token to each of `rows`; return next-token logits (R, V).

        A full row (block_size tokens) slides. With rotary positions it drops its oldest token at
        every step for free. With learned positions the cached keys of a shifted context are
        invalid, so it drops its oldest block_size // 4 tokens (at least one) and is refilled from
        the rest: a refill every block_size // 4 steps, not a full recomputation at every step.
        """
        block_size = self.config.block_size
        if self.wpe is None or not (full := cache.lengths[rows] == block_size).any():
            return self._forward_cached(tokens[:, None], cache, rows)[:, -1].float()
        logits = torch.empty(len(rows), self.config.vocab_size, device=tokens.device)
        if (~full).any():
            step = self._forward_cached(tokens[~full, None], cache, rows[~full])
            logits[~full] = step[:, -1].to(logits.dtype)
        drop = max(1, block_size // 4)
        context = [cache.context(int(r))[drop:] for r in rows[full]]
        kept = [c + [t] for c, t in zip(context, tokens[full].tolist(), strict=True)]
        logits[full] = self.prefill(cache, rows[full], kept).to(logits.dtype)
        return logits
