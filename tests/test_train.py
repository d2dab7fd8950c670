import csv
import json
import os
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fingpt.checkpoint import load_model
from fingpt.config import CONF_DIR
from fingpt.lit_module import warmup_cosine
from fingpt.model import GPT
from fingpt.train import train
from tests.conftest import compose, run_cli, train_config
from tests.helpers import read_records

GROUPS = sorted(
    p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "hparams_search")
)


@pytest.mark.parametrize(
    "override",
    [f"{group}={option.stem}" for group in GROUPS for option in sorted((CONF_DIR / group).glob("*.yaml"))],
)
def test_every_config_group_composes(override):
    cfg = compose("train", [override, "data.path=x.txt"] if "data=local" in override else [override])
    assert cfg.model.n_embd % cfg.model.n_head == 0
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_the_sweep_and_tool_configs_compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", ["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {
        "optimizer.lr",
        "model.dropout",
        "optimizer.weight_decay",
    }
    assert compose("evaluate", ["model_path=x.ckpt", "data.path=x.txt"]).stride is None
    assert compose("prepare", []).tokenizer.vocab_size == 8192


@pytest.mark.parametrize(
    ("precision", "fused"),
    [("32-true", True), ("bf16-true", True), ("bf16-mixed", False), ("16-mixed", False)],
)
def test_adamw_is_fused_except_under_autocast_where_lightning_must_clip_unfused(precision, fused):
    assert compose("train", [f"precision={precision}"]).optimizer.fused is fused


def test_seed_char_composes_to_the_original_hyperparameters():
    cfg = compose("train", ["experiment=seed_char"])
    assert cfg.tokenizer._target_.endswith("CharTokenizer.train") and cfg.data.name == "sp500_sample"
    assert (cfg.data.loader.batch_size, cfg.trainer.max_steps, cfg.optimizer.lr) == (32, 5000, 3e-4)
    assert cfg.scheduler.warmup_steps == 0 and cfg.scheduler.min_lr_ratio == 1.0  # constant
    model = GPT(instantiate(cfg.model, vocab_size=94))  # the original's 94 characters
    assert model.num_parameters() == 10_715_998
    assert (model.config.block_size, model.config.dropout, model.config.activation) == (
        8,
        0.2,
        "relu",
    )


def test_the_schedule_warms_up_then_decays_to_its_floor():
    lrs = [warmup_cosine(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for step in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "gpt2"])
def test_fast_dev_run_of_each_model_size(size, tmp_path, cache_dir):
    cfg = train_config(
        tmp_path, cache_dir, [f"model={size}", "debug=fast_dev_run", "data.loader.batch_size=2"]
    )
    cfg.model.block_size = min(cfg.model.block_size, 256)
    train(cfg)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_fast_dev_run_of_each_cpu_precision(precision, tmp_path, cache_dir):
    train(train_config(tmp_path, cache_dir, [f"precision={precision}", "debug=fast_dev_run"]))


def scalars(run_dir: Path) -> dict[str, list]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_short_run_validates_at_its_end_and_logs_everything(trained_run):
    logged = scalars(trained_run)
    assert {
        "train/loss",
        "train/grad_norm",
        "val/loss",
        "val/bpb",
        "val/ppl",
        "lr-AdamW/pg1",
    } <= set(logged)
    assert any(tag.endswith("items_per_sec") for tag in logged)  # tokens per second
    # Lightning logs a validation inside fit at the step before: every 5 steps, at the last step
    # (11), and again for the best checkpoint once fit ends (12)
    assert [step for step, _ in logged["val/bpb"]] == [4, 9, 11, 12]
    losses = [loss for _, loss in logged["train/loss"]]
    assert losses[-1] < losses[0] - 0.5
    assert logged["hp/val_bpb"][0][1] == pytest.approx(
        json.loads((trained_run / "result.json").read_text())["val_bpb"]
    )
    events = EventAccumulator(str(trained_run))
    events.Reload()
    assert "sample/text_summary" in events.Tags()["tensors"]
    checkpoints = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert checkpoints[0].startswith("best-step") and "last.ckpt" in checkpoints


def test_a_checkpoint_alone_rebuilds_the_model_and_its_tokenizer(trained_run):
    loaded = load_model(trained_run)
    state = torch.load(sorted((trained_run / "checkpoints").glob("best-*.ckpt"))[0], weights_only=True)
    assert torch.equal(loaded.model.wte.weight, state["state_dict"]["model.wte.weight"])
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("EPS of $0.98")) == "EPS of $0.98"
    assert loaded.info["steps"] == 12 and loaded.info["val_bpb"] > 0


def test_a_two_job_multirun_writes_two_runs_and_a_summary(tmp_path, cache_dir):
    proc = run_cli(
        ["-m", "model.dropout=0.0,0.1", "trainer.max_steps=3", "trainer.val_check_interval=3"],
        tmp_path,
        cache_dir,
    )
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


