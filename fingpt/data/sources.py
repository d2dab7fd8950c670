"""Where earnings calls come from: each source yields `Document`s, one per call.

A source is built from a data config entry with `hydra.utils.instantiate` (`_target_` is
`fingpt.data.sources.from_path` for local files, `fingpt.data.sources.HubSource` for the Hub).
`split` pins every call of a source to one split (a corpus's own train/validation files);
left empty, calls are split by the hash of their id (see `fingpt.data.corpus`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from fingpt.errors import DataError
from fingpt.files import sha256, short_hash

log = logging.getLogger(__name__)

SEPARATOR = "--- NEXT EARNINGS CALL ---"


@dataclass
class Document:
    id: str
    text: str
    meta: dict = field(default_factory=dict)


def decode_utf8(data: bytes, where: str) -> str:
    """Decode UTF-8; invalid bytes become U+FFFD, counted in a warning that names the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")  # one surrogate per invalid byte
        bad = sum(1 for c in text if "\udc80" <= c <= "\udcff")
        log.warning(
            "%s: %d bytes are not valid UTF-8 and were replaced with U+FFFD; "
            "re-encode the file as UTF-8 to keep them",
            where,
            bad,
        )
        return "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in text)


def _row_document(row: dict, index: int, text_column: str, name: str) -> Document:
    """A table row (Parquet, JSON lines, Hub) as a Document; metadata from the Hub's columns."""
    meta = {k: row[k] for k in ("symbol", "year", "quarter", "date", "company_name") if row.get(k)}
    if {"symbol", "year", "quarter"} <= meta.keys():
        doc_id = f"{meta['symbol']}-{meta['year']}-Q{meta['quarter']}"
    elif {"symbol", "date"} <= meta.keys():  # MAEC: a call date, no fiscal quarter
        doc_id = f"{meta['symbol']}-{meta['date']}"
    elif row.get("call_id"):  # Earnings-21/22
        doc_id = str(row["call_id"])
    else:
        doc_id = f"{name}:{index}"
    return Document(doc_id, row[text_column] or "", meta)


def _check_column(text_column: str, columns: list[str], where: str) -> None:
    if text_column not in columns:
        raise DataError(
            f"{where} has no column {text_column!r} (columns: {', '.join(columns)}): "
            "set data.text_column to the column that holds the transcript"
        )


class LocalSource:
    """Common ground of local files: a path that must exist, a fingerprint of its bytes."""

    def __init__(self, path: str | Path, split: str | None = None) -> None:
        self.path = Path(path)
        self.split = split
        if not self.path.exists():
            from fingpt.data.download import hint

            command = hint(self.path)
            fix = f"{command} fetches it" if command else "put the corpus there"
            raise DataError(
                f"{self.path} does not exist: {fix}, or point FINGPT_DATA_DIR (or paths.data_dir) "
                "at the folder that holds it"
            )

    def fingerprint(self) -> str:
        files = sorted(self.path.glob("*.txt")) if self.path.is_dir() else [self.path]
        return short_hash([[f.name, sha256(f)] for f in files])

    def __iter__(self) -> Iterator[Document]:
        raise NotImplementedError


class TextFileSource(LocalSource):
    """One UTF-8 text file holding many calls, separated by a line of their own."""

    def __init__(self, path, separator: str = SEPARATOR, split: str | None = None) -> None:
        super().__init__(path, split)
        self.separator = separator

    def __iter__(self) -> Iterator[Document]:
        text = decode_utf8(self.path.read_bytes(), str(self.path))
        separator_line = re.compile(rf"^[ \t]*{re.escape(self.separator)}[ \t]*$", re.MULTILINE)
        calls = (c.strip("\n") for c in separator_line.split(text))
        for i, call in enumerate(c for c in calls if c.strip()):
            yield Document(f"{self.path.name}:{i}", call)


class FolderSource(LocalSource):
    """A folder of `.txt` files, one call each; the file name is the call's id."""

    def __iter__(self) -> Iterator[Document]:
        for f in sorted(self.path.glob("*.txt")):
            yield Document(f.stem, decode_utf8(f.read_bytes(), str(f)))


