"""Optimizers and learning-rate schedules: what `conf/optimizer/` and `conf/scheduler/` build.

An optimizer config is a factory that takes the model (`_partial_: true`), since which tensors
get which treatment depends on the model's layers; a schedule is a callable of the step and of
the fraction of the training budget spent (steps or wall time, whichever runs out first).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from fingpt.devices import native_bfloat16


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role, each once (a tied head is the token embedding):

    - `matrices`: the weights of the Linear layers inside the blocks (what Muon orthogonalises);
    - `embeddings`: the token and position tables, and the LM head when it is untied;
    - `vectors`: norms' weights and biases.

    Chosen by layer, not by shape: FSDP has flattened the parameters it shards by then.
    """
    matrices = {id(m.weight) for m in model.blocks.modules() if isinstance(m, nn.Linear)}
    tables = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    groups = {"matrices": [], "embeddings": [], "vectors": []}
    for p in model.parameters():
        role = "matrices" if id(p) in matrices else "embeddings" if id(p) in tables else "vectors"
        groups[role].append(p)
    return groups


def adamw(
    model: nn.Module,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.95),
    weight_decay: float = 0.1,
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW for every parameter; weight decay on matrices and embeddings, not on vectors."""
    groups = parameter_groups(model)
    return torch.optim.AdamW(
        [
            {"params": groups["matrices"] + groups["embeddings"], "weight_decay": weight_decay},
            {"params": groups["vectors"], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        fused=fused,
    )


def muon(
    model: nn.Module,
    lr: float = 0.02,
    momentum: float = 0.95,
    weight_decay: float = 0.0,
    adjust_lr_fn: str = "original",
    orthogonalizer: str = "newton_schulz",
    ns_dtype: str = "auto",
    adamw_lr: float = 3e-3,
    betas: Sequence[float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.0,
    eps: float = 1e-8,
    fused: bool = False,
) -> MuonAdamW:
    """Muon (lr, momentum, weight_decay, adjust_lr_fn, orthogonalizer, ns_dtype) for the blocks'
    matrices; AdamW (adamw_lr, betas, adamw_weight_decay on embeddings, eps, fused) for the rest."""
    groups = parameter_groups(model)
    return MuonAdamW(
        muon_groups=[{"params": groups["matrices"]}],
        adamw_groups=[
            {"params": groups["embeddings"], "weight_decay": adamw_weight_decay},
            {"params": groups["vectors"], "weight_decay": 0.0},
        ],
        muon={
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "adjust_lr_fn": adjust_lr_fn,
            "orthogonalizer": orthogonalizer,
            "ns_dtype": ns_dtype,
        },
        adamw={"lr": adamw_lr, "betas": tuple(betas), "eps": eps, "fused": fused},
    )


# (a, b, c) of each quintic step X <- a X + (b A + c A²) X, A = X Xᵀ, and the factor on the
# Frobenius norm that X starts divided by
ORTHOGONALIZERS = {
    # Keller Jordan's, the same at each of 5 steps (torch.optim.Muon's)
    "newton_schulz": (((3.4445, -4.7750, 2.0315),) * 5, 1.0),
    # Polar Express (Amsel, Persson, Musco, Gower 2025): one fitted quintic per step, with the
    # 2% safety margin of the modded-nanogpt speedrun
    "polar_express": (
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        1.02,
    ),
}


def orthogonalize(updates: torch.Tensor, orthogonalizer: str, dtype: torch.dtype) -> torch.Tensor:
    """Each of the stacked matrices `updates` (n, rows, cols) replaced by an approximation of
    U Vᵀ, where U S Vᵀ is its SVD (singular values end near 1, not at it), in `dtype`."""
    coefficients, margin = ORTHOGONALIZERS[orthogonalizer]
    x = updates.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # X Xᵀ on the short side
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * margin + 1e-7)
    for a, b, c in coefficients:
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024): SGD with Nesterov momentum whose update is orthogonalised, as
    torch.optim.Muon computes it (its `momentum_buffer` state, its `adjust_lr_fn` scalings), with
    two changes that bench/train.py measures:

    - the matrices of one shape are orthogonalised together, as one batch of matrix products;
    - in bfloat16 only where bfloat16 is native (`ns_dtype=auto`); elsewhere in float32. On an
      AVX2-only CPU torch.optim.Muon's emulated bfloat16 took 750 ms of the demo's 1,270 ms step.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        adjust_lr_fn: str = "original",
        orthogonalizer: str = "newton_schulz",
        ns_dtype: str = "auto",
    ) -> None:
        for name, value, choices in (
            ("adjust_lr_fn", adjust_lr_fn, ("original", "match_rms_adamw")),
            ("orthogonalizer", orthogonalizer, tuple(ORTHOGONALIZERS)),
            ("ns_dtype", ns_dtype, ("auto", "float32", "bfloat16")),
        ):
            if value not in choices:
                raise ValueError(f"optimizer.{name} must be one of {', '.join(choices)}, got {value!r}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
            adjust_lr_fn=adjust_lr_fn, orthogonalizer=orthogonalizer, ns_dtype=ns_dtype,
        )  # fmt: skip
        super().__init__(params, defaults)

    @staticmethod
    def lr_scale(shape: torch.Size, adjust_lr_fn: str) -> float:
        rows, cols = shape
        if adjust_lr_fn == "match_rms_adamw":  # the RMS of an AdamW update (Moonshot's Muon)
            return 0.2 * math.sqrt(max(rows, cols))
        return math.sqrt(max(1.0, rows / cols))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, buffers, group["momentum"]) if group["nesterov"] else buffers
            by_shape = defaultdict(list)
            for p, update in zip(params, updates, strict=True):
                by_shape[p.shape].append((p, update))
            for shape, pairs in by_shape.items():
                dtype = self.orthogonal_dtype(group["ns_dtype"], pairs[0][0].device)
                stacked = torch.stack([update for _, update in pairs])
                orthogonal = orthogonalize(stacked, group["orthogonalizer"], dtype)
                lr = group["lr"] * self.lr_scale(shape, group["adjust_lr_fn"])
                for (p, _), update in zip(pairs, orthogonal, strict=True):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update.to(p.dtype), alpha=-lr)
        return loss

    @staticmethod
    def orthogonal_dtype(name: str, device: torch.device) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if native_bfloat16(device.type) else torch.float32
        return getattr(torch, name)


class MuonAdamW(torch.optim.Optimizer):
    """Muon and torch.optim.AdamW as one optimizer, since Lightning's automatic optimization
    (clipping, accumulation, schedulers, checkpoints) drives exactly one.

    The two share this optimizer's parameter groups (Muon's first) and state, so a scheduler
    that sets the groups' learning rates sets theirs, and `state_dict` holds both.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict) -> None:
        self.muon = Muon(muon_groups, **muon)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # builds new group dicts: share them again
        for group in self.param_groups[: len(self.muon.param_groups)]:  # torch.optim.Muon's lack some
            for key, value in self.muon.defaults.items():
                group.setdefault(key, value)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


# --- schedules ------------------------------------------------------------------------------------


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _check(warmup_steps: int, min_lr_ratio: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


@dataclass
class WarmupCosine:
    """Linear warmup over warmup_steps, times a cosine from 1 to min_lr_ratio over the budget."""

    warmup_steps: int = 100
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        _check(self.warmup_steps, self.min_lr_ratio)

    def __call__(self, step: int, progress: float) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return _warmup(step, self.warmup_steps) * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass
class WarmupStableDecay:
    """Warmup-stable-decay (MiniCPM; the trapezoid of the modded-nanogpt speedruns): linear
    warmup over warmup_steps, the full rate, then a linear decay to min_lr_ratio over the last
    decay_fraction of the budget."""

    warmup_steps: int = 100
    decay_fraction: float = 0.3
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.warmup_steps, self.min_lr_ratio)
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"scheduler.decay_fraction must be in (0, 1], got {self.decay_fraction}")

    def __call__(self, step: int, progress: float) -> float:
        decay = min(1.0, max(0.0, (1.0 - progress) / self.decay_fraction))
        return _warmup(step, self.warmup_steps) * (self.min_lr_ratio + (1 - self.min_lr_ratio) * decay)
