"""A corpus: the calls of every source of a data config, each with its split, duplicates and
empty calls dropped. What preparation encodes and what evaluation scores."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from fingpt.config import CONF_DIR, instantiate
from fingpt.data.sources import Document
from fingpt.errors import DataError

SPLITS = ("train", "validation", "test")


def split_of(doc_id: str, val_fraction: float, test_fraction: float) -> str:
    """A call's split, from the hash of its id alone: stable across runs and machines."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    if u < val_fraction:
        return "validation"
    return "test" if u < val_fraction + test_fraction else "train"


class Corpus:
    """The calls of every source of a data config, each with its split, duplicates dropped."""

    def __init__(self, data: DictConfig) -> None:
        if not data.get("sources"):
            raise DataError(f"data config {data.get('name')!r} lists no sources: add one under data.sources")
        self.name = data.name
        self.val_fraction = float(data.get("val_fraction", 0.1))
        self.test_fraction = float(data.get("test_fraction", 0.0))
        if not (
            0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1
        ):
            raise DataError(
                f"data.val_fraction ({self.val_fraction}) and data.test_fraction ({self.test_fraction}) "
                "must be >= 0 and leave some calls for training"
            )
        try:
            self.sources = {name: instantiate(cfg) for name, cfg in data.sources.items()}
        except MissingMandatoryValue as e:  # data=local without data.path
            raise DataError(
                f"data {self.name!r} needs {e.full_key.replace(f'sources.{self.name}.', '')}: add "
                "data.path=PATH (a .txt, a folder of .txt, a .jsonl or a .parquet)"
            ) from e
        self.duplicates = 0

    @classmethod
    def from_path(cls, path: str | Path, text_column: str = "content") -> Corpus:
        """The calls of one file or folder, read as `data=local data.path=PATH` reads them."""
        root = OmegaConf.create({"data": OmegaConf.load(CONF_DIR / "data" / "local.yaml")})
        root.data.path, root.data.text_column = str(path), text_column
        return cls(root.data)

    def fingerprint(self) -> dict:
        return {name: source.fingerprint() for name, source in self.sources.items()}

    def __iter__(self) -> Iterator[tuple[str, Document]]:
        seen: set[bytes] = set()
        self.duplicates = 0
        for source in self.sources.values():
            for doc in source:
                digest = hashlib.sha1(doc.text.encode()).digest()
                if digest in seen or not doc.text.strip():
                    self.duplicates += digest in seen
                    continue
                seen.add(digest)
                split = source.split or split_of(doc.id, self.val_fraction, self.test_fraction)
                if split not in SPLITS:
                    raise DataError(f"source split {split!r} is not one of {SPLITS}")
                yield split, doc

    def texts(self, split: str | None = None) -> Iterator[str]:
        """The texts of one split's calls; None: of every call."""
        if split not in (None, *SPLITS):
            raise DataError(f"split must be one of {', '.join(SPLITS)} (or null: every call), got {split!r}")
        return (doc.text for s, doc in self if split in (None, s))
