"""The layout of a training run's folder, in one place:

    <run>/checkpoints/best.ckpt    the lowest val/bpb during fit (its score is in its own callback state)
    <run>/checkpoints/last.ckpt    the newest, every val_check_interval steps: ckpt_path=last resumes it
    <run>/result.json              train's final figures: val_bpb on the whole validation split, ...

train.build_trainer points the checkpoint callbacks here. Runs from before best.ckpt hold
best-step{step}-bpb{bpb}.ckpt files instead: the newest of them is their best.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BEST = "best"  # the monitored ModelCheckpoint's filename; Lightning adds .ckpt
LAST = "last"
RESULT = "result.json"


@dataclass(frozen=True)
class Run:
    folder: Path

    @classmethod
    def containing(cls, path: str | Path) -> Run:
        """The run of a folder (itself) or of a checkpoint (the folder above its checkpoints/)."""
        path = Path(path)
        return cls(path if path.is_dir() else path.parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def result_path(self) -> Path:
        return self.folder / RESULT

    def best(self) -> Path | None:
        if (self.checkpoints / f"{BEST}.ckpt").is_file():
            return self.checkpoints / f"{BEST}.ckpt"
        older = sorted(self.checkpoints.glob(f"{BEST}-*.ckpt"), key=lambda p: p.stat().st_mtime)
        return older[-1] if older else None

    def checkpoint(self) -> Path:
        """The best checkpoint, else the last; a run folder without either is refused with the fix."""
        found = self.best() or (self.last if self.last.is_file() else None)
        if found is None:
            raise FileNotFoundError(
                f"{self.folder} is neither a bundle nor a run folder with checkpoints/{BEST}.ckpt or "
                f"{LAST}.ckpt: pass a bundle, a .ckpt, or the folder of a run that has validated once"
            )
        return found

    def result(self) -> dict | None:
        return json.loads(self.result_path.read_text()) if self.result_path.is_file() else None

    def final_val_bpb(self, checkpoint: Path) -> float | None:
        """result.json's val_bpb (the whole validation split) when it scored `checkpoint`: the run's
        best, with no newer checkpoint written over it since (a resumed run)."""
        result = self.result()
        if result is None or checkpoint.parent.resolve() != self.checkpoints.resolve():
            return None
        scored = Path(result.get("best_checkpoint") or "").name == checkpoint.name
        current = self.result_path.stat().st_mtime >= checkpoint.stat().st_mtime
        return result["val_bpb"] if scored and current else None


def newest_last(log_dir: Path) -> Path:
    """The newest last.ckpt of every run under log_dir (ckpt_path=last without run_name)."""
    found = sorted(log_dir.glob(f"**/checkpoints/{LAST}.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no checkpoints/{LAST}.ckpt under {log_dir}")
    return found[-1]
