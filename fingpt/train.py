"""Train a GPT on earnings calls (`python train.py ...` or `fingpt-train ...`).

    python train.py                                   # model=tiny on data=cc_by_sa, CPU
    python train.py model=small trainer=gpu precision=bf16-mixed
    python train.py experiment=seed_char              # Karpathy's char-level lecture model, as trained
    python train.py -m model.dropout=0.0,0.1,0.2      # a sweep: lightning_logs/multirun/...
    python train.py run_name=NAME ckpt_path=last      # resume a killed run

Prepares the data (cached), fits, validates the best checkpoint, logs the hyperparameters with
its val/bpb for TensorBoard's HParams tab, exports it to models/<run name> (models/latest points
at it), and returns that val/bpb for sweepers to minimize.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fingpt.checkpoint import read_checkpoint
from fingpt.cli import run_hydra, user_errors
from fingpt.config import CONF_DIR, instantiate
from fingpt.data.prepare import prepare
from fingpt.devices import native_bfloat16
from fingpt.export import export, export_hf, point_latest
from fingpt.hf import hf_family
from fingpt.runs import BEST, Run, newest_last

# Lightning is imported where it is used, not here: its import takes about 8 s, and a mistake on
# the command line (an option that does not exist, a folder that cannot be written) is told first
if TYPE_CHECKING:
    import lightning as L

    from fingpt.data.datamodule import TranscriptDataModule
    from fingpt.lit_module import GPTLitModule

log = logging.getLogger(__name__)


def resolve_checkpoint(ckpt_path: str | None, log_dir: Path, run_dir: Path) -> Path | None:
    """`last` (run_dir's last.ckpt, else the newest under log_dir), a run folder, or a .ckpt."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        if Run(run_dir).last.is_file():  # run_name=NAME ckpt_path=last
            return Run(run_dir).last
        return newest_last(log_dir)
    path = Path(ckpt_path)
    if path.is_dir():
        path = Run(path).last
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: {path} does not exist")
    read_checkpoint(path, mmap=True)  # a foreign or truncated file is refused now, not by Lightning
    return path


def choose_precision(cfg: DictConfig) -> None:
    """precision=auto becomes bf16-mixed where bfloat16 is native, else 32-true, in `cfg` itself
    (so the run's config, card and logs say which). A bf16 precision asked for by name is kept,
    with a warning where it is emulated."""
    precision, accelerator = str(cfg.trainer.precision), cfg.trainer.get("accelerator", "auto")
    if precision == "auto":
        native = native_bfloat16(accelerator)
        cfg.trainer.precision = "bf16-mixed" if native else "32-true"
        log.info(
            "precision=auto: %s (bfloat16 is %s here)",
            cfg.trainer.precision,
            "native" if native else "emulated",
        )
    elif precision.startswith("bf16") and not native_bfloat16(accelerator):
        log.warning(
            "precision=%s on a processor without native bfloat16: its matrix products are emulated, "
            "tens of times slower than 32-true here (precision=auto picks for you)",
            precision,
        )


def build(cfg: DictConfig) -> tuple[GPTLitModule, TranscriptDataModule]:
    """The prepared data (prepared now unless cached), its batches and the module that trains on them."""
    from fingpt.data.datamodule import TranscriptDataModule
    from fingpt.lit_module import GPTLitModule

    data = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    manifest = data.manifest
    model_config = instantiate(cfg.model, vocab_size=manifest["vocab_size"])
    if cfg.export.format == "hf":  # before training: a layout without a family is refused now
        hf_family(model_config)
    datamodule = TranscriptDataModule(
        data, block_size=model_config.block_size, seed=cfg.seed, **cfg.data.loader
    )
    validation = manifest["splits"]["validation"]
    module = GPTLitModule(
        model=model_config.to_dict(),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        tokens_per_byte=validation["tokens"] / validation["bytes"],
        tokenizer=data.tokenizer,
        compile=cfg.compile,
        sample=OmegaConf.to_container(cfg.sample, resolve=True),
        data={
            "name": manifest["name"],
            "fingerprint": manifest["fingerprint"],
            "splits": {
                s: {k: v[k] for k in ("calls", "tokens", "bytes")} for s, v in manifest["splits"].items()
            },
        },
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    return module, datamodule


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The trainer, its checkpoints where fingpt.runs keeps them: the monitored one best.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint):  # real path: as Lightning compares it on resume
            callback.dirpath = os.path.realpath(Run(Path(cfg.paths.output_dir)).checkpoints)
            if callback.monitor and callback.filename is None:
                callback.filename = BEST
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def log_final_score(cfg: DictConfig, trainer: L.Trainer, metrics: dict) -> None:
    """The run's hyperparameters with its final score, for TensorBoard's HParams tab."""
    from lightning.pytorch.loggers import TensorBoardLogger

    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams = {k: hparams[k] for k in ("model", "optimizer", "scheduler", "seed", "compile")} | {
        "data": cfg.data.name,
        "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True),
        "batch_size": cfg.data.loader.batch_size,
        "max_steps": cfg.trainer.max_steps,
        "precision": str(trainer.precision),
    }
    final = {"hp/val_bpb": float(metrics["val/bpb"]), "hp/val_loss": float(metrics["val/loss"])}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # the HParams tab pairs them with the run
            logger.log_hyperparams(hparams, final)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics(final, step=trainer.global_step)
        logger.save()


def export_run(cfg: DictConfig, best: str, output_dir: Path) -> dict:
    """Export the best checkpoint as export.format says: where the bundle (and HF folder) went.
    After result.json is written: the card takes its val_bpb from there (fingpt.runs)."""
    if cfg.export.format == "none" or not best:
        return {}
    # a sweep's job folders are numbers: its bundles are <sweep>-<job>, and models/latest
    # points at the best job once the sweep ends (fingpt.sweep), not at the last one
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    name = f"{output_dir.parent.name}-{output_dir.name}" if sweep else cfg.export.name or output_dir.name
    bundle = export(best, Path(cfg.paths.models_dir) / name)
    if not sweep:
        point_latest(bundle)
    if cfg.export.format != "hf":
        return {"bundle": str(bundle)}
    # from the bundle just written: cheaper than loading the .ckpt again
    return {"bundle": str(bundle), "hf": str(export_hf(bundle, bundle.with_name(f"{bundle.name}-hf")))}


def train(cfg: DictConfig) -> float:
    """Build the module, fit it, score its best checkpoint on all of validation, log the final
    hyperparameters, export, and write result.json. Returns that val/bpb, which sweeps minimize."""
    import lightning as L

    start = time.time()
    if cfg.export.format not in ("bundle", "hf", "none"):
        raise ValueError(f"export.format must be bundle, hf or none, got {cfg.export.format!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    L.seed_everything(cfg.seed, workers=True)
    resume = resolve_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir), Path(cfg.paths.output_dir))
    if resume is not None:  # keep writing into the resumed run's folder: one curve, one run
        cfg.paths.output_dir = str(Run.containing(resume).folder)
    output_dir = Path(cfg.paths.output_dir)
    choose_precision(cfg)

    module, datamodule = build(cfg)
    trainer = build_trainer(cfg)
    fit_start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    tokens_per_second = module.tokens_seen / (time.time() - fit_start)  # before loading the best
    if trainer.fast_dev_run:
        return float("nan")

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    (metrics,) = trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    val_bpb = float(metrics["val/bpb"])
    if trainer.is_global_zero:
        log_final_score(cfg, trainer, metrics)
        result = {
            "run": str(output_dir),
            "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
            "val_bpb": val_bpb,
            "val_loss": float(metrics["val/loss"]),
            "steps": trainer.global_step,
            "parameters": module.model.num_parameters(),
            "tokens_per_second": round(tokens_per_second),  # resumed: over-counts the earlier tokens
            "wall_seconds": round(time.time() - start, 1),
            "best_checkpoint": best,
        }
        result_path = Run(output_dir).result_path
        result_path.write_text(json.dumps(result, indent=2))  # before the export, which reads it
        result_path.write_text(json.dumps(result | export_run(cfg, best, output_dir), indent=2))
        print(f"val/bpb {val_bpb:.4f} at step {trainer.global_step} ({best or 'final weights'})")
    return val_bpb


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def run(cfg: DictConfig) -> float:
    with user_errors():  # in the job: a sweep's job in its own process (hydra/launcher=local) too
        return train(cfg)


def main() -> None:
    run_hydra(run)
