"""fingpt-data download, end to end against a loopback GitHub (tests/data/github.py) that serves
the repositories' own layouts, built from the sample in tests/corpus."""

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from fingpt.data.corpus import Corpus
from fingpt.data.download import CORPORA, main
from serving.testing import free_port
from tests.data.github import GitHub, git_blob_id
from tests.helpers import DATA_DIR, ROOT, compose

MAEC = CORPORA["maec"]


def sample(name: str) -> list[dict]:
    return pq.read_table(DATA_DIR / name / "calls.parquet").to_pylist()


def maec_repository() -> dict[str, bytes]:
    """MAEC_Dataset/YYYYMMDD_TICKER/text.txt (one sentence a line) beside what else the repository holds."""
    files = {"README.md": b"# MAEC\n", "LICENSE": b"CC BY-SA 4.0\n"}
    for row in sample("maec"):
        folder = f"MAEC_Dataset/{row['date'].replace('-', '')}_{row['symbol']}"
        files[f"{folder}/text.txt"] = (row["content"] + "\n").encode()
        files[f"{folder}/features.csv"] = b"Audio Features\n0.1,0.2\n"
    files["MAEC_Dataset/20150102_TINY/text.txt"] = b"Thank you.\n"  # under 200 bytes: not a call
    return files


def nlp(content: str, source: str) -> bytes:
    """A call as Rev's .nlp: one token a line with its punctuation apart, speakers taking turns."""
    earnings22 = source == "earnings22"  # it has a prepunctuation field, and no wer_tags
    fields = ["token", "speaker", "ts", "endTs", "punctuation", "case", "tags", "wer_tags"]
    if earnings22:
        fields = [*fields[:5], "prepunctuation", "case", "tags"]
    lines = ["|".join(fields)]
    for speaker, turn in enumerate(content.split("\n")):
        for word in turn.split(" "):
            before, token, after = re.fullmatch(r"""(["'(]?)(.*?)([.,?!;:]?)""", word).groups()
            if not earnings22:
                before, token = "", before + token
            row = {
                "token": token,
                "speaker": str(speaker % 2),
                "punctuation": after,
                "prepunctuation": before,
            }
            lines.append("|".join(row.get(f, "[]" if "tags" in f else "") for f in fields))
    return ("\n".join(lines) + "\n").encode()


def earnings_repository() -> dict[str, bytes]:
    files = {"README.md": b"# speech-datasets\n", "earnings21/media/4320211.mp3": b"ID3 not a call"}
    for row in sample("earnings21_22"):
        files[f"{row['source']}/transcripts/nlp_references/{row['call_id']}.nlp"] = nlp(
            row["content"], row["source"]
        )
        files[f"{row['source']}/transcripts/normalizations/{row['call_id']}.norm.json"] = b"{}"
    return files


def ectsum_repository() -> tuple[dict[str, bytes], dict[str, list[dict]]]:
    """ECTSum's layout, filled with sample calls; and the rows a download of it must give."""
    files = {"README.md": b"# ECTSum\n"}
    rows = {"train": {}, "validation": {}, "test": {}}  # split -> file name -> row
    splits = [("train", "train")] * 3 + [("validation", "val"), ("test", "test")]
    for i, row in enumerate(sample("maec")[:15]):
        ours, theirs = splits[i % 5]
        quarter = (int(row["date"][5:7]) - 1) // 3 + 1
        name = f"{row['symbol']}_q{quarter}_{row['year']}.txt"
        text = row["content"] + "\n"  # kept as it is, its last newline too
        files[f"data/final/{theirs}/ects/{name}"] = text.encode()
        files[f"data/final/{theirs}/gt_summaries/{name}"] = b"A summary, not a call."
        rows[ours][name] = {"symbol": row["symbol"], "quarter": quarter, "year": row["year"], "content": text}
    return files, {split: [row for _, row in sorted(named.items())] for split, named in rows.items()}


REPOSITORIES = {
    "maec": maec_repository,
    "earnings21_22": earnings_repository,
    "ectsum": lambda: ectsum_repository()[0],
}


def checksum(files: dict[str, bytes], pattern: str) -> str:
    """What fingpt pins for a release: SHA-256 of the "<blob id> <path>" lines of its files."""
    used = sorted(p for p in files if re.fullmatch(pattern, p))
    return hashlib.sha256("".join(f"{git_blob_id(files[p])} {p}\n" for p in used).encode()).hexdigest()


