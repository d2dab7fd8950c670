import csv
import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from fingpt.config import CONF_DIR
from tests.helpers import ROOT, cli, run_cli

QUICK = ["trainer.max_steps=3", "trainer.val_check_interval=3"]


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides, return_hydra_config=True)


def test_a_two_job_multirun_writes_two_runs_and_a_summary(tmp_path, cache_dir):
    proc = run_cli(["-m", "model.dropout=0.0,0.1", *QUICK], tmp_path, cache_dir)
    (sweep,) = (tmp_path / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((job / "result.json").is_file() for job in jobs)
    with (sweep / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert sorted(r["overrides"] for r in rows) == ["model.dropout=0.0", "model.dropout=0.1"]
    assert float(rows[0]["val_bpb"]) <= float(rows[1]["val_bpb"])
    assert "| rank | val/bpb |" in (sweep / "sweep_summary.md").read_text()
    assert "sweep_summary" not in proc.stderr and "| 1 |" in proc.stdout
    # each job exported as <sweep>-<job>; models/latest is the best job's, not the last one's
    models = Path(os.environ["FINGPT_MODELS_DIR"])
    best = json.loads((Path(rows[0]["run"]) / "result.json").read_text())["bundle"]
    assert {f"{sweep.name}-0", f"{sweep.name}-1"} <= {p.name for p in models.iterdir()}
    assert (models / "latest").resolve() == Path(best).resolve()


def test_the_local_launcher_runs_each_job_in_its_own_process_and_summarizes_them(
    tmp_path, cache_dir, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs at once on two cores: one thread each
    run_cli(["-m", "hydra/launcher=local", "model.dropout=0.0,0.1", *QUICK], tmp_path, cache_dir)
    (sweep,) = (tmp_path / "multirun").iterdir()
    # submitit's folder is in the sweep's: one per job (its process id), with the job's log
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2
    with (sweep / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"] for r in rows) == ["model.dropout=0.0", "model.dropout=0.1"]
    for row in rows:
        result = json.loads((Path(row["run"]) / "result.json").read_text())
        assert Path(row["run"]).parent == sweep and result["steps"] == 3 == int(row["steps"])
        assert float(row["val_bpb"]) == pytest.approx(result["val_bpb"])
    assert float(rows[0]["val_bpb"]) <= float(rows[1]["val_bpb"])
    assert "2 runs" in (sweep / "sweep_summary.md").read_text()


def test_the_slurm_launcher_takes_its_nodes_and_tasks_from_the_trainer():
    cfg = compose_with_hydra(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    # Lightning's SLURMEnvironment: one task per device, as many nodes as the trainer's
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb) == (240, 8, 64)
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    one_gpu = compose_with_hydra(["hydra/launcher=slurm", "trainer=gpu"]).hydra.launcher
    assert (one_gpu.nodes, one_gpu.tasks_per_node, one_gpu.gpus_per_node) == (1, 1, 1)
    local = compose_with_hydra(["hydra/launcher=local", "trainer=ddp"]).hydra.launcher
    assert (local.tasks_per_node, local.gpus_per_node) == (1, 2)  # Lightning starts ddp's processes


def test_the_slurm_launcher_submits_the_sweep_as_one_job_array_sized_like_the_trainer(
    tmp_path, cache_dir, monkeypatch
):
    # no cluster here: a stand-in sbatch keeps the script it is given and refuses it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/job.sh"\necho refused >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that it exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "model.dropout=0.0,0.1"]
    args += ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    proc = run_cli(args, tmp_path, cache_dir, check=False)
    assert proc.returncode != 0 and "refused" in proc.stderr
    script = (bin_dir / "job.sh").read_text().splitlines()
    (sweep,) = (tmp_path / "multirun").iterdir()
    for line in [
        "#SBATCH --array=0-1%2",  # the two jobs, both at once
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=240",
        "#SBATCH --partition=gpu",
        f"#SBATCH --output={sweep}/.submitit/%A_%a/%A_%a_0_log.out",  # in the sweep's folder
    ]:
        assert line in script
    assert script[-1].startswith("srun ") and script[-1].endswith(f"{sweep}/.submitit/%j")


def test_an_optuna_search_runs_its_trials_and_summarizes_them(tmp_path, cache_dir):
    run_cli(
        [
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            *QUICK,
        ],
        tmp_path,
        cache_dir,
    )
    (sweep,) = (p for p in (tmp_path / "optuna" / "fingpt").iterdir() if p.is_dir())
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 2 and all("optimizer.lr=" in r["overrides"] for r in rows)
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
    study = optuna.load_study(study_name="fingpt", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(t.value for t in study.trials) == sorted(float(r["val_bpb"]) for r in rows)


def test_two_processes_started_at_once_search_one_optuna_study(tmp_path, cache_dir):
    args = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    cmd, env = cli([*args, *QUICK], tmp_path, cache_dir)
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    procs = []
    for i in range(2):
        with (tmp_path / f"out{i}.txt").open("w") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"out{i}.txt").read_text()[-5000:]

    study = optuna.load_study(study_name="fingpt", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # no trial twice
    # one folder per process, each with its two jobs; the study's summary lists all four
    study_dir = tmp_path / "optuna" / "fingpt"
    sweeps = [p for p in study_dir.iterdir() if p.is_dir()]
    jobs = {p.parent for s in sweeps for p in s.glob("*/result.json")}
    assert len(sweeps) == 2 and len(jobs) == 4
    rows = list(csv.DictReader((study_dir / "study_summary.csv").open()))
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert {r["state"] for r in rows} == {"COMPLETE"} and {Path(r["run"]) for r in rows} == jobs
    values = {t.number: t.value for t in study.trials}
    for row in rows:
        result = json.loads((Path(row["run"]) / "result.json").read_text())
        assert float(row["val_bpb"]) == pytest.approx(values[int(row["trial"])])
        assert result["val_bpb"] == pytest.approx(values[int(row["trial"])])
    assert [float(r["val_bpb"]) for r in rows] == sorted(float(r["val_bpb"]) for r in rows)
    assert "4 trials, 4 complete" in (study_dir / "study_summary.md").read_text()
    best = json.loads((Path(rows[0]["run"]) / "result.json").read_text())["bundle"]
    assert (Path(os.environ["FINGPT_MODELS_DIR"]) / "latest").resolve() == Path(best).resolve()
