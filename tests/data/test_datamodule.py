import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fingpt.data.datamodule import TokenShards, TrainWindows, TranscriptDataModule, ValWindows
from fingpt.data.prepare import Prepared
from fingpt.errors import DataError


def shards(data: Prepared, split):
    return TokenShards(data.folder, data.manifest["splits"][split], data.manifest["dtype"])


def tokens_of(data: Prepared, split):
    s = shards(data, split)
    return np.concatenate([np.fromfile(p, dtype=s.dtype) for p in s.paths]).astype(np.int64)


def test_training_batches_are_windows_of_the_split_shifted_by_one(prepared):
    data = prepared("cc_by_sa")
    datamodule = TranscriptDataModule(data, block_size=64, batch_size=8, seed=1)
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == y.shape == (8, 64) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = tokens_of(data, "train")
    for row in x.numpy():
        (start,) = np.nonzero(np.all(np.lib.stride_tricks.sliding_window_view(tokens, 64) == row, axis=1))[:1]
        assert len(start)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_started_at_batch_n_yields_what_an_uninterrupted_one_would(prepared, num_workers):
    train = shards(prepared("cc_by_sa"), "train")
    whole = TrainWindows(train, block_size=32, batch_size=4, seed=0)
    expected = [x for _, (x, _) in zip(range(9), whole, strict=False)][5:]
    resumed = TrainWindows(train, block_size=32, batch_size=4, seed=0, start_batch=5)
    loader = DataLoader(resumed, batch_size=None, num_workers=num_workers)
    got = [x for _, (x, _) in zip(range(4), loader, strict=False)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not torch.equal(expected[0], expected[1])


def test_two_ranks_and_two_workers_get_disjoint_windows(prepared):
    train = shards(prepared("cc_by_sa"), "train")

    def windows(rank, batches=20):
        stream = iter(TrainWindows(train, block_size=32, batch_size=16, seed=0, rank=rank))
        return {tuple(row) for _ in range(batches) for row in next(stream)[0].tolist()}

    rank0, rank1 = windows(0), windows(1)
    assert len(rank0) == len(rank1) == 320
    assert not rank0 & rank1
    assert windows(0) == rank0  # and each rank's stream is reproducible

    datamodule = TranscriptDataModule(prepared("cc_by_sa"), block_size=32, batch_size=16, num_workers=2)
    loader = iter(datamodule.train_dataloader())
    worker0, worker1 = next(loader)[0], next(loader)[0]  # batches alternate between the workers
    assert not {tuple(r) for r in worker0.tolist()} & {tuple(r) for r in worker1.tolist()}
    single = iter(TranscriptDataModule(prepared("cc_by_sa"), block_size=32, batch_size=16).train_dataloader())
    assert torch.equal(next(single)[0], worker0) and torch.equal(next(single)[0], worker1)


def test_validation_covers_every_token_once_and_is_fixed(prepared):
    data = prepared("cc_by_sa")
    datamodule = TranscriptDataModule(data, block_size=100, batch_size=4, val_batch_size=16)
    targets = torch.cat([y.flatten() for _, y in datamodule.val_dataloader()])
    tokens = tokens_of(data, "validation")
    assert torch.equal(targets[targets != -100], torch.from_numpy(tokens[1:]))
    again = torch.cat([y.flatten() for _, y in datamodule.val_dataloader()])
    assert torch.equal(targets, again)


def test_a_split_shorter_than_one_window_says_what_to_change(prepared):
    train = shards(prepared("cc_by_sa"), "train")
    with pytest.raises(DataError, match=r"fewer than one window of 1000001: .*model.block_size"):
        TrainWindows(train, block_size=1_000_000, batch_size=1, seed=0)
    assert len(ValWindows(shards(prepared("cc_by_sa"), "validation"), block_size=1_000_000)) == 1


def test_a_folder_that_was_not_prepared_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds no manifest.json.*fingpt-prepare"):
        Prepared.load(tmp_path)
