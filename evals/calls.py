"""The data of the fingpt_calls task: calls read through fingpt's own `Corpus` (duplicates and
empty calls dropped), so lm-eval scores the same texts as fingpt-evaluate does."""

import re

import datasets

from fingpt.data.corpus import Corpus
from fingpt.errors import DataError


def load(path: str | None = None, text_column: str = "content", **_) -> datasets.DatasetDict:
    """Every call of `path` as the test split; lm-eval also passes its model arguments here."""
    if not path:
        raise DataError(
            'fingpt_calls needs a file of calls to score: add --metadata \'{"path": "calls.parquet"}\''
        )
    texts = list(Corpus.from_path(path, text_column=text_column).texts())
    if not texts:
        raise DataError(f"{path}: no calls to score")
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts})})


def process_results(doc: dict, results: list[float]) -> dict:
    (loglikelihood,) = results  # natural log, summed over the call's tokens
    words = len(re.split(r"\s+", doc["text"]))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
