"""The one place that turns a saved model into a `GPT` and its tokenizer.

Reads an exported bundle (safetensors + JSON, see `fingpt.export`) or a Lightning `.ckpt`
(tensors and plain values only: `weights_only=True`). Imports neither Lightning nor Hydra, so
evaluation, export and the server share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from fingpt.card import Card
from fingpt.files import sha256
from fingpt.model import GPT, GPTConfig
from fingpt.runs import Run
from fingpt.tokenizer import Tokenizer, tokenizer_from_json

BUNDLE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "card.json")


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    card: Card = field(default_factory=Card)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A bundle folder, a `.ckpt` file, or a run folder (its best checkpoint, else its last)."""
    path = Path(path)
    if (path / "card.json").exists() or (path / "model.safetensors").exists():
        loaded = load_bundle(path)
    else:
        if path.is_dir():
            path = Run(path).checkpoint()
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: pass a bundle, a run folder or a .ckpt")
        loaded = load_checkpoint(path)
        final = Run.containing(path).final_val_bpb(path)
        if final is not None:  # result.json's: the whole validation split, not fit's sample
            loaded.card.val_bpb = final
    loaded.model.to(device).eval()
    return loaded


def load_bundle(folder: Path) -> LoadedModel:
    """Refuses a bundle with a missing or altered file, naming it."""
    for name in BUNDLE_FILES:
        if not (folder / name).is_file():
            raise ValueError(f"bundle {folder} is missing {name}: export it again (fingpt-export)")
    card = Card.load(folder / "card.json")
    if not card.sha256:
        raise ValueError(f"bundle {folder}: card.json has no checksums (sha256): export it again")
    for name, expected in card.sha256.items():
        if sha256(folder / name) != expected:
            raise ValueError(f"bundle {folder}: {name} is corrupt (its SHA-256 differs from card.json)")
    model = GPT(GPTConfig(**json.loads((folder / "config.json").read_text())))
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    if model.config.tie_weights:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    model.to(getattr(torch, card.dtype))
    tokenizer = tokenizer_from_json((folder / "tokenizer.json").read_text())
    return LoadedModel(model, tokenizer, card)


def load_checkpoint(path: Path) -> LoadedModel:
    """The model, tokenizer and card of a Lightning checkpoint; its val_bpb is the best
    checkpoint callback's score (on the validation windows sampled during fit)."""
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
    card = Card(
        parameters=model.num_parameters(),
        context_length=model.config.block_size,
        val_bpb=min(scores) if scores else None,
        val_bpb_during_fit=min(scores) if scores else None,
        steps=ckpt.get("global_step"),
        tokens_seen=ckpt.get("tokens_seen"),
        data=hparams.get("data"),
        checkpoint=str(path),
        training_config=hparams.get("config"),
    )
    return LoadedModel(model, tokenizer, card)
