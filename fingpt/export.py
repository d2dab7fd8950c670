"""Export a checkpoint to a bundle the server loads without Lightning, Hydra or pickle.

    fingpt-export lightning_logs/RUN                 # its best checkpoint -> models/RUN
    fingpt-export path/to/x.ckpt --out models/mine --dtype bfloat16

A bundle is a folder: `model.safetensors` (plain parameter names), `config.json` (GPTConfig),
`tokenizer.json`, and `card.json` (val bpb, steps, tokens seen, data, training config, the
SHA-256 of every other file). It is written to a temporary folder and renamed, so a crash never
leaves a bundle that loads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from fingpt.checkpoint import BUNDLE_FILES, load_model
from fingpt.files import default_permissions

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    if out.exists() and not (out / "card.json").is_file() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a bundle: choose another --out, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "dtype": dtype})
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        (tmp / "tokenizer.json").write_text(loaded.tokenizer.to_json())
        card = {
            "name": out.name,
            "parameters": model.num_parameters(),
            "dtype": dtype,
            "context_length": model.config.block_size,
            **{k: v for k, v in loaded.info.items() if k != "hyper_parameters"},
            "training_config": loaded.info.get("hyper_parameters", {}).get("config"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": {name: _sha256(tmp / name) for name in BUNDLE_FILES if name != "card.json"},
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))
        default_permissions(tmp)
        if out.exists():  # swap in the new bundle, then drop the old one
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--no-latest", action="store_true", help="leave models/latest as it is")
    args = parser.parse_args(argv)
    run = args.source if args.source.is_dir() else args.source.parent.parent
    out = args.out or Path(os.environ.get("FINGPT_MODELS_DIR", "models")) / run.name
    try:
        bundle = export(args.source, out, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not args.no_latest:
        point_latest(bundle)
    print(bundle)


if __name__ == "__main__":
    main()
