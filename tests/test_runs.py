import os
import time

import pytest

from fingpt.runs import Run, newest_last


def touch(path, age: float = 0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_a_run_folder_means_best_ckpt_else_its_last(tmp_path):
    last = touch(tmp_path / "checkpoints" / "last.ckpt")
    assert Run(tmp_path).best() is None and Run(tmp_path).checkpoint() == last
    best = touch(tmp_path / "checkpoints" / "best.ckpt", age=100)  # older than last: still the best
    assert Run(tmp_path).checkpoint() == best
    assert Run.containing(best) == Run.containing(tmp_path) == Run(tmp_path)
    assert Run(tmp_path).result_path == tmp_path / "result.json" and Run(tmp_path).result() is None


def test_a_run_from_before_best_ckpt_means_its_newest_best_checkpoint(tmp_path):
    """Such runs named their best best-step{step}-bpb{bpb}.ckpt; a resumed one could keep several."""
    for age, name in ((30, "best-step9-bpb5.5050.ckpt"), (10, "best-step15-bpb5.3673.ckpt")):
        touch(tmp_path / "checkpoints" / name, age)
    touch(tmp_path / "checkpoints" / "last.ckpt")
    assert Run(tmp_path).checkpoint().name == "best-step15-bpb5.3673.ckpt"


def test_a_run_folder_without_checkpoints_is_refused_with_what_to_pass(tmp_path):
    touch(tmp_path / "checkpoints" / "notes.txt")
    with pytest.raises(FileNotFoundError, match="pass a bundle, a .ckpt, or the folder of a run"):
        Run(tmp_path).checkpoint()
    with pytest.raises(FileNotFoundError, match=f"ckpt_path=last: no checkpoints/last.ckpt under {tmp_path}"):
        newest_last(tmp_path)


def test_newest_last_is_the_newest_runs(tmp_path):
    touch(tmp_path / "a" / "checkpoints" / "last.ckpt", age=100)
    newer = touch(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert newest_last(tmp_path) == newer
