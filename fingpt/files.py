"""Files and folders written whole or not at all, their permissions, checksums and short hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read 16 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(value: object) -> str:
    """16 hex digits of the SHA-256 of `value` as JSON with sorted keys: a key for caches."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def new_file(path: Path) -> Iterator[Path]:
    """Yield a temporary name of this process beside `path` to write; when the block ends without
    error it is renamed to `path`, so a crash never leaves a half-written file under that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all."""
    with new_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def _temporary_folder(out: Path) -> Iterator[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out` to write into; when the block ends without error it
    becomes `out` in one rename, so a crash never leaves a half-written folder. If another process
    made the same `out` meanwhile, theirs stays and this one is dropped."""
    with _temporary_folder(out) as tmp:
        yield tmp
        default_permissions(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():
                raise


@contextmanager
def replace_folder(out: Path, marker: str, kind: str) -> Iterator[Path]:
    """As new_folder, but an existing `out` is replaced, in one rename. It is replaced only if it
    is empty or holds `marker` (a file only a `kind` has): nothing else a user keeps there is ever
    deleted."""
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a {kind}: choose another --out, or remove it first")
    with _temporary_folder(out) as tmp:
        yield tmp
        default_permissions(tmp)
        if out.exists():  # swap in the new folder, then drop the old one
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)


def default_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the permissions a plain open() or
    mkdir() would under the umask, not the owner-only 0600/0700 of tempfile and safetensors'
    writer: a server running as another user must be able to read a bundle or a prepared corpus.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in [path, *path.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
