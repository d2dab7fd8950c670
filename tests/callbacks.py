"""Callbacks that tests add to real training runs from the command line (+callbacks.x=...)."""

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchRecorder(Callback):
    """Writes one JSON line per training step: rank, step, a fingerprint of the batch, loss, lr."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0]
        row = {
            "rank": trainer.global_rank,
            "step": trainer.global_step - 1,  # the step this batch trained
            "batch": x[:, :8].tolist(),
            "loss": float(outputs["loss"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        with self.path.with_suffix(f".rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


class KillAt(Callback):
    """SIGKILLs its own process after `step` optimizer steps: no cleanup, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ValidationCounter(Callback):
    """Appends the number of windows each validation scored to a file, one line each."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.windows = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.windows += batch[0].shape[0]

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            with self.path.open("a") as f:
                f.write(f"{self.windows}\n")
        self.windows = 0


def read_records(path: Path, rank: int = 0) -> list[dict]:
    file = path.with_suffix(f".rank{rank}.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()]


class FakeClock:
    """Stands in for the `time` module of Lightning's Timer: a clock that ClockTick moves."""

    now = 0.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


class ClockTick(Callback):
    """Moves FakeClock one second on at each training step, before the Timer looks at it: a time
    budget of N seconds is then N steps on any machine."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        FakeClock.now += 1.0


class CompileWatch(Callback):
    """Writes, as JSON, how many graphs torch.compile had made when training's clock started
    (Lightning's Timer starts at on_train_start) and after each of the first training steps."""

    def __init__(self, path: str) -> None:
        self.path, self.counts = Path(path), {}

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return sum(counters["aot_autograd"].values()) + counters["stats"]["unique_graphs"]

    def on_train_start(self, trainer, pl_module) -> None:
        self.counts["clock starts"] = self.graphs()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counts[f"step {batch_idx}"] = self.graphs()
        self.path.write_text(json.dumps(self.counts))
