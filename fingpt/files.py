"""Folders written whole or not at all, their permissions, and file checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def replace_folder(out: Path, marker: str, kind: str) -> Iterator[Path]:
    """Yield a temporary folder beside `out` to write into; when the block ends without error it
    replaces `out` in one rename, so a crash never leaves a half-written folder. An existing `out`
    is replaced only if it is empty or holds `marker` (a file only a `kind` has): nothing else a
    user keeps there is ever deleted."""
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a {kind}: choose another --out, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        default_permissions(tmp)
        if out.exists():  # swap in the new folder, then drop the old one
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the permissions a plain open() or
    mkdir() would under the umask, not the owner-only 0600/0700 of tempfile and safetensors'
    writer: a server running as another user must be able to read a bundle or a prepared corpus.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in [path, *path.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
