"""GPTLitModule: the training loop's view of the GPT (optimizer, schedule, metrics, samples)."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import SumMetric

from fingpt.generation import continue_text
from fingpt.model import GPT, GPTConfig
from fingpt.tokenizer import Tokenizer, tokenizer_from_json


def batch_size(batch) -> int:
    return batch[0].shape[0]


def batch_tokens(batch) -> int:
    return batch[0].numel()


def fused_optimizer(precision: str) -> bool:
    """Whether the optimizer steps with one fused kernel (4 ms a step instead of 30 for AdamW at
    10.7M parameters on 2 cores): not under autocast (16-mixed, bf16-mixed), since Lightning's
    autocast plugins refuse to clip the gradients of a fused optimizer, which unscales them
    inside its own step."""
    return not str(precision).endswith("-mixed")


class GPTLitModule(L.LightningModule):
    """Trains a GPT. Its hyperparameters are plain dicts, so a checkpoint alone rebuilds it; the
    checkpoint also carries the tokenizer (see `fingpt.checkpoint`)."""

    def __init__(
        self,
        model: dict,
        optimizer: dict,
        scheduler: dict,
        tokens_per_byte: float,
        tokenizer: Tokenizer | None = None,
        compile: bool = False,
        sample: dict | None = None,
        data: dict | None = None,
        config: dict | None = None,
    ) -> None:
        """`tokenizer`: the prepared data's; a module restored from a checkpoint takes the
        checkpoint's. `data` (the prepared corpus: name, fingerprint, sizes) and `config` (the
        whole training config) only travel with the checkpoint, for the exported model's card."""
        super().__init__()
        # train.py logs them with the final val/bpb; the tokenizer travels as JSON (on_save_checkpoint)
        self.save_hyperparameters(ignore=["tokenizer"], logger=False)
        self.model = GPT(GPTConfig(**model))
        self.tokenizer = tokenizer
        self.val_nll = SumMetric()
        self.val_tokens = SumMetric()
        self.tokens_seen = 0

    def configure_model(self) -> None:
        if self.hparams.compile:  # in place: parameter names stay free of `_orig_mod.`
            torch.compiler.reset()  # a sweep's jobs share a process: each compiles afresh
            for block in self.model.blocks:  # the blocks only: the loss's chunk loop stays eager
                block.compile(dynamic=False)

    def on_fit_start(self) -> None:
        """Compile the blocks for training's shapes now, before Lightning's Timer starts the
        clock of trainer.max_time (on_train_start): the budget trains instead of compiling (13-15 s
        of the demo's 310 on 2 cores when the compile cache is cold). The sanity check compiles
        validation's shapes, also before the clock. One device only: under DDP or FSDP a backward
        outside the wrapper's forward would upset its gradient hooks."""
        data = self.trainer.datamodule
        if not self.hparams.compile or self.trainer.world_size > 1 or data is None:
            return
        tokens = torch.zeros(
            data.batch_size, self.model.config.block_size, dtype=torch.long, device=self.device
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with self.trainer.precision_plugin.forward_context():
                _, loss = self.model(tokens, tokens)
            loss.backward()
        self.model.zero_grad(set_to_none=True)

    @property
    def flops_per_batch(self) -> int:
        """Training FLOPs of one batch, forward and backward: 6N + attention, per token (PaLM)."""
        c = self.model.config
        per_token = 6 * self.model.num_parameters() + 12 * c.n_layer * c.n_embd * c.block_size
        return per_token * c.block_size * self.trainer.datamodule.batch_size

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        self.tokens_seen += x.numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.trainer.max_steps > 0 and self.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True  # so the Trainer validates the final weights too

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:  # only when it is written
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.log("train/grad_norm", norm)  # before clipping

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        tokens = (y != -100).sum()
        self.val_nll.update(loss.float() * tokens)
        self.val_tokens.update(tokens)

    def on_validation_epoch_end(self) -> None:
        nll, tokens = self.val_nll.compute(), self.val_tokens.compute()
        self.val_nll.reset()
        self.val_tokens.reset()
        loss = nll / tokens
        # bits per byte: nats per token / ln 2 * tokens per byte of the validation calls
        bpb = loss / math.log(2) * self.hparams.tokens_per_byte
        self.log_dict({"val/loss": loss, "val/bpb": bpb, "val/ppl": torch.exp(loss)}, prog_bar=True)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_sample()

    def _log_sample(self) -> None:
        """A continuation of a fixed earnings-call opening, through the one sampler."""
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        sample = self.hparams.sample
        if not loggers or not sample:
            return
        with torch.compiler.set_stance("force_eager"):  # compiled blocks are for training's shapes
            completion = continue_text(self.model, self.tokenizer, sample)
        if completion is None:
            return
        for logger in loggers:
            logger.experiment.add_text("sample", f"**{sample['prompt']}**{completion}", self.global_step)

    def configure_optimizers(self):
        from fingpt.config import check, instantiate

        fused = fused_optimizer(self.trainer.precision)
        factory = instantiate(self.hparams.optimizer)  # conf/optimizer: a factory
        try:
            optimizer = factory(self.model, fused=fused)
        except TypeError as e:  # a value of the wrong type: optimizer.lr=abc
            raise ValueError(f"optimizer: {e}: {check('optimizer')}") from e
        schedule = instantiate(self.hparams.scheduler)  # conf/scheduler: (step, progress) -> multiplier
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule(step, self.progress(step))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def progress(self, step: int) -> float:
        """The fraction of the training budget spent after `step` optimizer steps: of
        trainer.max_steps, or of trainer.max_time's wall time, whichever is further along."""
        trainer = self.trainer
        done = step / trainer.max_steps if trainer.max_steps > 0 else 0.0
        for timer in (c for c in trainer.callbacks if isinstance(c, Timer)):
            remaining = timer.time_remaining("train")
            if remaining is not None:
                elapsed = timer.time_elapsed("train")
                done = max(done, elapsed / max(elapsed + remaining, 1e-9))
        return min(1.0, done)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.to_json()
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer = tokenizer_from_json(checkpoint["tokenizer"])
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
