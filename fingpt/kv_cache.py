"""The KV cache for decoding: the keys and values of every layer for a batch of rows, and the plan
of one cached forward (where its new tokens go, which cached slots each of them sees).

Plain PyTorch, like the model it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fingpt.model import GPTConfig


class KVCache:
    """Keys and values of every layer for a batch of rows, each row with its own length.

    A row holds at most block_size tokens. Its token at position p (counted from the start of the
    row's current context) lives in slot p % block_size, so with rotary positions a full row
    slides one token per step by overwriting its oldest slot (attention is relative, so the other
    cached keys stay valid). Learned positions cannot slide that way: the model refills the row.
    Rows are reset, refilled or left alone independently of each other (continuous batching).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=None) -> None:
        self.block_size = config.block_size
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # slots in use
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)  # of the next token
        self.tokens = torch.zeros(batch_size, config.block_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def context(self, row: int) -> list[int]:
        """The token ids that row `row` currently attends to, oldest first."""
        length, oldest = int(self.lengths[row]), int(self.positions[row] - self.lengths[row])
        slots = (oldest + torch.arange(length)) % self.block_size
        return self.tokens[row, slots.to(self.tokens.device)].tolist()

    def plan(self, rows: torch.Tensor, T: int) -> Plan:
        """The plan of a forward that appends T tokens to each of `rows` (R,).

        Several tokens per row only into rows that have room for them; one token per row always
        (with rotary positions a full row overwrites its oldest slot). The mask is built once
        for all layers, and only when some query must not see some slot in play."""
        device = self.positions.device
        positions = self.positions[rows, None] + torch.arange(T, device=device)  # (R, T)
        first, last = (int(p) for p in positions.aminmax())
        if T > 1 and last >= self.block_size:
            raise ValueError(f"{T} tokens do not fit in the cache rows: feed them one at a time")
        slots = positions % self.block_size
        if T > 1 and not self.lengths[rows].any():
            used, mask = 0, None  # every row starts empty: plain causal attention, the fast kernels
        else:
            # attention reads only the slots in use by some row, not the whole block. A query at
            # position p sees the row's slots up to p: all of them once the row has wrapped, and
            # all of those in use when every row is as long as the longest (one stream, say)
            used, mask = min(self.block_size, last + 1), None
            if first < used - 1:
                seen = torch.arange(used, device=device) <= positions[:, :, None]  # (R, T, S)
                mask = torch.zeros(seen.shape, dtype=self.k.dtype, device=device)
                mask = mask.masked_fill_(~seen, float("-inf")).unsqueeze(1)
        return Plan(rows, positions, slots, self._layers(rows, slots, used, mask))

    def _layers(
        self, rows: torch.Tensor, slots: torch.Tensor, used: int, mask: torch.Tensor | None
    ) -> list[LayerCache]:
        """Each layer's part of one cached forward over `rows`, whose new tokens go to `slots` (R, T)."""
        first = int(rows[0])
        if torch.equal(rows, torch.arange(first, first + len(rows), device=rows.device)):
            # neighbouring rows: work on views of them, no copies
            k, v = self.k[:, first : first + len(rows)], self.v[:, first : first + len(rows)]
            where = (torch.arange(len(rows), device=rows.device)[:, None], slice(None), slots)
            rows = None
        else:
            k, v, where = self.k, self.v, (rows[:, None], slice(None), slots)
        return [LayerCache(k[i], v[i], where, rows, used, mask) for i in range(len(k))]

    def record(self, plan: Plan, idx: torch.Tensor) -> None:
        """After the layers stored their keys and values: the planned rows now hold tokens idx (R, T)."""
        rows, T = plan.rows, idx.shape[1]
        self.tokens[rows[:, None], plan.slots] = idx
        self.positions[rows] += T
        self.lengths[rows] = torch.clamp(self.lengths[rows] + T, max=self.block_size)


@dataclass
class Plan:
    """One cached forward: the new tokens' positions (for the embeddings) and slots, and the part
    of the cache each layer works on."""

    rows: torch.Tensor  # (R,): the cache rows the tokens are appended to
    positions: torch.Tensor  # (R, T)
    slots: torch.Tensor  # (R, T): positions % block_size
    layers: list[LayerCache]


@dataclass
class LayerCache:
    """What one attention layer needs to decode with the cache: where to store the new keys and
    values, and which cached slots each new query may see."""

    k: torch.Tensor  # (rows, n_head, block_size, head_size)
    v: torch.Tensor
    where: tuple  # the new tokens' places in k and v: (row (R, 1), all heads, slot (R, T))
    rows: torch.Tensor | None  # (R,): the rows of k and v in play; None: all of them, in order
    used: int  # the new tokens attend to slots 0..used-1; 0: to themselves only, causally
    mask: torch.Tensor | None  # (R, 1, T, used), added to the scores (-inf: unseen); None: all seen

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values (R, n_head, T, head_size); return those to attend to."""
        self.k[self.where] = k.transpose(1, 2)
        self.v[self.where] = v.transpose(1, 2)
        if not self.used:
            return k, v
        if self.rows is None:
            return self.k[:, :, : self.used], self.v[:, :, : self.used]
        return self.k[self.rows, :, : self.used], self.v[self.rows, :, : self.used]