def test_a_killed_run_resumes_at_the_same_step_with_the_same_batches(tmp_path, cache_dir):
    common = [
        "trainer.max_steps=16",
        "trainer.val_check_interval=5",
        "+callbacks.recorder._target_=tests.helpers.BatchRecorder",
    ]
    run_cli(
        [*common, "run_name=whole", f"+callbacks.recorder.path={tmp_path}/whole"],
        tmp_path,
        cache_dir,
    )
    killed = run_cli(
        [
            *common,
            "run_name=killed",
            f"+callbacks.recorder.path={tmp_path}/killed",
            "+callbacks.kill._target_=tests.helpers.KillAt",
            "+callbacks.kill.step=12",
        ],
        tmp_path,
        cache_dir,
        check=False,
    )
    assert killed.returncode == -9
    run_cli(
        [
            *common,
            "run_name=killed",
            "ckpt_path=last",
            f"+callbacks.recorder.path={tmp_path}/resumed",
        ],
        tmp_path,
        cache_dir,
    )
    whole = {r["step"]: r for r in read_records(tmp_path / "whole")}
    resumed = read_records(tmp_path / "resumed")
    assert resumed[0]["step"] == 10  # the newest checkpoint of the killed run
    assert [r["step"] for r in resumed] == list(range(10, 16))
    for r in resumed:
        assert r["batch"] == whole[r["step"]]["batch"]
        assert r["lr"] == pytest.approx(whole[r["step"]]["lr"])
        assert r["loss"] == pytest.approx(whole[r["step"]]["loss"], abs=1e-4)
    logged = scalars(tmp_path / "killed")
    assert max(step for step, _ in logged["val/bpb"]) == 16  # one run folder, one continued curve


def test_ddp_on_two_cpu_processes_trains_and_ranks_see_different_data(tmp_path, cache_dir):
    run_cli(
        [
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "+callbacks.recorder._target_=tests.helpers.BatchRecorder",
            f"+callbacks.recorder.path={tmp_path}/ddp",
        ],
        tmp_path,
        cache_dir,
    )
    rank0, rank1 = read_records(tmp_path / "ddp", 0), read_records(tmp_path / "ddp", 1)
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == [0, 1, 2, 3]
    windows0 = {tuple(w) for r in rank0 for w in r["batch"]}
    windows1 = {tuple(w) for r in rank1 for w in r["batch"]}
    assert not windows0 & windows1


def test_an_optuna_search_runs_its_trials_and_summarizes_them(tmp_path, cache_dir):
    run_cli(
        [
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        ],
        tmp_path,
        cache_dir,
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 2 and all("optimizer.lr=" in r["overrides"] for r in rows)
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()


def test_the_csv_logger_gets_the_curves_and_the_final_score(tmp_path, cache_dir):
    cfg = train_config(
        tmp_path, cache_dir, ["logger=csv", "trainer.max_steps=4", "trainer.val_check_interval=4"]
    )
    val_bpb = train(cfg)
    with open(Path(cfg.paths.output_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train/loss"]) for r in rows if r["train/loss"]] and [r for r in rows if r["val/bpb"]]
    (final,) = [r for r in rows if r["hp/val_bpb"]]
    assert float(final["hp/val_bpb"]) == pytest.approx(val_bpb) and final["step"] == "4"
    assert "model" in (Path(cfg.paths.output_dir) / "hparams.yaml").read_text()


def test_debug_overfit_drives_the_loss_of_one_batch_to_zero(tmp_path, cache_dir):
    cfg = train_config(tmp_path, cache_dir, ["debug=overfit", "logger=csv"])
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert losses[0] > 8.5 and losses[-1] < 0.1  # from ln(8192) = 9.0, chance


def test_user_errors_in_train_py_are_one_line_and_exit_2(tmp_path, cache_dir):
    for args, message in (
        (["data=local"], "data 'local' needs data.path"),
        (["ckpt_path=last"], "ckpt_path=last: no checkpoints/last.ckpt under"),
    ):
        proc = run_cli(args, tmp_path, cache_dir, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
        assert message in proc.stderr


def test_ckpt_path_last_resumes_the_named_run_not_the_newest(tmp_path):
    from fingpt.train import resolve_checkpoint

    for age, run in ((100, "a"), (0, "b")):  # b is the newer
        (tmp_path / run / "checkpoints").mkdir(parents=True)
        (tmp_path / run / "checkpoints" / "last.ckpt").touch()
        os.utime(tmp_path / run / "checkpoints" / "last.ckpt", (time.time() - age,) * 2)
    assert resolve_checkpoint("last", tmp_path, tmp_path / "a") == tmp_path / "a/checkpoints/last.ckpt"
    assert resolve_checkpoint("last", tmp_path, tmp_path / "new") == tmp_path / "b/checkpoints/last.ckpt"


def test_a_progress_bar_can_be_switched_off(tmp_path, cache_dir):
    train(
        train_config(
            tmp_path,
            cache_dir,
            [
                "debug=fast_dev_run",
                "trainer.enable_progress_bar=false",
                "+callbacks.progress_bar._target_=lightning.pytorch.callbacks.TQDMProgressBar",
            ],
        )
    )


def test_weight_decay_applies_to_the_weight_matrices_only():
    import lightning as L

    from fingpt.lit_module import GPTLitModule

    module = GPTLitModule(
        model={"vocab_size": 64, "block_size": 16, "n_embd": 32, "n_head": 2, "n_layer": 2},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.1},
        scheduler={"warmup_steps": 1, "min_lr_ratio": 0.1},
        dataset_dir="unused",
        tokens_per_byte=0.3,
    )
    module.trainer = L.Trainer(max_steps=10, logger=False)
    decayed, others = module.configure_optimizers()["optimizer"].param_groups
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert (decayed["weight_decay"], others["weight_decay"]) == (0.1, 0.0)
    assert {names[id(p)] for p in decayed["params"]} == {
        n for n, p in module.model.named_parameters() if p.dim() == 2
    }
    assert "wte.weight" in names.values() and all(p.dim() == 1 for p in others["params"])


def test_the_fsdp_trainer_wraps_each_block_and_keeps_parameter_names():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from fingpt.model import Block

    strategy = instantiate(compose("train", ["trainer=fsdp"]).trainer.strategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy.kwargs["use_orig_params"] is True