class JsonlSource(LocalSource):
    def __init__(self, path, text_column: str = "content", split: str | None = None) -> None:
        super().__init__(path, split)
        self.text_column = text_column

    def __iter__(self) -> Iterator[Document]:
        with self.path.open("rb") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                where = f"{self.path} line {i + 1}"
                try:
                    row = json.loads(decode_utf8(line, where))
                except json.JSONDecodeError as e:
                    raise DataError(f"{where} is not valid JSON ({e}): fix or remove it") from e
                _check_column(self.text_column, list(row), where)
                yield _row_document(row, i, self.text_column, self.path.name)


class ParquetSource(LocalSource):
    """Parquet in the Hugging Face layout (`content`, `symbol`, `year`, `quarter`), streamed."""

    def __init__(self, path, text_column: str = "content", split: str | None = None) -> None:
        super().__init__(path, split)
        self.text_column = text_column
        _check_column(text_column, pq.ParquetFile(self.path).schema_arrow.names, str(self.path))

    def __iter__(self) -> Iterator[Document]:
        index = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield _row_document(row, index, self.text_column, self.path.name)
                index += 1


class HubSource:
    """A Hugging Face Hub dataset, streamed with `datasets` (no full download), capped in calls.

    `data_files` reads local files through the same code path (`path="parquet"`).
    """

    def __init__(
        self,
        path: str = "kurry/sp500_earnings_transcripts",
        hub_split: str = "train",
        max_calls: int | None = None,
        text_column: str = "content",
        data_files: str | list[str] | None = None,
        revision: str | None = None,
        split: str | None = None,
    ) -> None:
        self.path, self.hub_split, self.max_calls = path, hub_split, max_calls
        self.text_column, self.data_files, self.revision, self.split = (
            text_column,
            data_files,
            revision,
            split,
        )

    def fingerprint(self) -> str:
        files = [self.data_files] if isinstance(self.data_files, str) else self.data_files or []
        local = [sha256(Path(f)) for f in files if Path(f).is_file()]
        key = [self.path, self.hub_split, self.revision, self.max_calls, self.text_column, *files, *local]
        return short_hash(key)

    def __iter__(self) -> Iterator[Document]:
        try:
            import datasets
        except ImportError as e:
            raise DataError("reading from the Hub needs `datasets`: pip install 'fingpt[hub]'") from e
        try:
            rows = datasets.load_dataset(
                self.path,
                data_files=self.data_files,
                split=self.hub_split,
                revision=self.revision,
                streaming=True,
            )
        except ConnectionError as e:  # no network, or the Hub is down
            raise DataError(
                f"{e}: run this where the Hub can be reached, or download the dataset's Parquet files "
                f"once (hf download {self.path} --repo-type dataset --local-dir DIR) and read them "
                "offline with data.sources.hub.path=parquet data.sources.hub.data_files='DIR/**/*.parquet'"
            ) from e
        _check_column(self.text_column, list(rows.features or {}), f"Hub dataset {self.path}")
        for i, row in enumerate(rows):
            if self.max_calls is not None and i >= self.max_calls:
                break
            yield _row_document(row, i, self.text_column, self.path)


def from_path(
    path: str | Path,
    text_column: str = "content",
    separator: str = SEPARATOR,
    split: str | None = None,
) -> LocalSource:
    """The local source for a path, chosen by what it is: folder, .txt, .jsonl or .parquet."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        return FolderSource(path, split=split)  # a missing path fails here, with its message
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return JsonlSource(path, text_column=text_column, split=split)
    if suffix == ".parquet":
        return ParquetSource(path, text_column=text_column, split=split)
    if suffix in (".txt", ".text", ""):
        return TextFileSource(path, separator=separator, split=split)
    raise DataError(f"{path}: unknown corpus format {suffix!r}; use a folder, .txt, .jsonl or .parquet")
