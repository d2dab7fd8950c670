"""After a multirun: one table of its jobs, best val/bpb first (sweep_summary.md and .csv), and
models/latest pointed at the best job's bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fingpt.export import point_latest

COLUMNS = (
    "rank",
    "val_bpb",
    "val_loss",
    "steps",
    "tokens_per_second",
    "parameters",
    "wall_seconds",
    "overrides",
    "run",
)


def summarize(sweep_dir: Path) -> list[dict]:
    """Collect every job's result.json under sweep_dir, write the summary files, return rows."""
    rows = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/result.json"))]
    rows.sort(key=lambda r: r["val_bpb"])
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)  # what varies
    with (sweep_dir / "sweep_summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Sweep {sweep_dir.name}: {len(rows)} runs, best val/bpb first",
        "",
        "| rank | val/bpb | val/loss | steps | tokens/s | parameters | wall (s) | overrides |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['rank']} | {r['val_bpb']:.4f} | {r['val_loss']:.4f} | {r['steps']} | "
        f"{r.get('tokens_per_second', '')} | {r.get('parameters', '')} | {r['wall_seconds']} | "
        f"`{r['overrides']}` |"
        for r in rows
    ]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = summarize(sweep_dir)
            print((sweep_dir / "sweep_summary.md").read_text())
            if rows and rows[0].get("bundle"):
                point_latest(Path(rows[0]["bundle"]))
                print(f"models/latest: {rows[0]['bundle']}, the best run of the sweep")
