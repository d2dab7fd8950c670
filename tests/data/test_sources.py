import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fingpt.data.corpus import Corpus
from fingpt.data.sources import SEPARATOR, HubSource, ParquetSource, from_path
from fingpt.errors import DataError
from tests.helpers import CORPORA_DIR, DATA_DIR, compose


def test_a_text_file_with_separator_lines_holds_each_call_once(sample_calls, tmp_path):
    path = tmp_path / "calls.txt"
    path.write_text(f"\n{SEPARATOR}\n".join(sample_calls[:20]))
    docs = list(from_path(path))
    assert [d.text for d in docs] == [call.strip("\n") for call in sample_calls[:20]]
    assert [d.id for d in docs] == [f"calls.txt:{i}" for i in range(20)]


def test_the_sample_parquet_files_hold_their_calls_with_metadata():
    maec = list(from_path(DATA_DIR / "maec" / "calls.parquet"))
    earnings = list(from_path(DATA_DIR / "earnings21_22" / "calls.parquet"))
    assert (len(maec), len(earnings)) == (73, 12)
    assert maec[0].id == "LYV-2015-02-26" and maec[0].meta == {
        "symbol": "LYV",
        "year": 2015,
        "date": "2015-02-26",
    }
    assert earnings[0].id == "4384683" and earnings[0].meta == {}
    assert len({d.id for d in maec + earnings}) == 85


@pytest.mark.corpora("ectsum")
def test_ectsum_parquet_holds_its_calls_with_metadata():
    train = list(from_path(CORPORA_DIR / "ectsum" / "train.parquet"))
    validation = list(from_path(CORPORA_DIR / "ectsum" / "validation.parquet"))
    assert (len(train), len(validation)) == (1681, 249)
    assert train[0].id == "AAN-2021-Q1" and train[0].meta == {"symbol": "AAN", "year": 2021, "quarter": 1}
    assert not {d.id for d in train} & {d.id for d in validation}


def test_folder_and_jsonl_sources(tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    (folder / "AAPL-2024-Q1.txt").write_text("Operator: Welcome.")
    (folder / "MSFT-2024-Q2.txt").write_text("Operator: Hello.")
    assert [(d.id, d.text) for d in from_path(folder)] == [
        ("AAPL-2024-Q1", "Operator: Welcome."),
        ("MSFT-2024-Q2", "Operator: Hello."),
    ]
    jsonl = tmp_path / "calls.jsonl"
    rows = [{"symbol": "A", "year": 2020, "quarter": 4, "text": "one"}, {"text": "two"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    docs = list(from_path(jsonl, text_column="text"))
    assert [(d.id, d.text) for d in docs] == [("A-2020-Q4", "one"), ("calls.jsonl:1", "two")]


def test_hub_source_reads_through_datasets_streaming(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(DATA_DIR / "maec" / "calls.parquet")
    hub = list(HubSource(path="parquet", data_files=path, max_calls=7))
    local = list(ParquetSource(path))[:7]
    assert [(d.id, d.text, d.meta) for d in hub] == [(d.id, d.text, d.meta) for d in local]


def test_a_missing_path_names_it_and_the_fix(tmp_path):
    with pytest.raises(
        DataError, match=r"nowhere\.parquet does not exist: put the corpus there.*FINGPT_DATA_DIR"
    ):
        from_path(tmp_path / "nowhere.parquet")


@pytest.mark.parametrize("name", ["ectsum", "maec", "earnings21_22"])
def test_a_missing_corpus_names_the_command_that_downloads_it(name, tmp_path):
    cfg = compose("prepare", [f"data={name}", f"paths.data_dir={tmp_path}"])
    with pytest.raises(DataError) as error:
        Corpus(cfg.data)
    assert str(error.value).startswith(f"{tmp_path / name}/")
    assert f"does not exist: fingpt-data download {name} fetches it" in str(error.value)


def test_a_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "calls.parquet"
    pq.write_table(pa.table({"body": ["hello"]}), path)
    with pytest.raises(
        DataError, match=r"calls\.parquet has no column 'content' \(columns: body\).*data.text_column"
    ):
        from_path(path)


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
    path = tmp_path / "calls.txt"
    path.write_bytes(b"Revenue grew \xff\xfe percent.\n--- NEXT EARNINGS CALL ---\nCall two \xc3.")
    with caplog.at_level(logging.WARNING):
        docs = list(from_path(path))
    assert [d.text for d in docs] == ["Revenue grew \ufffd\ufffd percent.", "Call two \ufffd."]
    assert "calls.txt: 3 bytes are not valid UTF-8" in caplog.text
