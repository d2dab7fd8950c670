"""GPU training throughput and MFU of the real configs, with and without torch.compile:

    python bench/gpu.py [--steps 300] [--models modern_small,gpt2] [HYDRA OVERRIDES ...]

Each case is `python train.py experiment=gpu_small model=M compile=C` (one GPU, bf16-mixed) in
a fresh process, for `--steps` steps. Tokens/s and MFU are the ThroughputMonitor's (MFU from the
module's `flops_per_batch` and the GPU's peak FLOPs in the run's precision), averaged over the
second half of the steps, so compilation and warm-up are left out. Extra overrides go to every
case, e.g. `trainer=cpu precision=32-true model.block_size=64` to try the script on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# gpt2: 16 x 1024 tokens per step fits 80 GB without tricks
BATCH_SIZE = {"modern_small": 64, "small": 64, "gpt2": 16}


def run_case(model: str, compile: bool, steps: int, overrides: list[str], log_dir: str) -> dict:
    name = f"{model}-{'compiled' if compile else 'eager'}"
    args = [
        "experiment=gpu_small",
        f"model={model}",
        f"compile={str(compile).lower()}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "+trainer.enable_checkpointing=false",
        "~callbacks.best",
        "~callbacks.periodic",
        "logger=csv",
        "export.format=none",
        "sample.tokens=0",
        f"paths.log_dir={log_dir}",
        f"run_name={name}",
    ]
    if model in BATCH_SIZE:
        args.append(f"data.loader.batch_size={BATCH_SIZE[model]}")
    proc = subprocess.run(
        [sys.executable, "train.py", *args, *overrides], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    with open(Path(log_dir) / name / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/device/items_per_sec")]
    late = [r for r in rows if int(r["step"]) >= steps // 2] or rows[-1:]

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in late if r.get(key)]
        return statistics.mean(values) if values else None

    return {
        "case": name,
        "tokens_per_sec": mean("train/device/items_per_sec"),
        "mfu": mean("train/device/mfu"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--models", default="modern_small,gpt2", help="comma-separated model configs")
    args, overrides = parser.parse_known_args()
    models = args.models.split(",")
    os.environ.setdefault("FINGPT_DATA_DIR", str(ROOT / "data"))  # make data

    results = []
    with tempfile.TemporaryDirectory() as log_dir:
        for model in models:
            for compile in (False, True):
                results.append(run_case(model, compile, args.steps, overrides, log_dir))
                print(results[-1], flush=True)

    print(f"\ntraining throughput, {args.steps} steps, second half averaged ({' '.join(overrides)})")
    print(f"  {'case':<20} {'tokens/s':>12} {'MFU':>8}")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"  {r['case']:<20} {r['tokens_per_sec']:12,.0f} {mfu:>8}")
    for model in models:
        eager, compiled = (r["tokens_per_sec"] for r in results if r["case"].startswith(f"{model}-"))
        print(f"  torch.compile on {model}: {compiled / eager:.2f}x")


if __name__ == "__main__":
    main()
