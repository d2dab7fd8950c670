import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fingpt.checkpoint import load_model
from fingpt.config import CONF_DIR
from fingpt.lit_module import fused_optimizer
from fingpt.model import GPT
from fingpt.optim import WarmupCosine, WarmupStableDecay
from fingpt.train import choose_precision, main, train
from tests.callbacks import read_records
from tests.helpers import cli, compose, run_cli, train_config

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


@pytest.mark.parametrize("ablation", sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml")))
def test_every_ablation_of_the_demo_builds_its_model_and_optimizer(ablation):
    # an ablation swaps a group under the experiment's own settings: those must still apply
    cfg = compose("train", ["experiment=cpu_demo", f"ablation={ablation}"])
    model = GPT(instantiate(cfg.model, vocab_size=cfg.tokenizer.vocab_size))
    optimizer = instantiate(cfg.optimizer)(model)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert instantiate(cfg.scheduler)(0, 0.0) > 0


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
    cfg = compose("train", [f"precision={precision}"])
    assert "fused" not in cfg.optimizer  # decided by the module from the trainer's precision
    assert fused_optimizer(cfg.trainer.precision) is fused


GPT2_LAYOUT = {
    "bias": True,
    "mlp": "gelu",
    "pos_emb": "learned",
    "norm": "layernorm",
    "qk_norm": False,
    "zero_init_proj": False,
}
MODERN_LAYOUT = {
    "bias": False,
    "mlp": "relu2",
    "pos_emb": "rope",
    "rope_base": 10000.0,
    "norm": "rmsnorm",
    "qk_norm": True,
    "zero_init_proj": True,
}
PRESETS = {  # block_size, n_embd, n_head, n_layer, dropout; layout
    "tiny": ((128, 96, 4, 4, 0.0), GPT2_LAYOUT),
    "small": ((256, 384, 6, 6, 0.2), GPT2_LAYOUT),
    "medium": ((512, 512, 8, 8, 0.1), GPT2_LAYOUT),
    "gpt2": ((1024, 768, 12, 12, 0.0), GPT2_LAYOUT),
    "modern_tiny": ((128, 128, 4, 4, 0.0), MODERN_LAYOUT),
    "modern_small": ((256, 384, 6, 6, 0.2), MODERN_LAYOUT),
}


@pytest.mark.parametrize("size", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_each_model_preset_is_its_size_on_its_layout(size):
    shape, layout = PRESETS[size]
    sizes = dict(zip(("block_size", "n_embd", "n_head", "n_layer", "dropout"), shape, strict=True))
    common = {"_target_": "fingpt.model.GPTConfig", "tie_weights": True, "logit_softcap": None}
    assert OmegaConf.to_container(compose("train", [f"model={size}"]).model) == common | sizes | layout


def test_seed_char_composes_to_the_original_hyperparameters():
    cfg = compose("train", ["experiment=seed_char"])
    assert cfg.tokenizer._target_.endswith("CharTokenizer.train") and cfg.data.name == "sp500_sample"
    assert (cfg.data.loader.batch_size, cfg.trainer.max_steps, cfg.optimizer.lr) == (32, 5000, 3e-4)
    assert cfg.scheduler.warmup_steps == 0 and cfg.scheduler.min_lr_ratio == 1.0  # constant
    model = GPT(instantiate(cfg.model, vocab_size=94))  # v2.py's 94 characters
    assert model.num_parameters() == 10_715_998
    assert (model.config.block_size, model.config.dropout, model.config.mlp) == (
        8,
        0.2,
        "relu",
    )


def test_the_cosine_schedule_warms_up_then_decays_to_its_floor_at_the_end_of_the_budget():
    schedule = WarmupCosine(warmup_steps=10, min_lr_ratio=0.1)
    lrs = [schedule(step, progress=min(1.0, step / 110)) for step in range(120)]
    assert lrs[0] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 110)))
    assert lrs[55] == pytest.approx(0.55)  # half the budget: halfway down
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_the_wsd_schedule_holds_the_rate_then_decays_linearly_over_its_last_fraction():
    schedule = WarmupStableDecay(warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    lrs = [schedule(step, progress=step / 100) for step in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10:81] == pytest.approx([1.0] * 71)  # stable until 80% of the budget
    assert lrs[90] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("schedule", "field", "value"),
    [
        (WarmupCosine, "warmup_steps", -1),
        (WarmupCosine, "min_lr_ratio", 1.5),
        (WarmupStableDecay, "decay_fraction", 0.0),
    ],
)
def test_schedules_refuse_bad_settings_naming_them(schedule, field, value):
    with pytest.raises(ValueError, match=f"scheduler.{field} must be"):
        schedule(**{field: value})


def fast_dev_run(tmp_path, cache_dir, overrides: list[str]) -> dict:
    """One training batch of a real config: what it recorded (its shape, loss and lr)."""
    recorder = [
        "+callbacks.recorder._target_=tests.callbacks.BatchRecorder",
        f"+callbacks.recorder.path={tmp_path}/b",
    ]
    cfg = train_config(tmp_path, cache_dir, ["debug=fast_dev_run", *recorder, *overrides])
    cfg.model.block_size = min(cfg.model.block_size, 64)  # the preset's layers, a shorter window
    assert math.isnan(train(cfg))  # no score: fast_dev_run skips the checkpoint and its validation
    (step,) = read_records(tmp_path / "b")
    return step


