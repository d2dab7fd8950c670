import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fingpt.data.sources import DataError, HubSource, ParquetSource, from_path
from tests.conftest import DATA_DIR


def test_the_sample_text_file_holds_45_calls(sp500_calls):
    docs = list(from_path(DATA_DIR / "sp500_sample" / "input.txt"))
    assert len(docs) == 45
    assert [d.text for d in docs] == sp500_calls
    assert len({d.id for d in docs}) == 45


def test_ectsum_parquet_holds_its_calls_with_metadata():
    train = list(from_path(DATA_DIR / "ectsum" / "train.parquet"))
    validation = list(from_path(DATA_DIR / "ectsum" / "validation.parquet"))
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
    path = str(DATA_DIR / "ectsum" / "validation.parquet")
    hub = list(HubSource(path="parquet", data_files=path, max_calls=7))
    local = list(ParquetSource(path))[:7]
    assert [(d.id, d.text, d.meta) for d in hub] == [(d.id, d.text, d.meta) for d in local]


def test_a_missing_path_names_it_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.parquet does not exist.*FINGPT_DATA_DIR"):
        from_path(tmp_path / "nowhere.parquet")


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
