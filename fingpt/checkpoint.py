"""The one place that turns a saved model into a `GPT` and its tokenizer.

Reads an exported bundle (safetensors + JSON, see `fingpt.export`) or a Lightning `.ckpt`
(tensors and plain values only: `weights_only=True`). Imports neither Lightning nor Hydra, so
evaluation, export and the server share it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from fingpt.files import sha256
from fingpt.model import GPT, GPTConfig
from fingpt.tokenizer import Tokenizer, tokenizer_from_json

BUNDLE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "card.json")


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    info: dict = field(default_factory=dict)  # val_bpb, steps, tokens_seen, data, ...


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A bundle folder, a `.ckpt` file, or a run folder (its best checkpoint, else its last)."""
    path = Path(path)
    if (path / "card.json").exists() or (path / "model.safetensors").exists():
        loaded = load_bundle(path)
    else:
        if path.is_dir():
            path = run_checkpoint(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: pass a bundle, a run folder or a .ckpt")
        loaded = load_checkpoint(path)
    loaded.model.to(device).eval()
    return loaded


def run_checkpoint(run: Path) -> Path:
    """A run folder's best checkpoint: the lowest val/bpb in a best-*.ckpt name (a resumed run
    can hold several), else the newest best-*.ckpt, else last.ckpt."""
    best = list(run.glob("checkpoints/best-*.ckpt"))
    scored = [(float(m[1]), p) for p in best if (m := re.search(r"bpb(\d+(?:\.\d+)?)", p.name))]
    if scored:
        return min(scored)[1]
    found = sorted(best, key=lambda p: p.stat().st_mtime) or list(run.glob("checkpoints/last.ckpt"))
    if not found:
        raise FileNotFoundError(f"{run} is neither a bundle nor a run folder with checkpoints/*.ckpt")
    return found[-1]


def load_bundle(folder: Path) -> LoadedModel:
    """Refuses a bundle with a missing or altered file, naming it."""
    for name in BUNDLE_FILES:
        if not (folder / name).is_file():
            raise ValueError(f"bundle {folder} is missing {name}: export it again (fingpt-export)")
    try:
        card = json.loads((folder / "card.json").read_text())
        checksums = card["sha256"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"bundle {folder}: card.json is corrupt ({e}): export it again") from e
    for name, expected in checksums.items():
        if sha256(folder / name) != expected:
            raise ValueError(f"bundle {folder}: {name} is corrupt (its SHA-256 differs from card.json)")
    model = GPT(GPTConfig(**json.loads((folder / "config.json").read_text())))
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    if model.config.tie_weights:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    model.to(getattr(torch, card.get("dtype", "float32")))
    tokenizer = tokenizer_from_json((folder / "tokenizer.json").read_text())
    return LoadedModel(model, tokenizer, card)


def load_checkpoint(path: Path) -> LoadedModel:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hparams = ckpt["hyper_parameters"]
        tokenizer = tokenizer_from_json(ckpt["tokenizer"])
    except Exception as e:  # a truncated or foreign file: say which and why, not a pickle trace
        raise ValueError(f"checkpoint {path} cannot be read as a fingpt checkpoint ({e})") from e
    model = GPT(GPTConfig(**hparams["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    scores = [s.get("best_model_score") for s in ckpt.get("callbacks", {}).values() if isinstance(s, dict)]
    scores = [float(s) for s in scores if s is not None]
    info = {
        "checkpoint": str(path),
        "val_bpb": min(scores) if scores else None,
        "steps": ckpt.get("global_step"),
        "tokens_seen": ckpt.get("tokens_seen"),
        "data": hparams.get("data"),
        "hyper_parameters": hparams,
    }
    return LoadedModel(model, tokenizer, info)