@pytest.mark.parametrize("size", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_fast_dev_run_of_each_model_preset(size, tmp_path, cache_dir):
    step = fast_dev_run(tmp_path, cache_dir, [f"model={size}", "data.loader.batch_size=2"])
    assert step["step"] == 0 and len(step["batch"]) == 2
    # an initialised model is about as unsure as a uniform guess over the 8192 tokens
    assert abs(step["loss"] - math.log(8192)) < 1.0, step["loss"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_fast_dev_run_of_each_cpu_precision(precision, tmp_path, cache_dir):
    step = fast_dev_run(tmp_path, cache_dir, [f"precision={precision}"])
    assert step["step"] == 0 and len(step["batch"]) == 8 and step["lr"] > 0
    assert abs(step["loss"] - math.log(8192)) < 1.0, step["loss"]


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_mixed_only_where_bfloat16_is_native(native, monkeypatch, caplog):
    monkeypatch.setattr("fingpt.train.native_bfloat16", lambda accelerator: native)
    auto, named = compose("train", ["precision=auto"]), compose("train", ["precision=bf16-mixed"])
    with caplog.at_level(logging.WARNING):
        choose_precision(auto)
        choose_precision(named)
    assert auto.trainer.precision == ("bf16-mixed" if native else "32-true")
    assert fused_optimizer(auto.trainer.precision) is not native
    assert named.trainer.precision == "bf16-mixed"  # asked for by name: kept, with a warning where emulated
    assert ("bfloat16: its matrix products are emulated, tens of times slower" in caplog.text) is not native


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
    assert checkpoints == ["best.ckpt", "last.ckpt"]  # fingpt.runs: each overwritten in place


def test_a_checkpoint_alone_rebuilds_the_model_and_its_tokenizer(trained_run):
    loaded = load_model(trained_run)
    state = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert torch.equal(loaded.model.wte.weight, state["state_dict"]["model.wte.weight"])
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("EPS of $0.98")) == "EPS of $0.98"
    assert loaded.card.steps == 12 and loaded.card.val_bpb > 0


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_killed_run_resumes_at_the_same_step_with_the_same_batches(optimizer, tmp_path, cache_dir):
    common = [
        f"optimizer={optimizer}",
        "trainer.max_steps=16",
        "trainer.val_check_interval=5",
        "+callbacks.recorder._target_=tests.callbacks.BatchRecorder",
    ]
    whole = [*common, f"paths.run_dir={tmp_path}/whole", f"+callbacks.recorder.path={tmp_path}/whole"]
    train(train_config(tmp_path, cache_dir, whole))  # uninterrupted, in this process
    kill = ["+callbacks.kill._target_=tests.callbacks.KillAt", "+callbacks.kill.step=12"]
    killed = run_cli(
        [*common, "run_name=killed", f"+callbacks.recorder.path={tmp_path}/killed", *kill],
        tmp_path,
        cache_dir,
        check=False,
    )
    assert killed.returncode == -9  # a process of its own, SIGKILLed mid-run
    resume = [
        *common,
        f"paths.run_dir={tmp_path}/killed",
        "ckpt_path=last",
        f"+callbacks.recorder.path={tmp_path}/resumed",
    ]
    train(train_config(tmp_path, cache_dir, resume))  # run_name=killed ckpt_path=last, in this process
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
    # the resumed run overwrote its best.ckpt and last.ckpt: no best-v1.ckpt beside them
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]
    assert resumed[-1]["loss"] < whole[0]["loss"] - 0.5


def test_a_time_budget_ends_the_run_and_the_schedule_with_it(tmp_path, cache_dir, monkeypatch):
    from tests.callbacks import FakeClock

    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time", FakeClock)  # a second a step
    cfg = train_config(
        tmp_path,
        cache_dir,
        [
            "trainer.max_steps=-1",
            "trainer.max_time=00:00:00:20",
            "+callbacks.clock._target_=tests.callbacks.ClockTick",
            "trainer.val_check_interval=10",
            "scheduler=wsd",
            "scheduler.warmup_steps=2",
            "scheduler.decay_fraction=0.5",
            "export.format=none",
        ],
    )
    train(cfg)
    logged = scalars(Path(cfg.paths.output_dir))
    lrs = [lr for _, lr in logged["lr-AdamW/pg1"]]
    result = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    assert result["steps"] == 20 and len(lrs) == 20  # 20 s of the clock
    peak = cfg.optimizer.lr
    assert lrs[2:10] == [pytest.approx(peak)] * 8  # warmup, then stable for the first half of the time
    # then linear to 0 over the last half: the last step's rate is set at 19 s of the 20
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] == pytest.approx(peak * (1 - 19 / 20) / 0.5)
    # export.format=none: the best checkpoint is kept and nothing is exported
    assert "bundle" not in result and not Path(cfg.paths.models_dir).exists()
    assert Path(result["best_checkpoint"]).is_file()


