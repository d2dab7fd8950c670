"""Export a checkpoint to a bundle the server loads without Lightning, Hydra or pickle.

    fingpt-export lightning_logs/RUN                 # its best checkpoint -> models/RUN
    fingpt-export path/to/x.ckpt --out models/mine --dtype bfloat16
    fingpt-export lightning_logs/RUN --format hf     # -> models/RUN-hf, for transformers and vLLM
    fingpt-export lightning_logs/RUN --format gguf --dtype q8_0   # -> models/RUN-q8_0.gguf

A bundle is a folder: `model.safetensors` (plain parameter names), `config.json` (GPTConfig),
`tokenizer.json` and `tokenizer_config.json` (a Hugging Face tokenizer folder, for lm-eval and
`AutoTokenizer`), and `card.json` (val bpb, steps, tokens seen, data, training config, the
SHA-256 of every other file). It is written to a temporary folder and renamed, so a crash never
leaves a bundle that loads.

`--format hf` writes what `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load with no custom code (fingpt/hf.py: GPT-2, Llama, Qwen3 or
Apertus): `model.safetensors`, `config.json`, `generation_config.json`, the tokenizer's two files,
and `fingpt_card.json` (the bundle's card and the SHA-256 of each file). `--format gguf` writes
one file for llama.cpp (fingpt/gguf_export.py).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from fingpt.card import Card
from fingpt.checkpoint import LoadedModel, load_model
from fingpt.cli import user_errors
from fingpt.devices import FLOATS, check_dtype
from fingpt.files import replace_folder, sha256
from fingpt.gguf_export import GGUF_DTYPES, TYPES, write_gguf
from fingpt.hf import to_hf
from fingpt.runs import Run
from fingpt.tokenizer import EOT, BPETokenizer, Tokenizer


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


def card_of(loaded: LoadedModel, name: str, dtype: str, files: dict[str, str]) -> Card:
    """The card of an export named `name`: `loaded`'s, with the SHA-256 of each of its `files`."""
    checkpoint = loaded.card.checkpoint
    return replace(
        loaded.card,
        name=name,
        parameters=loaded.model.num_parameters(),
        dtype=dtype,
        context_length=loaded.model.config.block_size,
        checkpoint=Path(checkpoint).name if checkpoint else None,
        training_config=portable(loaded.card.training_config),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256=files,
    )


def export(source: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the bundle of `source` (a .ckpt or a run folder) to `out`; replaces an old one."""
    check_dtype(dtype, FLOATS)
    loaded = load_model(source)
    model, out = loaded.model, Path(out)
    # a tied LM head is the token embedding: store it once, the loader ties it again
    state = {
        name: tensor.to(getattr(torch, dtype)).contiguous()
        for name, tensor in model.state_dict().items()
        if not (model.config.tie_weights and name == "lm_head.weight")
    }
    with replace_folder(out, marker="card.json", kind="bundle") as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "dtype": dtype})
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
        write_tokenizer(loaded.tokenizer, model.config.block_size, tmp)
        files = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        card_of(loaded, out.name, dtype, files).save(tmp / "card.json")
    return out


def write_tokenizer(tokenizer: Tokenizer, context_length: int, folder: Path) -> None:
    """`tokenizer.json`, and for BPE the `tokenizer_config.json` that makes `folder` a Hugging Face
    tokenizer (`AutoTokenizer.from_pretrained(folder)`: lm-eval's `tokenizer=`). `<|endoftext|>`
    is both bos and eos, as in training."""
    (folder / "tokenizer.json").write_text(tokenizer.to_json())
    if isinstance(tokenizer, BPETokenizer):
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT,
            "eos_token": EOT,
            "model_max_length": context_length,
            "clean_up_tokenization_spaces": False,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


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
        write_tokenizer(tokenizer, model.config.block_size, tmp)
        card = card_of(loaded, out.name, "float32", {f.name: sha256(f) for f in sorted(tmp.iterdir())})
        card.save(tmp / "fingpt_card.json", architecture=config["architectures"][0])
    return out


def export_gguf(source: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write `source` (a .ckpt, run folder or bundle) as the GGUF file `out`, for llama.cpp."""
    loaded = load_model(source)
    return write_gguf(loaded.model, loaded.tokenizer, Path(out), dtype, name=Path(out).stem)


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
    parser.add_argument("--out", type=Path, help="where to write (default: $FINGPT_MODELS_DIR/<run name>...)")
    parser.add_argument(
        "--format",
        default="bundle",
        choices=["bundle", "hf", "gguf"],
        help="hf: for transformers and vLLM; gguf: for llama.cpp, Ollama, LM Studio",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=list(dict.fromkeys([*FLOATS, *GGUF_DTYPES])),
        help="a bundle's: float32, bfloat16, float16; a GGUF's: those or q8_0; hf: float32 only",
    )
    parser.add_argument("--no-latest", action="store_true", help="leave models/latest as it is")
    args = parser.parse_args(argv)
    if args.dtype not in (GGUF_DTYPES if args.format == "gguf" else FLOATS):
        parser.error(f"--dtype {args.dtype} is for --format gguf only")
    if args.format == "hf" and args.dtype != "float32":
        parser.error("--format hf writes float32 (transformers casts on loading): drop --dtype")
    run = Run.containing(args.source).folder  # a bundle's own folder too
    models = Path(os.environ.get("FINGPT_MODELS_DIR", "models"))
    name = {"bundle": run.name, "hf": f"{run.name}-hf", "gguf": f"{run.name}-{TYPES[args.dtype][2]}.gguf"}
    out = args.out or models / name[args.format]
    with user_errors():
        if args.format == "hf":
            written = export_hf(args.source, out)
        elif args.format == "gguf":
            written = export_gguf(args.source, out, args.dtype)
        else:
            written = export(args.source, out, args.dtype)
    if args.format == "bundle" and not args.no_latest:
        point_latest(written)
    print(written)


if __name__ == "__main__":
    main()
