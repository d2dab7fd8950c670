"""The LM head's loss without its logits: the linear layer and the cross-entropy taken together,
chunk by chunk of rows. `linear_cross_entropy` is the front door; `GPT.forward` calls it.

Plain PyTorch, like the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `targets` (N,) (-100 ignored) under the logits `h @ weight.T + bias`
    of h (N, width), capped as softcap * tanh(logits / softcap) if softcap is given."""
    vocab_size, width = weight.shape
    chunk = loss_chunk_rows(vocab_size, width, h.device)
    return LinearCrossEntropy.apply(h, weight, bias, targets, softcap, chunk, torch.is_grad_enabled())


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `targets` (N,) under the logits `h @ weight.T + bias` (capped by
    `softcap` if given), without ever holding all (N, V) logits: rows go through in chunks, and
    when gradients are needed each chunk's gradient (softmax minus one-hot) is taken on the spot.
    On a CPU a chunk stays in cache (bench/train.py: 1.6x the tokens/s of F.cross_entropy over
    full logits at width 128, 1.05-1.2x at 384); on a GPU it saves the logits' memory. Targets
    of -100 are ignored."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, chunk, grad_enabled):
        need_grad = grad_enabled and any(ctx.needs_input_grad[:3])  # not under no_grad
        valid = targets != -100
        count = valid.sum().clamp(min=1)
        scale = valid / count  # each scored token's weight in the mean
        total = h.new_zeros((), dtype=torch.float32)
        dh = torch.empty_like(h) if need_grad else None
        dw = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        db = torch.zeros(weight.shape[0], device=h.device) if need_grad and bias is not None else None
        for start in range(0, h.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(h[rows], weight, bias).float()
            if softcap is not None:
                capped = torch.tanh(logits / softcap)
                logits = softcap * capped
            target = targets[rows].clamp(min=0)[:, None]
            picked = logits.gather(1, target).squeeze(1)
            if not need_grad:
                total += ((torch.logsumexp(logits, dim=-1) - picked) * scale[rows]).sum()
                continue
            # one exp for both the loss and its gradient: softmax = exp(logits - max) / its sum
            top = logits.amax(dim=-1, keepdim=True)
            grad = logits.sub_(top).exp_()  # in place of the logits
            sums = grad.sum(dim=-1, keepdim=True)
            total += ((top + sums.log()).squeeze(1) - picked).mul(scale[rows]).sum()
            grad /= sums
            grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))
            grad *= scale[rows, None]
            if softcap is not None:
                grad *= 1 - capped.square()
            grad = grad.to(h.dtype)
            dh[rows] = grad @ weight.to(h.dtype)
            # in place and in float32: one pass over dw per chunk, no temporary
            dw.addmm_(grad.t().to(dw.dtype), h[rows].to(dw.dtype))
            if db is not None:
                db += grad.sum(0)
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(dh, dw, db)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        dh, dw, db = ctx.saved_tensors
        dw, db = ((None if g is None else (g * grad_output).to(ctx.weight_dtype)) for g in (dw, db))
        return dh * grad_output, dw, db, None, None, None, None


def loss_chunk_rows(vocab_size: int, n_embd: int, device: torch.device) -> int:
    """Rows of logits per chunk. On an accelerator, 1 GB of them. On a CPU, 8 MB (a part of its
    last-level cache: at the demo's 128 x 8192, 256 rows took 0.7x the time of 64 and 0.9x that
    of 512), or half the width when that is more: each chunk's update of the weight's gradient
    passes over all of it (vocabulary x width), so a wider model amortises that pass over more
    rows."""
    if device.type != "cpu":
        return max(16, 2**30 // (4 * vocab_size))
    return max(16, 2**23 // (4 * vocab_size), n_embd // 2)
