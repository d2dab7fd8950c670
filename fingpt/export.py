"""Export a checkpoint to a bundle the server loads without Lightning, Hydra or pickle.

    fingpt-export lightning_logs/RUN                 # its best checkpoint -> models/RUN
    fingpt-export path/to/x.ckpt --out models/mine --dtype bfloat16
    fingpt-export lightning_logs/RUN --format hf     # -> models/RUN-hf, for transformers

A bundle is a folder: `model.safetensors` (plain parameter names), `config.json` (GPTConfig),
`tokenizer.json`, and `card.json` (val bpb, steps, tokens seen, data, training config, the
SHA-256 of every other file). It is written to a temporary folder and renamed, so a crash never
leaves a bundle that loads.

`--format hf` writes what `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load with no custom code (fingpt/hf.py: GPT-2, Llama or Qwen3):
`model.safetensors`, `config.json`, `generation_config.json`, `tokenizer.json`,
`tokenizer_config.json`, and `fingpt_card.json` (the bundle's card and the SHA-256 of each file).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from fingpt.checkpoint import BUNDLE_FILES, load_model
from fingpt.cli import user_errors
from fingpt.files import replace_folder, sha256
from fingpt.hf import to_hf
from fingpt.tokenizer import EOT, BPETokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def portable(config: dict | None) -> dict | None:
    """A training config without the trainer's filesystem: no `paths`, and every other absolute
    path cut to its file name. The card names the data by its fingerprint, not by where it was."""

    def cut(value):
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v) for v in value]
        return Path(value).name if isinstance(value, str) and os.path.isabs(value) else value

    return None if config is None else cut({k: v for k, v in config.items() if k != "paths"})


def export(source: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the bundle of `source` (a .ckpt or a run folder) to `out`; replaces an old one."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    loaded = load_model(source)
    model, out = loaded.model, Path(out)
    # a tied LM head is the token embedding: store it once, the loader ties it again
    state = {
        name: tensor.to(DTYPES[dtype]).contiguous()
        for name, tensor in model.state_dict().items()
        if not (model.config.tie_weights and name == "lm_head.weight")
    }
    with replace_folder(out, marker="card.json", kind="bundle") as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "dtype": dtype})
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        (tmp / "tokenizer.json").write_text(loaded.tokenizer.to_json())
        card = {
            "name": out.name,
            "parameters": model.num_parameters(),
            "dtype": dtype,
            "context_length": model.config.block_size,
            **{k: v for k, v in loaded.info.items() if k not in ("hyper_parameters", "checkpoint")},
            "checkpoint": Path(loaded.info["checkpoint"]).name if loaded.info.get("checkpoint") else None,
            "training_config": portable(  # a checkpoint's, or the card's of a bundle re-exported
                loaded.info.get("hyper_parameters", {}).get("config") or loaded.info.get("training_config")
            ),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": {name: sha256(tmp / name) for name in BUNDLE_FILES if name != "card.json"},
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))
    return out


def export_hf(source: str | Path, out: str | Path) -> Path:
    """Write `source` (a .ckpt, run folder or bundle) as a Hugging Face folder `out` (float32)."""
    loaded = load_model(source)
    model, tokenizer, out = loaded.model, loaded.tokenizer, Path(out)
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError("tokenizer=char has no Hugging Face tokenizer: export a model trained with BPE")
    config, state = to_hf(model, tokenizer.eot_id)
    with replace_folder(out, marker="fingpt_card.json", kind="Hugging Face export") as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        generation = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        (tmp / "tokenizer.json").write_text(tokenizer.to_json())
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT,
            "eos_token": EOT,
            "model_max_length": model.config.block_size,
            "clean_up_tokenization_spaces": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        card = {
            "name": out.name,
            "architecture": config["architectures"][0],
            "parameters": model.num_parameters(),
            **{k: v for k, v in loaded.info.items() if k != "hyper_parameters"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": {f.name: sha256(f) for f in sorted(tmp.iterdir())},
        }
        (tmp / "fingpt_card.json").write_text(json.dumps(card, indent=2, default=str))
    return out


def point_latest(bundle: Path) -> None:
    """Make `<models>/latest` a symlink to `bundle`, replaced atomically."""
    latest = bundle.parent / "latest"
    tmp = bundle.parent / f".latest.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(bundle.name)
    os.replace(tmp, latest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a fingpt checkpoint to a served bundle.")
    parser.add_argument("source", type=Path, help="a .ckpt file, or a run folder (its best checkpoint)")
    parser.add_argument("--out", type=Path, help="bundle folder (default: $FINGPT_MODELS_DIR/<run name>)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the bundle's")
    parser.add_argument("--format", default="bundle", choices=["bundle", "hf"], help="hf: for transformers")
    parser.add_argument("--no-latest", action="store_true", help="leave models/latest as it is")
    args = parser.parse_args(argv)
    run = args.source if args.source.is_dir() else args.source.parent.parent
    suffix = "-hf" if args.format == "hf" else ""
    out = args.out or Path(os.environ.get("FINGPT_MODELS_DIR", "models")) / f"{run.name}{suffix}"
    with user_errors():
        bundle = export_hf(args.source, out) if args.format == "hf" else export(args.source, out, args.dtype)
    if args.format == "bundle" and not args.no_latest:
        point_latest(bundle)
    print(bundle)


if __name__ == "__main__":
    main()
