"""Optimizers and learning-rate schedules: what `conf/optimizer/` and `conf/scheduler/` build.

An optimizer config is a factory that takes the model (`_partial_: true`), since which tensors
get which treatment depends on the model's layers; a schedule is a callable of the step and of
the fraction of the training budget spent (steps or wall time, whichever runs out first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn


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
    adamw_lr: float = 3e-3,
    betas: Sequence[float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.0,
    eps: float = 1e-8,
    fused: bool = False,
) -> MuonAdamW:
    """torch.optim.Muon (lr, momentum, weight_decay, adjust_lr_fn) for the blocks' matrices;
    AdamW (adamw_lr, betas, adamw_weight_decay on embeddings, eps, fused) for the rest."""
    groups = parameter_groups(model)
    return MuonAdamW(
        muon_groups=[{"params": groups["matrices"]}],
        adamw_groups=[
            {"params": groups["embeddings"], "weight_decay": adamw_weight_decay},
            {"params": groups["vectors"], "weight_decay": 0.0},
        ],
        muon={"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "adjust_lr_fn": adjust_lr_fn},
        adamw={"lr": adamw_lr, "betas": tuple(betas), "eps": eps, "fused": fused},
    )


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW as one optimizer, since Lightning's automatic
    optimization (clipping, accumulation, schedulers, checkpoints) drives exactly one.

    The two share this optimizer's parameter groups (Muon's first) and state, so a scheduler
    that sets the groups' learning rates sets theirs, and `state_dict` holds both.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict) -> None:
        self.muon = torch.optim.Muon(muon_groups, **muon)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # builds new group dicts: share them again
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
