"""Batches of token windows, streamed from the memory-mapped shards of a prepared folder."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, get_worker_info

from fingpt.data.prepare import Prepared
from fingpt.errors import DataError, check_count


class TokenShards:
    """The tokens of one split. Shards are mapped only while a batch is read, so the memory a
    process holds stays the same whatever the corpus size."""

    def __init__(self, folder: Path, split: dict, dtype: str) -> None:
        self.paths = [folder / shard["file"] for shard in split["shards"]]
        self.sizes = np.array([shard["tokens"] for shard in split["shards"]])
        self.dtype = np.dtype(dtype)

    def read(self, shard: int, starts: np.ndarray, length: int) -> np.ndarray:
        """Windows (N, length) of one shard, as int64."""
        tokens = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")
        windows = tokens[starts[:, None] + np.arange(length)].astype(np.int64)
        del tokens  # unmap: pages of the shard do not stay in this process
        return windows


class TrainWindows(IterableDataset):
    """An endless stream of batches of random windows of block_size + 1 tokens.

    Batch n of a DDP rank is drawn from a generator seeded by (seed, rank, n) alone, so ranks
    never share windows, and the stream can start at any batch: a resumed run starts where the
    checkpoint's step says. Dataloader worker w of W makes batches w, w + W, w + 2W, ..., which
    the loader hands out in order: the stream is the same with any number of workers.
    """

    def __init__(
        self,
        shards: TokenShards,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_batch: int = 0,
    ) -> None:
        self.shards, self.block_size, self.batch_size = shards, block_size, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        self.starts_per_shard = np.maximum(shards.sizes - block_size, 0)  # valid window starts
        if self.starts_per_shard.sum() == 0:
            raise DataError(
                f"the training split has {shards.sizes.sum()} tokens, fewer than one window of "
                f"{block_size + 1}: use more data or a smaller model.block_size"
            )

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        cumulative = np.cumsum(self.starts_per_shard)
        for n in itertools.count(self.start_batch + worker_id, workers):
            rng = np.random.default_rng([self.seed, self.rank, n])
            picks = rng.integers(0, cumulative[-1], size=self.batch_size)
            shard_of = np.searchsorted(cumulative, picks, side="right")
            windows = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
            for shard in np.unique(shard_of):
                rows = shard_of == shard
                offset = cumulative[shard] - self.starts_per_shard[shard]
                windows[rows] = self.shards.read(shard, picks[rows] - offset, self.block_size + 1)
            batch = torch.from_numpy(windows)
            yield batch[:, :-1], batch[:, 1:]


class ValWindows(Dataset):
    """Non-overlapping windows that cover every token of a split once; the last one of each
    shard is padded, its padding ignored by the loss (target -100)."""

    def __init__(self, shards: TokenShards, block_size: int) -> None:
        self.shards, self.block_size = shards, block_size
        # a window predicts block_size tokens; the first token of a shard is only context
        self.index = [
            (shard, start)
            for shard, size in enumerate(shards.sizes)
            for start in range(0, max(size - 1, 0), block_size)
        ]
        if not self.index:
            raise DataError("the validation split is empty: raise data.val_fraction or add validation calls")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard, start = self.index[i]
        length = min(self.block_size + 1, int(self.shards.sizes[shard]) - start)
        window = self.shards.read(shard, np.array([start]), length)[0]
        x = torch.zeros(self.block_size, dtype=torch.long)
        y = torch.full((self.block_size,), -100, dtype=torch.long)
        x[: length - 1] = torch.from_numpy(window[:-1])
        y[: length - 1] = torch.from_numpy(window[1:])
        return x, y


class TranscriptDataModule(L.LightningDataModule):
    """Training and validation batches of the data `fingpt.data.prepare` made."""

    def __init__(
        self,
        data: Prepared,
        block_size: int,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_windows: int | None = None,
    ) -> None:
        """`val_windows`: validate during fit on this many windows, spread evenly over the
        validation split and the same each time, so validation can run often; `trainer.validate`
        still scores every window. None: every window, always."""
        super().__init__()
        check_count("data.loader.batch_size", batch_size)
        check_count("data.loader.num_workers", num_workers, least=0)
        for name, value in (("val_batch_size", val_batch_size), ("val_windows", val_windows)):
            if value is not None:  # None: batch_size, and every window
                check_count(f"data.loader.{name}", value)
        self.folder, self.manifest = data.folder, data.manifest
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.val_windows = val_windows

    def shards(self, split: str) -> TokenShards:
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.folder} has no {split} split (it has {list(self.manifest['splits'])})")
        return TokenShards(self.folder, self.manifest["splits"][split], self.manifest["dtype"])

    def train_dataloader(self) -> DataLoader:
        # Lightning restores a checkpoint's step before it asks for the loader: resume from there
        rank, start = 0, 0
        if self.trainer is not None:
            rank = self.trainer.global_rank
            start = self.trainer.global_step * self.trainer.accumulate_grad_batches
        windows = TrainWindows(self.shards("train"), self.block_size, self.batch_size, self.seed, rank, start)
        return DataLoader(
            windows,
            batch_size=None,  # the dataset yields whole batches
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        windows = ValWindows(self.shards("validation"), self.block_size)
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and self.val_windows and self.val_windows < len(windows):
            every = np.linspace(0, len(windows) - 1, self.val_windows).round().astype(int)
            windows = Subset(windows, every.tolist())
        return DataLoader(
            windows,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