@pytest.fixture
def github(monkeypatch):
    """The loopback GitHub, serving each corpus's repository at its pinned commit, and each
    release's checksum set to what is served (a test that puts fingpt's own back sees a mismatch)."""
    with GitHub() as server:
        monkeypatch.setenv("FINGPT_GITHUB_MIRROR", server.url)
        for name, repository in REPOSITORIES.items():
            files = repository()
            release = CORPORA[name]
            server.publish(release.repo, release.commit, files)
            monkeypatch.setitem(
                CORPORA, name, dataclasses.replace(release, digest=checksum(files, release.files))
            )
        yield server


def fingpt_data(*args: str) -> tuple[int, str]:
    """`fingpt-data ARGS` in this process: its exit status and the last line it wrote to stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("name", ["maec", "earnings21_22"])
def test_a_download_gives_the_tables_of_the_published_files(github, tmp_path, name):
    assert fingpt_data("download", name, "--data-dir", str(tmp_path))[0] == 0
    assert rows(tmp_path / name / "calls.parquet") == sample(name)  # the sample was drawn from such tables
    record = json.loads((tmp_path / name / "download.json").read_text())
    assert (
        record["tables"]["calls.parquet"]
        == hashlib.sha256((tmp_path / name / "calls.parquet").read_bytes()).hexdigest()
    )
    assert record["source"] == f"https://github.com/{CORPORA[name].repo}/tree/{CORPORA[name].commit}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing left in .downloads
    calls = [
        doc for _, doc in Corpus(compose("prepare", [f"data={name}", f"paths.data_dir={tmp_path}"]).data)
    ]
    assert len(calls) == len(sample(name))


def test_ectsum_gives_its_three_splits_under_our_names(github, tmp_path):
    assert fingpt_data("download", "ectsum", "--data-dir", str(tmp_path))[0] == 0
    expected = ectsum_repository()[1]
    for split, calls in expected.items():
        assert rows(tmp_path / "ectsum" / f"{split}.parquet") == calls
    cfg = compose("prepare", ["data=ectsum", f"paths.data_dir={tmp_path}"])
    by_split = [split for split, _ in Corpus(cfg.data)]
    assert (by_split.count("train"), by_split.count("validation")) == (9, 3)


def test_maec_and_ectsum_are_one_archive_each_earnings_file_by_file(github, tmp_path):
    assert fingpt_data("download", "maec", "ectsum", "earnings21_22", "--data-dir", str(tmp_path))[0] == 0
    assert len(github.paths("codeload.github.com")) == 2
    assert len(github.paths("api.github.com")) == 1
    assert len(github.paths("raw.githubusercontent.com")) == 12  # the .nlp files only, each once
    github.requests.clear()
    code, said = fingpt_data("download", "maec", "--data-dir", str(tmp_path))
    assert (code, github.requests) == (0, []) and said.endswith(
        "is up to date (its tables match download.json)"
    )


def test_a_download_cut_short_resumes_where_it_stopped(github, tmp_path):
    archive = f"/codeload.github.com/{MAEC.repo}/tar.gz/{MAEC.commit}"
    size = len(github.bodies[archive])
    github.cut_once[archive] = 50_000
    code, said = fingpt_data("download", "maec", "--data-dir", str(tmp_path))
    assert code == 2 and said.endswith(
        f"interrupted after 50,000 of {size:,} bytes (the connection closed early)"
        ": run the same command again to resume"
    )
    assert not (tmp_path / "maec").exists()
    assert fingpt_data("download", "maec", "--data-dir", str(tmp_path))[0] == 0
    assert github.requests[-1] == (archive, "bytes=50000-")
    assert rows(tmp_path / "maec" / "calls.parquet") == sample("maec")


def test_a_file_cut_short_is_resumed_and_the_files_already_fetched_are_not_fetched_again(github, tmp_path):
    release = CORPORA["earnings21_22"]
    raw = sorted(p for p in github.bodies if p.startswith("/raw.") and p.endswith(".nlp"))
    github.cut_once[raw[5]] = 1000
    assert fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))[0] == 2
    github.requests.clear()
    assert fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))[0] == 0
    assert github.requests == [(path, "bytes=1000-" if path == raw[5] else None) for path in raw[5:]]
    assert rows(tmp_path / "earnings21_22" / "calls.parquet") == sample("earnings21_22")
    assert release.repo in json.loads((tmp_path / "earnings21_22" / "download.json").read_text())["source"]


def test_githubs_rate_limit_stops_the_run_with_when_to_retry_and_the_rerun_resumes(github, tmp_path):
    raw = sorted(p for p in github.bodies if p.startswith("/raw.") and p.endswith(".nlp"))
    github.refuse_once[raw[7]] = (429, {"Retry-After": "60"})
    code, said = fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))
    assert code == 2 and said == (
        f"error: {github.url}{raw[7]}: GitHub refused more requests for now (HTTP 429, retry in 60 s): "
        "run the same command later, it resumes; GITHUB_TOKEN=<a token> raises the limit"
    )
    github.requests.clear()
    assert fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))[0] == 0
    assert [path for path, _ in github.requests] == raw[7:]


def test_files_that_are_not_the_pinned_commit_are_refused_and_nothing_is_written(
    github, tmp_path, monkeypatch
):
    monkeypatch.setitem(CORPORA, "maec", MAEC)  # fingpt's own checksum: the real MAEC's
    code, said = fingpt_data("download", "maec", "--data-dir", str(tmp_path))
    assert code == 2
    assert said.startswith(
        f"error: maec: the download does not hold the files of {MAEC.repo} at 65a109f5b1a8 (74 files;"
    )
    assert said.endswith(
        f"expected {MAEC.digest[:12]}); it was deleted: run again, and if it persists report it"
    )
    assert list(tmp_path.iterdir()) == []  # no table, no download kept


def test_a_file_that_does_not_match_its_blob_id_is_fetched_again(github, tmp_path):
    raw = sorted(p for p in github.bodies if p.startswith("/raw.") and p.endswith(".nlp"))
    good = github.bodies[raw[3]]
    github.bodies[raw[3]] = good.replace(b"|0|", b"|7|", 1)
    code, said = fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))
    assert (
        code == 2
        and f"{raw[3].split('/', 6)[-1]} of revdotcom/speech-datasets does not match its checksum" in said
    )
    assert not (tmp_path / "earnings21_22").exists()
    github.bodies[raw[3]] = good
    github.requests.clear()
    assert fingpt_data("download", "earnings21_22", "--data-dir", str(tmp_path))[0] == 0
    assert [path for path, _ in github.requests] == raw[3:]


def test_a_killed_download_resumes_from_what_reached_the_disk(github, tmp_path):
    archive = f"/codeload.github.com/{MAEC.repo}/tar.gz/{MAEC.commit}"
    github.stall_at[archive] = 100_000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fingpt.data.download", "download", "maec", "--data-dir", str(tmp_path)]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / ".downloads" / f"maec-{MAEC.commit[:12]}" / "archive.tar.gz.part"
    assert github.sent.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 90_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = part.stat().st_size
    assert 90_000 <= kept <= 100_000
    del github.stall_at[archive]
    assert fingpt_data("download", "maec", "--data-dir", str(tmp_path))[0] == 0
    assert github.requests[-1] == (archive, f"bytes={kept}-")
    assert rows(tmp_path / "maec" / "calls.parquet") == sample("maec")


def test_offline_is_one_line_that_says_what_to_do(tmp_path):
    port = free_port()
    env = {**os.environ, "FINGPT_GITHUB_MIRROR": f"http://127.0.0.1:{port}", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fingpt.data.download", "download", "maec", "--data-dir", str(tmp_path)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(
        f"error: cannot reach http://127.0.0.1:{port}/codeload.github.com/{MAEC.repo}/tar.gz/"
    )
    assert "fingpt-data download needs the internet" in proc.stderr


def test_a_corpus_already_there_is_kept_and_never_replaced_unless_it_is_a_download(github, tmp_path):
    mine = tmp_path / "maec"
    mine.mkdir()
    (mine / "calls.parquet").write_bytes((DATA_DIR / "maec" / "calls.parquet").read_bytes())
    code, said = fingpt_data("download", "maec", "--data-dir", str(tmp_path))
    assert (code, said, github.requests) == (
        0,
        f"maec: {mine} is there already (--force fetches it again)",
        [],
    )
    code, said = fingpt_data("download", "maec", "--data-dir", str(tmp_path), "--force")
    assert code == 2 and said.endswith(
        "exists and is not a corpus downloaded by fingpt-data: choose another --out, or remove it first"
    )
    assert (mine / "calls.parquet").read_bytes() == (DATA_DIR / "maec" / "calls.parquet").read_bytes()


def test_an_unknown_corpus_names_the_choices(capsys):
    assert fingpt_data("download", "sp500")[0:2] == (
        2,
        "error: no corpus named sp500: choose from ectsum, maec, earnings21_22",
    )


def test_list_says_what_each_corpus_is_and_whether_it_is_here(tmp_path, capsys):
    (tmp_path / "maec").mkdir()
    (tmp_path / "maec" / "calls.parquet").write_bytes(b"")
    main(["list", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "maec           CC BY-SA 4.0  here" in out
    assert "ectsum         GPL-3.0       fingpt-data download ectsum" in out
