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
