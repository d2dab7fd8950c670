from pathlib import Path

import pytest

from tests.helpers import CORPORA_DIR, DATA_DIR, compose, train_config

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
        patch.setenv("HYDRA_FULL_ERROR", "1")  # as every command line sets it (fingpt.cli.run_hydra)
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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


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


@pytest.fixture(scope="session")
def demo_training(tmp_path_factory, cache_dir):
    """What make demo trains (experiment=cpu_demo: torch.compile, Muon, WSD, bf16-mixed where
    bfloat16 is native; rotary, RMSNorm, ReLU², qk_norm), 20 steps on the sample, exported as a
    bundle and a Hugging Face folder: its composed config, and what train printed. Its layout is
    the one llama.cpp runs (tests/test_gguf.py, tests/serving/test_llama_backend.py)."""
    import contextlib
    import io

    from fingpt.train import train

    demo = ["experiment=cpu_demo", "model=modern_tiny", "data=cc_by_sa", "trainer.max_time=null"]
    rest = ["model.block_size=128", "export.format=hf", "data.loader.val_windows=8"]
    steps = ["trainer.max_steps=20", "trainer.val_check_interval=10"]
    cfg = train_config(tmp_path_factory.mktemp("demo"), cache_dir, [*demo, *rest, *steps])
    composed, printed = cfg.copy(), io.StringIO()  # train resolves some values in place (precision)
    with contextlib.redirect_stdout(printed):
        train(cfg)
    return composed, printed.getvalue()


@pytest.fixture(scope="session")
def demo_run(demo_training) -> Path:
    return Path(demo_training[0].paths.output_dir)


@pytest.fixture(scope="session")
def demo_bundle(demo_run) -> Path:
    import json

    return Path(json.loads((demo_run / "result.json").read_text())["bundle"])
