import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FINGPT_DATA_DIR", ROOT.parent / "shared" / "data"))
SEPARATOR = "--- NEXT EARNINGS CALL ---"


@pytest.fixture(autouse=True, scope="session")
def private_models_dir(tmp_path_factory):
    """No test exports into the checkout's models/: make demo serves models/latest."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINGPT_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
        yield


@pytest.fixture(scope="session")
def sp500_calls() -> list[str]:
    path = DATA_DIR / "sp500_sample" / "input.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found: set FINGPT_DATA_DIR to the folder of the corpora")
    return [call.strip("\n") for call in path.read_text(encoding="utf-8").split(SEPARATOR)]


@pytest.fixture(scope="session")
def bpe(sp500_calls):
    from fingpt.tokenizer import BPETokenizer

    return BPETokenizer.train(sp500_calls, vocab_size=8192)


def compose(config_name: str, overrides: list[str]):
    """The project's real Hydra config as the command line composes it, on the test corpora."""
    from fingpt.config import compose as compose_config

    return compose_config(config_name, [f"paths.data_dir={DATA_DIR}", *overrides])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, sp500_calls):
    """Prepare a data config (sp500_sample, ectsum, all, ...) once per session: its folder."""
    from fingpt.data.prepare import prepare

    cache = tmp_path_factory.mktemp("prepared")
    folders = {}

    def get(data: str, tokenizer: str = "bpe"):
        if (data, tokenizer) not in folders:
            cfg = compose("prepare", [f"data={data}", f"tokenizer={tokenizer}", f"paths.cache_dir={cache}"])
            folders[data, tokenizer] = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
        return folders[data, tokenizer]

    return get


FAST = [  # a tiny, quick run: the settings every training test starts from
    "model=tiny",
    "model.block_size=32",
    "data.loader.batch_size=8",
    "data.loader.val_batch_size=32",
    "trainer.limit_val_batches=4",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
    "trainer.log_every_n_steps=1",
    "sample.tokens=8",
    "scheduler.warmup_steps=2",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def train_config(tmp_path, cache_dir, overrides: list[str]):
    cfg = compose(
        "train",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.log_dir={tmp_path}",
            f"paths.models_dir={tmp_path}/models",
            f"+paths.run_dir={tmp_path}/run",
            *FAST,
            *overrides,
        ],
    )
    cfg.paths.output_dir = cfg.paths.run_dir
    return cfg


def cli(args: list[str], tmp_path, cache_dir) -> tuple[list[str], dict]:
    """The command and environment of `python train.py ARGS` with the fast settings and a private
    log dir, to run in ROOT."""
    import sys

    env = {**os.environ, "FINGPT_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "train.py",
        *args,
        *FAST,
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={tmp_path}",
    ]
    return cmd, env


def run_cli(args: list[str], tmp_path, cache_dir, check: bool = True, timeout: int = 300):
    """`python train.py ARGS` in a fresh process, with the fast settings and a private log dir."""
    import subprocess

    cmd, env = cli(args, tmp_path, cache_dir)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cache_dir):
    """A real 12-step training run of the tiny model on sp500_sample: its folder."""
    from fingpt.train import train

    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = train_config(tmp_path, cache_dir, ["trainer.max_steps=12", "trainer.val_check_interval=5"])
    train(cfg)
    return Path(cfg.paths.output_dir)


@pytest.fixture(scope="session")
def bundle(trained_run, tmp_path_factory):
    """The trained tiny model, exported."""
    from fingpt.export import export

    return export(trained_run, tmp_path_factory.mktemp("bundles") / "tiny")
