"""The one place that turns a saved model into a `GPT` and its tokenizer.

Reads an exported bundle (safetensors + JSON, see `fingpt.export`) or a Lightning `.ckpt`
(tensors and plain values only: `weights_only=True`). Imports neither Lightning nor Hydra, so
evaluation, export and the server share it.
"""

from __future__ import annotations

import json
import zipfile
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
    if any((path / name).exists() for name in ("card.json", "model.safetensors", "config.json")):
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
    hf_config = folder / "config.json"
    if (
        not (folder / "card.json").is_file()
        and hf_config.is_file()
        and b'"architectures"' in hf_config.read_bytes()
    ):
        raise ValueError(
            f"{folder} is a Hugging Face folder (for transformers), not a fingpt bundle: "
            "give the bundle it was exported from, or a .ckpt"
        )
    for name in BUNDLE_FILES:
        if not (folder / name).is_file():
            raise ValueError(f"bundle {folder} is missing {name}: export it again (fingpt-export)")
    card = Card.load(folder / "card.json")
    if not card.sha256:
        raise ValueError(f"bundle {folder}: card.json has no checksums (sha256): export it again")
    for name, expected in card.sha256.items():
        if sha256(folder / name) != expected:
            raise ValueError(f"bundle {folder}: {name} is corrupt (its SHA-256 differs from card.json)")
    model = model_of(json.loads((folder / "config.json").read_text()), f"{folder}/config.json")
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    if model.config.tie_weights and "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    load_weights(model, state, f"{folder}/model.safetensors")
    model.to(getattr(torch, card.dtype))
    tokenizer = tokenizer_from_json((folder / "tokenizer.json").read_text())
    return LoadedModel(model, tokenizer, card)


CHECKPOINT_KEYS = ("state_dict", "hyper_parameters", "tokenizer")  # what fingpt's training writes


def read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A fingpt training checkpoint's contents (tensors and plain values only), after checking its
    layout: anything else (a truncated file, another program's checkpoint) is refused, named.
    mmap=True leaves the tensors on disk: a check that costs no time."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} is not a PyTorch checkpoint (torch.save writes a zip archive): "
            "give a .ckpt that fingpt's training wrote (lightning_logs/RUN/checkpoints/)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a pickle, a zip or an unpickler trace: say which file and why, briefly
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint of tensors ({why}): "
            "give a .ckpt that fingpt's training wrote (lightning_logs/RUN/checkpoints/)"
        ) from e
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoint {path} has no {', '.join(missing)}: it is not a fingpt training checkpoint "
            "(lightning_logs/RUN/checkpoints/*.ckpt)"
        )
    return ckpt


def model_of(config: dict, where: str) -> GPT:
    """A GPT of `config`, or a ValueError naming where the config came from."""
    try:
        return GPT(GPTConfig(**config))
    except TypeError as e:  # a key GPTConfig does not have: another program's config
        raise ValueError(f"{where} is not a fingpt model config ({e})") from e


def load_weights(model: GPT, state: dict, where: str) -> None:
    """Load `state` into `model`, or a ValueError naming the weights that do not fit."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        found = [
            f"{what} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for what, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("a different shape for", misshapen),
            )
            if names
        ]
        raise ValueError(
            f"{where}: the weights do not fit the model its config describes ({'; '.join(found)})"
        )
    model.load_state_dict(state)


def load_checkpoint(path: Path) -> LoadedModel:
    """The model, tokenizer and card of a Lightning checkpoint; its val_bpb is the best
    checkpoint callback's score (on the validation windows sampled during fit)."""
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    model = model_of(hparams["model"], str(path))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_weights(model, state, str(path))
    tokenizer = tokenizer_from_json(ckpt["tokenizer"])
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
