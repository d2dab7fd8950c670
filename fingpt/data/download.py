"""Fetch the public corpora from where they are published into the Parquet layout fingpt reads.

    fingpt-data download ectsum            # -> $FINGPT_DATA_DIR/ectsum/{train,validation,test}.parquet
    fingpt-data download maec earnings21_22 [--data-dir DIR] [--force]
    fingpt-data list                       # what each corpus is, its licence, and whether it is here

Each corpus is a GitHub repository pinned to a commit. ECTSum and MAEC come as one archive of
that commit; Earnings-21/22 file by file, since its repository's archive is mostly audio (GBs).
The download goes to `.downloads/` in the data folder, resumes where it stopped (an HTTP range
request), and is checked against `digest`: the SHA-256 of the git blob ids of the files used, so
it holds exactly what the commit holds. The tables are written to a temporary folder renamed
into place, with `download.json` (source, commit and the SHA-256 of each table) beside them.

FINGPT_GITHUB_MIRROR=http://host:port fetches https://<github host>/<path> from
http://host:port/<github host>/<path> instead (the tests' loopback server); GITHUB_TOKEN, when
set, is sent to GitHub and raises its limit on requests.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import pyarrow as pa
import pyarrow.parquet as pq

from fingpt.cli import user_errors
from fingpt.data.sources import decode_utf8
from fingpt.errors import DataError
from fingpt.files import replace_folder, sha256

RECORD = "download.json"  # beside the tables: where they came from and their checksums
TIMEOUT = 60  # seconds without a byte before a transfer counts as interrupted


class DownloadError(DataError):
    """A download that could not finish; what was fetched so far is kept for the next run."""


@dataclass(frozen=True)
class Release:
    """A corpus as published: the files of `repo` at `commit` whose paths match `files`."""

    name: str
    repo: str
    commit: str
    files: str  # a regular expression for the paths used
    digest: str  # SHA-256 of the "<git blob id> <path>\n" lines of those files, sorted by path
    tables: Callable[[dict[str, bytes]], dict[str, pa.Table]]  # files by path -> tables by name
    archive: bool  # True: one tar.gz of the commit; False: each file on its own
    licence: str
    about: str


# ----------------------------------------------------------------------------- the layouts


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def ectsum_tables(files: dict[str, bytes]) -> dict[str, pa.Table]:
    """data/final/{train,val,test}/ects/TICKER_qN_YYYY.txt, one sentence per line, as is."""
    schema = pa.schema(
        [("symbol", pa.string()), ("quarter", pa.int64()), ("year", pa.int64()), ("content", pa.string())]
    )
    tables = {}
    for ours, theirs in (("train", "train"), ("validation", "val"), ("test", "test")):
        rows = []
        for path in sorted(p for p in files if p.startswith(f"data/final/{theirs}/ects/")):
            symbol, quarter, year = re.fullmatch(
                r"(.+)_q([1-4])_(\d{4})\.txt", path.rsplit("/", 1)[1]
            ).groups()
            content = decode_utf8(files[path], path)
            rows.append({"symbol": symbol, "quarter": int(quarter), "year": int(year), "content": content})
        tables[f"{ours}.parquet"] = _table(rows, schema)
    return tables


MAEC_MIN_BYTES = 200  # shorter "calls" are a line or two of the audio alignment, not a call


def maec_tables(files: dict[str, bytes]) -> dict[str, pa.Table]:
    """MAEC_Dataset/YYYYMMDD_TICKER/text.txt, one sentence per line; calls under 200 bytes dropped."""
    schema = pa.schema(
        [("symbol", pa.string()), ("year", pa.int64()), ("date", pa.string()), ("content", pa.string())]
    )
    rows = []
    for path in sorted(files):
        if len(files[path]) < MAEC_MIN_BYTES:
            continue
        day, symbol = path.split("/")[1].split("_", 1)
        date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        rows.append(
            {
                "symbol": symbol,
                "year": int(day[:4]),
                "date": date,
                "content": decode_utf8(files[path], path).strip(),
            }
        )
    return {"calls.parquet": _table(rows, schema)}


def nlp_turns(text: str) -> str:
    """A Rev .nlp transcript (one token a line, `|`-separated fields named by its header line)
    as text: one speaker turn per line, each token with its punctuation."""
    lines = text.splitlines()
    fields = lines[0].split("|")
    turns, words, speaker = [], [], None
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(fields, line.split("|"), strict=False))
        if row["speaker"] != speaker and words:
            turns.append(" ".join(words))
            words = []
        speaker = row["speaker"]
        words.append(row.get("prepunctuation", "") + row["token"] + row.get("punctuation", ""))
    if words:
        turns.append(" ".join(words))
    return "\n".join(turns)


def earnings_tables(files: dict[str, bytes]) -> dict[str, pa.Table]:
    """earnings2{1,2}/transcripts/nlp_references/*.nlp, rebuilt as one speaker turn per line."""
    schema = pa.schema(
        [("symbol", pa.string()), ("source", pa.string()), ("call_id", pa.string()), ("content", pa.string())]
    )
    rows = []
    for path in sorted(files):
        source, call_id = path.split("/")[0], path.rsplit("/", 1)[1].removesuffix(".nlp")
        content = nlp_turns(decode_utf8(files[path], path))
        rows.append({"symbol": "", "source": source, "call_id": call_id, "content": content})
    return {"calls.parquet": _table(rows, schema)}


CORPORA = {
    r.name: r
    for r in [
        Release(
            name="ectsum",
            repo="rajdeep345/ECTSum",
            commit="6909f1fc543104c1c60cf9de63e799f6620d1b0a",
            files=r"data/final/(train|val|test)/ects/[^/]+\.txt",
            digest="ec3209b85c2f897bef2a29e28275ccffd430e4a2044675ee9f180af9a1c95829",
            tables=ectsum_tables,
            archive=True,
            licence="GPL-3.0",
            about="ECTSum (Mukherjee et al., EMNLP 2022): 1,681 train, 249 validation and 495 test calls "
            "of US companies, 2019-2022; 30.0 + 4.3 MB of text in train and validation",
        ),
        Release(
            name="maec",
            repo="Earnings-Call-Dataset/MAEC-A-Multimodal-Aligned-Earnings-Conference-Call-Dataset-for-Financial-Risk-Prediction",
            commit="65a109f5b1a8cb4c96e8337b749ce3db41f2c210",
            files=r"MAEC_Dataset/\d{8}_[^/]+/text\.txt",
            digest="aecdc04c94f530d6aeadbf271d7c39019bff6cb9f05e90a34f5df7b3c5da5209",
            tables=maec_tables,
            archive=True,
            licence="CC BY-SA 4.0",
            about="MAEC (Li et al., CIKM 2020): 3,389 partial calls of US companies, 2015-2018, "
            "the sentences aligned to the audio, names replaced by <UNK>; 43.8 MB of text",
        ),
        Release(
            name="earnings21_22",
            repo="revdotcom/speech-datasets",
            commit="2f1a8f00bc2bd72e57a459c7ac8dae4041e3e078",
            files=r"earnings2[12]/transcripts/nlp_references/[^/]+\.nlp",
            digest="6667f155f86bca842ec0a5049456ca839797553bca755b6da648014e5e2b1040",
            tables=earnings_tables,
            archive=False,
            licence="CC BY-SA 4.0",
            about="Earnings-21 and Earnings-22 (Rev.com): 169 verbatim transcripts of calls' audio, "
            "44 US calls of 2020 and 125 of companies outside the US; 7.8 MB of text",
        ),
    ]
}


# ----------------------------------------------------------------------------- checksums


def blob_id(data: bytes) -> str:
    """The id git gives a file's content (SHA-1 of a `blob <size>` header and the bytes)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def digest(blob_ids: dict[str, str]) -> str:
    """The checksum of a set of files: SHA-256 of their "<blob id> <path>" lines, by path."""
    return hashlib.sha256("".join(f"{blob_ids[p]} {p}\n" for p in sorted(blob_ids)).encode()).hexdigest()


# ----------------------------------------------------------------------------- HTTP


def url(host: str, path: str) -> str:
    mirror = os.environ.get("FINGPT_GITHUB_MIRROR")
    return f"{mirror.rstrip('/')}/{host}/{path}" if mirror else f"https://{host}/{path}"


def _request(address: str, headers: dict[str, str] | None = None) -> Request:
    headers = {"User-Agent": "fingpt-data", **(headers or {})}
    token = os.environ.get("GITHUB_TOKEN")
    if token and not os.environ.get("FINGPT_GITHUB_MIRROR"):
        headers["Authorization"] = f"Bearer {token}"
    return Request(address, headers=headers)


def _refused(address: str, e: HTTPError) -> DownloadError:
    if e.code in (403, 429):
        when = ""
        if e.headers.get("Retry-After", "").isdigit():
            when = f", retry in {int(e.headers['Retry-After'])} s"
        elif e.headers.get("X-RateLimit-Reset", "").isdigit():
            reset = datetime.fromtimestamp(int(e.headers["X-RateLimit-Reset"]), timezone.utc)
            when = f", retry after {reset:%H:%M} UTC"
        return DownloadError(
            f"{address}: GitHub refused more requests for now (HTTP {e.code}{when}): run the same "
            "command later, it resumes; GITHUB_TOKEN=<a token> raises the limit"
        )
    return DownloadError(f"{address}: HTTP {e.code} {e.reason}")


def _unreachable(address: str, e: Exception) -> DownloadError:
    return DownloadError(
        f"cannot reach {address} ({getattr(e, 'reason', e)}): fingpt-data download needs the internet; "
        "on a machine without it, copy the corpus folder from one that has it into the data folder"
    )


def fetch(address: str, dest: Path, progress: Callable[[int], None] = lambda n: None) -> Path:
    """Download `address` to `dest`, resuming `dest`.part where an earlier run stopped. `dest`
    appears only when the whole body arrived (its length is what the server said it is)."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        response = urlopen(_request(address, {"Range": f"bytes={have}-"} if have else {}), timeout=TIMEOUT)
    except HTTPError as e:
        if e.code == 416 and have:  # nothing past what we have: the part is whole
            os.replace(part, dest)
            return dest
        raise _refused(address, e) from e
    except (URLError, OSError) as e:
        raise _unreachable(address, e) from e
    with response:
        if response.status != 206:  # the server sends it all: start over
            have = 0
        total = _total_length(response, have)
        progress(have)
        try:
            with part.open("ab" if have else "wb") as f:
                while chunk := response.read1(1 << 20):  # what has arrived, so a stall loses little
                    f.write(chunk)
                    progress(len(chunk))
        except (http.client.IncompleteRead, OSError) as e:
            raise _interrupted(address, part, total, e) from e
    if total is not None and part.stat().st_size != total:
        raise _interrupted(address, part, total, "the connection closed early")
    os.replace(part, dest)
    return dest


def _total_length(response, have: int) -> int | None:
    """The whole body's length, from Content-Range (a resumed request) or Content-Length."""
    if response.status == 206 and (m := re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))):
        return int(m[1])
    length = response.headers.get("Content-Length")
    return have + int(length) if length is not None else None


def _interrupted(address: str, part: Path, total: int | None, why) -> DownloadError:
    got = part.stat().st_size if part.exists() else 0
    of = f" of {total:,}" if total is not None else ""
    return DownloadError(
        f"{address}: interrupted after {got:,}{of} bytes ({why}): run the same command again to resume"
    )


def _progress_bar(name: str):
    from tqdm import tqdm

    return tqdm(desc=f"downloading {name}", unit="B", unit_scale=True, disable=None, file=sys.stderr)


# ----------------------------------------------------------------------------- the two ways to fetch


def fetch_archive(release: Release, staging: Path) -> dict[str, bytes]:
    """The files of `release` from one tar.gz of its commit (GitHub's archive of a commit)."""
    address = url("codeload.github.com", f"{release.repo}/tar.gz/{release.commit}")
    archive = staging / "archive.tar.gz"
    if not archive.exists():
        with _progress_bar(release.name) as bar:
            fetch(address, archive, bar.update)
    wanted = re.compile(release.files)
    files = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = member.name.split("/", 1)[-1]  # the archive's top folder is <repo>-<commit>
                if member.isfile() and wanted.fullmatch(path):
                    files[path] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        archive.unlink()
        raise DownloadError(
            f"{address}: the archive is damaged or cut short ({e}); it was deleted: run again"
        ) from e
    return files


def fetch_files(release: Release, staging: Path) -> dict[str, bytes]:
    """The files of `release` one by one: the commit's file list (one request), then each file,
    checked against its git blob id. Files already fetched are kept across runs."""
    listing = staging / "listing.json"
    if not listing.exists():
        address = url("api.github.com", f"repos/{release.repo}/git/trees/{release.commit}?recursive=1")
        fetch(address, listing)
    tree = json.loads(listing.read_text())
    wanted = re.compile(release.files)
    blob_ids = {
        e["path"]: e["sha"] for e in tree["tree"] if e["type"] == "blob" and wanted.fullmatch(e["path"])
    }
    if tree.get("truncated") or digest(blob_ids) != release.digest:
        listing.unlink()
        raise DownloadError(
            f"the file list of {release.repo} at {release.commit[:12]} does not match the checksum "
            "fingpt pins for it; it was deleted: run again, and if it persists report it"
        )
    files = {}
    with _progress_bar(release.name) as bar:
        for path, blob in sorted(blob_ids.items()):
            dest = staging / "files" / path
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                fetch(
                    url("raw.githubusercontent.com", f"{release.repo}/{release.commit}/{path}"),
                    dest,
                    bar.update,
                )
            data = dest.read_bytes()
            if blob_id(data) != blob:
                dest.unlink()
                raise DownloadError(
                    f"{path} of {release.repo} does not match its checksum (git blob {blob[:12]}); "
                    "it was deleted: run again"
                )
            files[path] = data
    return files


# ----------------------------------------------------------------------------- download


def data_dir_default() -> Path:
    return Path(os.environ.get("FINGPT_DATA_DIR", "data"))


def present(release: Release, data_dir: Path) -> bool:
    """True when the corpus's tables are in `data_dir` (a download of it, or a copy put there)."""
    folder = data_dir / release.name
    if (folder / RECORD).is_file():
        return True
    return folder.is_dir() and any(folder.glob("*.parquet"))


def verify(release: Release, data_dir: Path) -> None:
    """Check a download's tables against the SHA-256 its record holds."""
    folder = data_dir / release.name
    record = json.loads((folder / RECORD).read_text())
    for name, expected in record["tables"].items():
        if not (folder / name).is_file() or sha256(folder / name) != expected:
            raise DownloadError(
                f"{folder / name} is missing or changed since it was downloaded: "
                f"fingpt-data download {release.name} --force fetches it again"
            )


def download(release: Release, data_dir: Path, force: bool = False) -> Path:
    """Fetch `release` into `data_dir/<name>/` (tables and download.json): its folder."""
    out = data_dir / release.name
    if not force and present(release, data_dir):
        if (out / RECORD).is_file():
            verify(release, data_dir)
            print(f"{release.name}: {out} is up to date (its tables match download.json)", file=sys.stderr)
        else:
            print(f"{release.name}: {out} is there already (--force fetches it again)", file=sys.stderr)
        return out
    staging = data_dir / ".downloads" / f"{release.name}-{release.commit[:12]}"
    staging.mkdir(parents=True, exist_ok=True)
    files = (fetch_archive if release.archive else fetch_files)(release, staging)
    found = digest({path: blob_id(data) for path, data in files.items()})
    if found != release.digest:
        shutil.rmtree(staging)
        _remove_if_empty(staging.parent)
        raise DownloadError(
            f"{release.name}: the download does not hold the files of {release.repo} at "
            f"{release.commit[:12]} ({len(files)} files; checksum {found[:12]}, expected "
            f"{release.digest[:12]}); it was deleted: run again, and if it persists report it"
        )
    tables = release.tables(files)
    with replace_folder(out, RECORD, "corpus downloaded by fingpt-data") as tmp:
        for name, table in tables.items():
            pq.write_table(table, tmp / name, compression="zstd")
        record = {
            "name": release.name,
            "source": f"https://github.com/{release.repo}/tree/{release.commit}",
            "licence": release.licence,
            "files": len(files),
            "digest": release.digest,
            "tables": {name: sha256(tmp / name) for name in tables},
            "rows": {name: table.num_rows for name, table in tables.items()},
            "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(staging)
    _remove_if_empty(staging.parent)
    rows = ", ".join(f"{name} {n:,} calls" for name, n in record["rows"].items())
    print(f"{release.name}: {out} ({rows}; {release.licence})", file=sys.stderr)
    return out


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def hint(path: Path) -> str | None:
    """The command that fetches a missing corpus file, when `path` is one of a download's."""
    release = CORPORA.get(path.parent.name)
    if release and path.suffix == ".parquet":
        return f"fingpt-data download {release.name}"
    return None


# ----------------------------------------------------------------------------- the command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fingpt-data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch corpora into the data folder")
    get.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(CORPORA)}")
    get.add_argument("--force", action="store_true", help="fetch again even if the corpus is there")
    listing = commands.add_parser("list", help="the corpora, their licences and whether they are here")
    for command in (get, listing):
        command.add_argument(
            "--data-dir", type=Path, default=data_dir_default(), help="default: $FINGPT_DATA_DIR, else data/"
        )
    args = parser.parse_args(argv)
    with user_errors():
        if args.command == "list":
            for release in CORPORA.values():
                here = "here" if present(release, args.data_dir) else f"fingpt-data download {release.name}"
                print(f"{release.name:14} {release.licence:13} {here}\n  {release.about}")
            return
        unknown = [n for n in args.names if n not in CORPORA]
        if unknown:
            raise DataError(f"no corpus named {', '.join(unknown)}: choose from {', '.join(CORPORA)}")
        for name in args.names:
            download(CORPORA[name], args.data_dir, force=args.force)


if __name__ == "__main__":
    main()
