"""After a multirun: one table of its jobs, best val/bpb first (sweep_summary.md and .csv), and
models/latest pointed at the best job's bundle. An Optuna search with a storage also gets a table
of every trial of its study, whichever process ran it (study_summary.md and .csv, one folder up)."""

from __future__ import annotations

import csv
import fcntl
import json
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fingpt.cli import user_errors
from fingpt.export import point_latest
from fingpt.runs import RESULT

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
STUDY_COLUMNS = ("trial", "state", "val_bpb", "overrides", "run")


def summarize(sweep_dir: Path) -> list[dict]:
    """Collect every job's result.json under sweep_dir, write the summary files, return rows."""
    rows = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{RESULT}"))]
    rows.sort(key=lambda r: r["val_bpb"])
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)  # what varies
    write_tables(
        sweep_dir / "sweep_summary",
        COLUMNS,
        rows,
        [
            f"# Sweep {sweep_dir.name}: {len(rows)} runs, best val/bpb first",
            "",
            "| rank | val/bpb | val/loss | steps | tokens/s | parameters | wall (s) | overrides |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
            *(
                f"| {r['rank']} | {r['val_bpb']:.4f} | {r['val_loss']:.4f} | {r['steps']} | "
                f"{r.get('tokens_per_second', '')} | {r.get('parameters', '')} | {r['wall_seconds']} | "
                f"`{r['overrides']}` |"
                for r in rows
            ),
        ],
    )
    return rows


def write_tables(path: Path, columns: tuple[str, ...], rows: list[dict], markdown: list[str]) -> None:
    """`path`.csv (the rows' `columns`) and `path`.md (the `markdown` lines)."""
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".md").write_text("\n".join(markdown) + "\n")


def check_storage(url: str) -> None:
    """A ValueError naming hydra.sweeper.storage when it is not a database URL SQLAlchemy can
    open, or its database's driver is not installed (before the sweeper tries, with a trace)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    examples = "sqlite:///lightning_logs/optuna.db, or postgresql://user:password@host/fingpt"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"hydra.sweeper.storage={url} is not a database URL: give one such as {examples}"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        create_engine(parsed).dispose()  # loads the dialect and its driver; connects to nothing
    except NoSuchModuleError:
        raise ValueError(
            f"hydra.sweeper.storage={shown}: no database {parsed.drivername!r}: give one such as {examples}"
        ) from None
    except ImportError as e:
        raise ValueError(
            f"hydra.sweeper.storage={shown}: its driver is not installed ({e}): pip install it "
            "(psycopg2-binary for postgresql, pymysql for mysql+pymysql), or use sqlite:///PATH"
        ) from None


def open_storage(url: str, attempts: int = 10) -> None:
    """Create an Optuna database's tables if it has none. Processes that start at once on a new
    database race to create them; the losers fail (table exists, duplicate version row) and retry."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    check_storage(url)

    if url.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            RDBStorage(url)
            return
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def study_rows(storage: str, study_name: str, folder: Path) -> list[dict]:
    """Every trial of the study, from its storage, best val/bpb first, then the unfinished ones;
    with the run folder of each trial whose result.json is in a sweep under `folder`."""
    import optuna

    results = [json.loads(p.read_text()) for p in sorted(folder.glob(f"*/*/{RESULT}"))]
    rows = []
    for trial in optuna.load_study(study_name=study_name, storage=storage).trials:
        params = [f"{k}={v}" for k, v in trial.params.items()]  # as the sweeper wrote the overrides
        run = next((r for r in results if set(params) <= set(r["overrides"])), {})
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "val_bpb": trial.value,
                "overrides": " ".join(params),
                "run": run.get("run", ""),
                "bundle": run.get("bundle"),
            }
        )
    rows.sort(key=lambda r: (r["val_bpb"] is None, r["val_bpb"] or 0.0, r["trial"]))
    return rows


def summarize_study(storage: str, study_name: str, folder: Path) -> list[dict]:
    """Write study_summary.md and .csv in folder, return the rows."""
    # every process that shares the study writes them as it ends, one at a time: the last to
    # write reads the storage after all the others told it their last results
    with (folder / ".study_summary.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = study_rows(storage, study_name, folder)
        complete = sum(r["state"] == "COMPLETE" for r in rows)
        write_tables(
            folder / "study_summary",
            STUDY_COLUMNS,
            rows,
            [
                f"# Study {study_name}: {len(rows)} trials, {complete} complete, best val/bpb first",
                "",
                "| trial | state | val/bpb | overrides | run |",
                "|---:|---|---:|---|---|",
                *(
                    f"| {r['trial']} | {r['state']} | "
                    f"{'' if r['val_bpb'] is None else format(r['val_bpb'], '.4f')} | `{r['overrides']}` | "
                    f"{r['run']} |"
                    for r in rows
                ),
            ],
        )
    return rows


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage")
        if storage:  # before the sweeper opens it
            with user_errors():  # Hydra would make the error a warning, then the sweeper a trace
                open_storage(storage)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir)
        print((sweep_dir / "sweep_summary.md").read_text())
        best = rows[0] if rows else {}
        what = "the best run of the sweep"
        storage = OmegaConf.select(config, "hydra.sweeper.storage")
        study_name = OmegaConf.select(config, "hydra.sweeper.study_name")
        if storage and study_name:
            study = summarize_study(storage, study_name, sweep_dir.parent)
            print((sweep_dir.parent / "study_summary.md").read_text())
            if study and study[0].get("bundle"):
                best, what = study[0], "the best trial of the study"
        if best.get("bundle"):
            point_latest(Path(best["bundle"]))
            print(f"models/latest: {best['bundle']}, {what}")
