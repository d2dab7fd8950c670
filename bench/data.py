"""Data stage benchmark: preparation throughput, and memory of the training stream vs corpus size.

    python bench/data.py [--corpus PATH]     (default: $FINGPT_DATA_DIR/ectsum/train.parquet)

Prepares the corpus from scratch (tokenizer training included) and reports MB/s. Then streams
training batches over the corpus, and over the same corpus repeated 4 times (4 shards), each in
a fresh process, and reports each one's peak resident memory: memory-mapped shards keep it flat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fingpt.config import compose
from fingpt.data.prepare import Prepared, prepare

ROOT = Path(__file__).resolve().parents[1]


def prepare_corpus(corpus: Path, cache: Path) -> tuple[Prepared, float]:
    cfg = compose("prepare", ["data=local", f"data.path={corpus}", f"paths.cache_dir={cache}"])
    start = time.perf_counter()
    data = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    return data, time.perf_counter() - start


def repeat_corpus(folder: Path, times: int) -> Path:
    """A prepared folder whose training split is `times` copies of `folder`'s shard."""
    repeated = folder.with_name(folder.name + f"-x{times}")
    shutil.copytree(folder, repeated)
    manifest = json.loads((repeated / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    (shard,) = train["shards"]
    train["shards"] = []
    for i in range(times):
        name = f"train_{i:03d}.bin"
        if name != shard["file"]:
            shutil.copy(repeated / shard["file"], repeated / name)
        train["shards"].append({"file": name, "tokens": shard["tokens"]})
    train["tokens"] *= times
    (repeated / "manifest.json").write_text(json.dumps(manifest))
    return repeated


STREAM = """
import resource, sys, time
from fingpt.data.datamodule import TranscriptDataModule
from fingpt.data.prepare import Prepared
folder, block, batch = sys.argv[1], 256, 32
dm = TranscriptDataModule(Prepared.load(folder), block_size=block, batch_size=batch)
steps = dm.manifest["splits"]["train"]["tokens"] // (block * batch)  # one pass worth of tokens
start = time.perf_counter()
for step, _ in zip(range(steps), dm.train_dataloader()):
    pass
seconds = time.perf_counter() - start
print(steps, steps * block * batch / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def stream_peak(folder: Path) -> tuple[int, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", STREAM, str(folder)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) / 1024


def main() -> None:
    data_dir = Path(os.environ.get("FINGPT_DATA_DIR", ROOT / "data"))  # fingpt-data download ectsum
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=data_dir / "ectsum" / "train.parquet")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        data, seconds = prepare_corpus(args.corpus, Path(cache))
        mb = sum(s["bytes"] for s in data.manifest["splits"].values()) / 1e6
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"prepare {args.corpus.name}: {mb:.1f} MB of calls in {seconds:.1f} s = "
            f"{mb / seconds:.1f} MB/s (goal >= 5, tokenizer training included), {peak:.0f} MB peak"
        )
        peaks = {}
        for times in (1, 4):
            target = data.folder if times == 1 else repeat_corpus(data.folder, times)
            steps, tokens_per_s, peaks[times] = stream_peak(target)
            print(
                f"stream corpus x{times}: {steps} batches of 32 x 256, "
                f"{tokens_per_s / 1e6:.1f} M tokens/s, peak RSS {peaks[times]:.0f} MB"
            )
        print(f"peak memory x4 / x1 = {peaks[4] / peaks[1]:.3f} (goal within 1.20)")


if __name__ == "__main__":
    main()
