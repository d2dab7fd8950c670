"""Prepare a corpus: split calls, train the tokenizer on the training split, write token shards.

    python -m fingpt.data.prepare data=ectsum            (or: fingpt-prepare data=ectsum)

The output is a folder keyed by the fingerprint of (sources, splits, tokenizer config):
`tokenizer.json`, `<split>_<n>.bin` token shards and `manifest.json`. A second run with the
same config finds it and returns at once. It is written to a temporary folder renamed at the
end, so a crash never leaves a folder that a later run trusts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fingpt.cli import run_hydra, user_errors
from fingpt.config import CONF_DIR
from fingpt.data.corpus import SPLITS, Corpus
from fingpt.errors import DataError
from fingpt.files import new_folder, short_hash
from fingpt.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENCODE_BATCH = 64  # calls per encode_batch call: the Rust tokenizer spreads a batch over cores


@dataclass
class Prepared:
    """A prepared folder with what the training stage needs of it, read once."""

    folder: Path
    manifest: dict  # sizes of each split, token shards, dtype, vocab_size, fingerprint
    tokenizer: Tokenizer

    @classmethod
    def load(cls, folder: str | Path) -> Prepared:
        """A folder prepared earlier."""
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise DataError(f"{folder} holds no manifest.json: it is not prepared data; run fingpt-prepare")
        manifest = json.loads(path.read_text())
        return cls(folder, manifest, load_tokenizer(folder / manifest["tokenizer"]))


class ShardWriter:
    """Appends tokens of one split to `<split>_000.bin`, `<split>_001.bin`, ..."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.file = None
        self.calls = self.tokens = self.bytes = 0

    def write(self, ids: list[int], text_bytes: int) -> None:
        array = np.asarray(ids, dtype=self.dtype)
        while len(array):
            if self.file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            self.file.write(array[:room].tobytes())
            self.shards[-1]["tokens"] += len(array[:room])
            array = array[room:]
        self.calls += 1
        self.tokens += len(ids)
        self.bytes += text_bytes

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self.file = (self.folder / name).open("wb")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def summary(self) -> dict:
        return {"calls": self.calls, "tokens": self.tokens, "bytes": self.bytes, "shards": self.shards}


def _build_tokenizer(tokenizer_cfg: DictConfig, corpus: Corpus) -> Tokenizer:
    """Load the given tokenizer file, or train one on the training split only."""
    from fingpt.config import check, instantiate

    if tokenizer_cfg.get("path"):
        return load_tokenizer(tokenizer_cfg.path)
    train = instantiate({k: v for k, v in tokenizer_cfg.items() if k != "path"}, _partial_=True)
    try:
        return train(corpus.texts("train"))
    except DataError:  # the corpus's own, raised as the tokenizer reads it
        raise
    except (ValueError, TypeError) as e:  # a setting out of range or of the wrong type: vocab_size
        raise DataError(f"tokenizer: {e}: {check('tokenizer')}") from e


def fingerprint(data: DictConfig, tokenizer_cfg: DictConfig, corpus: Corpus) -> str:
    key = {
        "version": FORMAT_VERSION,
        "sources": corpus.fingerprint(),
        "splits": [corpus.val_fraction, corpus.test_fraction],
        "source_config": OmegaConf.to_container(data.sources, resolve=True),
        "tokenizer": OmegaConf.to_container(tokenizer_cfg, resolve=True),
        "tokenizer_file": load_tokenizer(tokenizer_cfg.path).hash if tokenizer_cfg.get("path") else None,
        "shard_tokens": data.get("shard_tokens"),
    }
    return short_hash(key)


def prepare(data: DictConfig, tokenizer_cfg: DictConfig, cache_dir: str | Path) -> Prepared:
    """The prepared data of this config, prepared first unless it is cached."""
    corpus = Corpus(data)
    key = fingerprint(data, tokenizer_cfg, corpus)
    out = Path(cache_dir) / f"{data.name}-{key}"
    if (out / "manifest.json").is_file():
        log.info("reusing prepared data %s", out)
        return Prepared.load(out)

    start = time.perf_counter()
    with new_folder(out) as tmp:  # another process preparing the same folder at once is harmless
        tokenizer = _build_tokenizer(tokenizer_cfg, corpus)
        tokenizer.save(tmp / "tokenizer.json")
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        shard_tokens = int(data.get("shard_tokens") or 2**30)
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        _encode(corpus, tokenizer, writers)
        for writer in writers.values():
            writer.close()
        splits = {s: w.summary() for s, w in writers.items() if w.calls}
        if not splits:
            where = ", ".join(str(getattr(s, "path", name)) for name, s in corpus.sources.items())
            raise DataError(f"{where} holds no calls: is it the right file, and not empty?")
        for required in ("train", "validation"):
            if required not in splits:
                raise DataError(
                    f"the {required} split of data {data.name!r} is empty: raise data.val_fraction "
                    f"(now {corpus.val_fraction}) or add a source with split: {required}"
                )
        manifest = {
            "version": FORMAT_VERSION,
            "name": data.name,
            "fingerprint": key,
            "source_fingerprint": corpus.fingerprint(),
            "tokenizer": "tokenizer.json",
            "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": np.dtype(dtype).name,
            "splits": splits,
            "duplicates_dropped": corpus.duplicates,
            "unknown_characters": dict(getattr(tokenizer, "unknown", {})),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    seconds = time.perf_counter() - start
    mb = sum(s["bytes"] for s in splits.values()) / 1e6
    log.info("prepared %s in %.1f s (%.1f MB/s)", out, seconds, mb / seconds)
    for split, s in splits.items():
        log.info("  %-10s %6d calls %12d tokens %12d bytes", split, s["calls"], s["tokens"], s["bytes"])
    return Prepared(out, manifest, tokenizer)


def _encode(corpus: Corpus, tokenizer: Tokenizer, writers: dict[str, ShardWriter]) -> None:
    from tqdm import tqdm

    def flush(batch: list[tuple[str, str]]) -> None:
        for (split, text), ids in zip(batch, tokenizer.encode_batch([t for _, t in batch]), strict=True):
            writers[split].write([tokenizer.eot_id, *ids], len(text.encode()))

    batch: list[tuple[str, str]] = []
    for split, doc in tqdm(corpus, desc=f"encoding {corpus.name}", unit=" calls", disable=None):
        batch.append((split, doc.text))
        if len(batch) == ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)


def main() -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        with user_errors():
            print(prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir).folder)

    run_hydra(run)


if __name__ == "__main__":
    main()
