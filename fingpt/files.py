"""Permissions for what is written to a temporary file or folder and then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def default_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the permissions a plain open() or
    mkdir() would under the umask, not the owner-only 0600/0700 of tempfile and safetensors'
    writer: a server running as another user must be able to read a bundle or a prepared corpus.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in [path, *path.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