def test_compiled_blocks_are_compiled_before_the_clock_of_the_budget_starts(tmp_path, cache_dir):
    watch = tmp_path / "graphs.json"
    overrides = ["compile=true", "trainer.max_steps=3", "export.format=none", "model=modern_tiny"]
    overrides += ["model.block_size=32", "+callbacks.watch._target_=tests.callbacks.CompileWatch"]
    train(train_config(tmp_path, cache_dir, [*overrides, f"+callbacks.watch.path={watch}"]))
    graphs = json.loads(watch.read_text())
    # on_fit_start compiled the blocks' forward and backward: the budget's steps compile nothing
    assert graphs["clock starts"] > 0
    assert graphs["step 0"] == graphs["step 2"] == graphs["clock starts"]


def test_validation_during_fit_scores_a_fixed_sample_and_after_fit_every_window(tmp_path, cache_dir):
    from fingpt.data.datamodule import TranscriptDataModule
    from fingpt.data.prepare import Prepared

    recorder = tmp_path / "val_windows.txt"
    overrides = ["data.loader.val_windows=6", "trainer.limit_val_batches=1.0", "trainer.max_steps=4"]
    overrides += [
        "trainer.val_check_interval=2",
        "+callbacks.counter._target_=tests.callbacks.ValidationCounter",
    ]
    train(train_config(tmp_path, cache_dir, [*overrides, f"+callbacks.counter.path={recorder}"]))
    counts = [int(n) for n in recorder.read_text().split()]
    data = Prepared.load(next(Path(cache_dir).glob("cc_by_sa-*")))
    every = len(TranscriptDataModule(data, block_size=32).val_dataloader().dataset)
    assert counts == [6, 6, every]  # steps 2 and 4 in fit, then the best checkpoint on all of it


def test_ddp_on_two_cpu_processes_trains_and_ranks_see_different_data(tmp_path, cache_dir):
    run_cli(
        [
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "+callbacks.recorder._target_=tests.callbacks.BatchRecorder",
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


def test_user_errors_in_train_py_are_one_line_and_exit_2(tmp_path, cache_dir, capsys, monkeypatch):
    """The mistakes found once Lightning is imported, through main() in this process (no 10 s of
    imports each); tests/test_cli.py runs the others through the real command line."""
    for args, message in (
        (["data=local"], "data 'local' needs data.path: add data.path=PATH"),
        (["ckpt_path=last"], "ckpt_path=last: no checkpoints/last.ckpt under"),
        (["export.format=hf", "model.logit_softcap=15"], "logit_softcap has no Hugging Face equivalent"),
        (["export.format=zip"], "export.format must be bundle, hf or none, got 'zip'"),
        (["model.n_head=7"], "GPTConfig.n_embd (96) must be divisible by n_head (7)"),
        (["model.mlp=tanh"], "GPTConfig.mlp must be one of ['gelu', 'relu', 'relu2', 'swiglu'], got 'tanh'"),
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["data.loader.val_windows=0"], "data.loader.val_windows must be an integer of at least 1, got 0"),
        (["data.loader.num_workers=-1"], "data.loader.num_workers must be an integer of at least 0, got -1"),
        (
            ["optimizer.lr=abc"],
            "optimizer: '<=' not supported between instances of 'float' and 'str': check optimizer.lr=abc",
        ),
    ):
        monkeypatch.setattr("sys.argv", cli(args, tmp_path, cache_dir)[0][1:])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and err[-1].startswith("error: ") and message in err[-1]


def test_ckpt_path_last_resumes_the_named_run_not_the_newest(tmp_path):
    from fingpt.train import resolve_checkpoint

    for age, run in ((100, "a"), (0, "b")):  # b is the newer
        (tmp_path / run / "checkpoints").mkdir(parents=True)
        (tmp_path / run / "checkpoints" / "last.ckpt").touch()
        os.utime(tmp_path / run / "checkpoints" / "last.ckpt", (time.time() - age,) * 2)
    assert resolve_checkpoint("last", tmp_path, tmp_path / "a") == tmp_path / "a/checkpoints/last.ckpt"
    assert resolve_checkpoint("last", tmp_path, tmp_path / "new") == tmp_path / "b/checkpoints/last.ckpt"


def test_a_progress_bar_can_be_switched_off(tmp_path, cache_dir, capfd):
    tqdm = "lightning.pytorch.callbacks.TQDMProgressBar"
    bar = ["debug=fast_dev_run", f"+callbacks.progress_bar._target_={tqdm}"]
    train(train_config(tmp_path / "on", cache_dir, [*bar, "trainer.enable_progress_bar=true"]))
    assert "Epoch 0: 100%" in capfd.readouterr().out
    train(train_config(tmp_path / "off", cache_dir, [*bar, "trainer.enable_progress_bar=false"]))
    assert "Epoch 0" not in capfd.readouterr().out  # the bar configured in callbacks is left out


def test_the_fsdp_trainer_wraps_each_block_and_keeps_parameter_names():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from fingpt.model import Block

    strategy = instantiate(compose("train", ["trainer=fsdp"]).trainer.strategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy.kwargs["use_orig_params"] is True
