import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real calls committed with the tests (MAEC and Earnings-21/22, CC BY-SA 4.0; corpus/NOTICE.md),
# laid out as a data folder: what every test reads.
DATA_DIR = ROOT / "tests" / "corpus"
# The full corpora (make data; the Makefile points FINGPT_DATA_DIR at them): read only by the
# tests marked @pytest.mark.corpora(NAME, ...), skipped where those corpora are not there.
CORPORA_DIR = Path(os.environ.get("FINGPT_DATA_DIR", ROOT / "data"))
CORPUS_FILES = {
    "ectsum": "ectsum/validation.parquet",
    "maec": "maec/calls.parquet",
    "earnings21_22": "earnings21_22/calls.parquet",
    "sp500_sample": "sp500_sample/input.txt",
}


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("corpora")
    names = marker.args if marker else ()
    if missing := [name for name in names if not (CORPORA_DIR / CORPUS_FILES[name]).is_file()]:
        pytest.skip(f"needs the corpora {', '.join(missing)} in FINGPT_DATA_DIR ({CORPORA_DIR}): make data")


@pytest.fixture(autouse=True, scope="session")
def private_folders(tmp_path_factory):
    """No test exports into the checkout's models/ (make demo serves models/demo), and none reads
    the full corpora unless it is marked to: FINGPT_DATA_DIR is the sample."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINGPT_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
        patch.setenv("FINGPT_DATA_DIR", str(DATA_DIR))
        yield


@pytest.fixture(scope="session")
def sample_calls() -> list[str]:
    """The texts of the sample's calls: MAEC's, then Earnings-21/22's."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(DATA_DIR / name / "calls.parquet") for name in ("maec", "earnings21_22")]
    return [text for table in tables for text in table["content"].to_pylist()]


@pytest.fixture(scope="session")
def bpe(sample_calls):
    from fingpt.tokenizer import BPETokenizer

    return BPETokenizer.train(sample_calls, vocab_size=8192)


def compose(config_name: str, overrides: list[str]):
    """The project's real Hydra config as the command line composes it, on the sample (a later
    paths.data_dir= in `overrides` wins)."""
    from fingpt.config import compose as compose_config

    return compose_config(config_name, [f"paths.data_dir={DATA_DIR}", *overrides])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Prepare a data config (cc_by_sa, maec, ...) of the sample, or of the full corpora for a
    test marked `corpora`, once per session: its `Prepared` data."""
    from fingpt.data.prepare import prepare

    cache = tmp_path_factory.mktemp("prepared")
    folders = {}

    def get(data: str, tokenizer: str = "bpe", data_dir: Path = DATA_DIR):
        if (data, tokenizer, data_dir) not in folders:
            overrides = [f"data={data}", f"tokenizer={tokenizer}", f"paths.cache_dir={cache}"]
            cfg = compose("prepare", [*overrides, f"paths.data_dir={data_dir}"])
            folders[data, tokenizer, data_dir] = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
        return folders[data, tokenizer, data_dir]

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
    """A real 12-step training run of the tiny model on the sample (data=cc_by_sa): its folder."""
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
