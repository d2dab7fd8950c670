import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fingpt.data import prepare as prepare_module
from fingpt.data.corpus import Corpus
from fingpt.data.prepare import Prepared, prepare
from fingpt.errors import DataError
from tests.helpers import CORPORA_DIR, compose, permissions, umask_permissions


def split_tokens(data: Prepared, split):
    files = [data.folder / s["file"] for s in data.manifest["splits"][split]["shards"]]
    return np.concatenate([np.fromfile(f, dtype=data.manifest["dtype"]) for f in files])


def test_sample_calls_are_split_whole_and_every_byte_is_counted(prepared, sample_calls):
    data = prepared("cc_by_sa")
    manifest = data.manifest
    splits = manifest["splits"]
    assert splits["train"]["calls"] + splits["validation"]["calls"] == 85
    assert splits["validation"]["calls"] >= 1
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 8192
    cfg = compose("prepare", ["data=cc_by_sa"])
    by_split = {"train": [], "validation": []}
    for split, doc in Corpus(cfg.data):
        by_split[split].append(doc.text)
    assert sorted(by_split["train"] + by_split["validation"]) == sorted(sample_calls)  # each call once
    for split, texts in by_split.items():
        assert splits[split]["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        tokens = split_tokens(data, split)
        assert len(tokens) == splits[split]["tokens"]
        assert (tokens == manifest["eot_id"]).sum() == len(texts)  # one <|endoftext|> per call


def test_the_bpe_round_trips_every_sample_call(prepared, sample_calls):
    tokenizer = prepared("cc_by_sa").tokenizer
    for call in sample_calls:
        assert tokenizer.decode(tokenizer.encode(call)) == call


def test_a_source_pinned_to_a_split_keeps_it_when_pooled():
    """all_plus's way: every MAEC call trains; Earnings-21/22 is split by call id as it is alone."""

    def ids(overrides):
        calls = {"train": [], "validation": []}
        for split, doc in Corpus(compose("prepare", overrides).data):
            calls[split].append(doc.id)
        return calls

    pooled = ids(["data=cc_by_sa", "+data.sources.maec.split=train", "data.val_fraction=0.3"])
    maec, earnings = ids(["data=maec"]), ids(["data=earnings21_22", "data.val_fraction=0.3"])
    assert pooled["validation"] == earnings["validation"] and len(earnings["validation"]) >= 1
    assert sorted(pooled["train"]) == sorted(maec["train"] + maec["validation"] + earnings["train"])


@pytest.mark.corpora("ectsum", "sp500_sample")
def test_ectsum_keeps_its_own_splits_and_all_pools_them():
    def splits(data: str) -> dict[str, tuple[int, int]]:  # calls and UTF-8 bytes of each split
        counts = {"train": [0, 0], "validation": [0, 0]}
        for split, doc in Corpus(compose("prepare", [f"data={data}", f"paths.data_dir={CORPORA_DIR}"]).data):
            counts[split][0] += 1
            counts[split][1] += len(doc.text.encode())
        return counts

    ectsum, sample, pooled = splits("ectsum"), splits("sp500_sample"), splits("all")
    assert (ectsum["train"][0], ectsum["validation"][0]) == (1681, 249)
    for split in ("train", "validation"):
        assert pooled[split] == [ectsum[split][0] + sample[split][0], ectsum[split][1] + sample[split][1]]


def test_a_second_run_reuses_the_cache_without_work(prepared, monkeypatch):
    folder = prepared("cc_by_sa").folder
    before = (folder / "manifest.json").stat().st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(prepare_module, "_build_tokenizer", no_work)
    cfg = compose("prepare", ["data=cc_by_sa", f"paths.cache_dir={folder.parent}"])
    assert prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir).folder == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == before


def test_a_crash_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_encode", crash)
    cfg = compose("prepare", ["data=cc_by_sa", "tokenizer=char", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    assert list(tmp_path.iterdir()) == []


def test_char_tokenizer_gives_one_token_per_character(prepared):
    manifest = prepared("cc_by_sa", "char").manifest
    texts = [
        doc.text for split, doc in Corpus(compose("prepare", ["data=cc_by_sa"]).data) if split == "train"
    ]
    assert manifest["vocab_size"] == len(set("".join(texts))) + 2  # + unknown + end of text
    assert manifest["splits"]["train"]["tokens"] == sum(len(t) for t in texts) + len(texts)


def test_an_empty_corpus_names_the_file(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    cfg = compose(
        "prepare", ["data=local", f"data.path={tmp_path / 'empty.txt'}", f"paths.cache_dir={tmp_path}/c"]
    )
    with pytest.raises(DataError, match="empty.txt holds no calls"):
        prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_local_jsonl_corpus_prepares_through_the_cli(tmp_path, capsys, monkeypatch):
    rows = [{"content": f"Operator: call {i}. Revenue was ${i}.{i} billion."} for i in range(40)]
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setattr(
        "sys.argv",
        [
            "fingpt-prepare",
            "data=local",
            f"data.path={path}",
            f"paths.cache_dir={tmp_path}/c",
            "tokenizer.vocab_size=300",
        ],
    )
    prepare_module.main()
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = Prepared.load(folder).manifest
    assert manifest["splits"]["train"]["calls"] + manifest["splits"]["validation"]["calls"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.path={tmp}/missing.txt"], "missing.txt does not exist"),
        ([], "data 'local' needs data.path: add data.path=PATH"),
        (["data.path={calls}", "tokenizer.vocab_size=10"], "tokenizer: BPE vocab_size must be at least 257"),
    ],
)
def test_the_cli_prints_a_one_line_error_for_bad_input(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "calls.txt").write_text("Operator: Welcome.\n--- NEXT EARNINGS CALL ---\nGood day.\n")
    args = [a.format(tmp=tmp_path, calls=tmp_path / "calls.txt") for a in args]
    monkeypatch.setattr("sys.argv", ["fingpt-prepare", "data=local", f"paths.cache_dir={tmp_path}/c", *args])
    with pytest.raises(SystemExit) as exit_info:
        prepare_module.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_prepared_folder_is_readable_as_any_plain_file_is(prepared):
    folder = prepared("cc_by_sa").folder
    assert permissions(folder) == umask_permissions(folder)


def test_the_hub_without_network_is_a_one_line_error_that_says_what_to_do(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # as a machine without network
    cmd = [sys.executable, "-m", "fingpt.data.prepare", "data=hf_sp500", f"paths.cache_dir={tmp_path}"]
    proc = subprocess.run(cmd, env={**os.environ, **offline}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: Couldn't reach 'kurry/sp500_earnings_transcripts' on the Hub")
    assert "hf download kurry/sp500_earnings_transcripts --repo-type dataset" in error
