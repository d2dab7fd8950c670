import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FINGPT_DATA_DIR", ROOT.parent / "shared" / "data"))
SEPARATOR = "--- NEXT EARNINGS CALL ---"


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
            cfg = compose(
                "prepare", [f"data={data}", f"tokenizer={tokenizer}", f"paths.cache_dir={cache}"]
            )
            folders[data, tokenizer] = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
        return folders[data, tokenizer]

    return get
