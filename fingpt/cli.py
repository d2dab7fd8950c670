"""What the command lines share: a mistake in the user's input ends them in one line.

A mistake is a ValueError (DataError is one) or a FileNotFoundError raised with a message that
names the input and what to do; a folder that cannot be written; or one of Hydra's own errors (a
config option that does not exist, an override that does not parse, a key not in the config).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# an OSError with one of these is the user's folder, not a bug: not theirs, read-only, full
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EISDIR}


def user_message(e: BaseException) -> str | None:
    """The one line to print for `e` when it is a mistake in the input, else None."""
    if isinstance(e, (ValueError, FileNotFoundError)):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{e.filename}: a file is in the way of a folder to write ({e.strerror}): give another folder"
    if isinstance(e, OSError) and e.errno in UNWRITABLE:
        return f"{e.filename}: {e.strerror}: give a folder you can write to"
    if (hydra := sys.modules.get("hydra.errors")) is None:
        return None
    if isinstance(e, hydra.MissingConfigException) and e.options:
        group, name = (e.missing_cfg_file or "").rpartition("/")[::2]
        return f"{group}={name}: there is no such config; choose one of {', '.join(e.options)}"
    if isinstance(e, (hydra.ConfigCompositionException, hydra.OverrideParseException)):
        return f"{e}" + (f" ({e.__cause__})" if e.__cause__ else "")
    return None


@contextmanager
def user_errors(*more: type[Exception]) -> Iterator[None]:
    """A mistake in the input (see above, or one of `more`) raised in the block ends the program
    with `error: <message>` on one line and exit status 2, not a traceback."""
    try:
        yield
    except Exception as e:
        message = str(e) if isinstance(e, more) else user_message(e)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)


def run_hydra(hydra_main: Callable[[], object]) -> None:
    """Run a `@hydra.main` function with Hydra's own errors reported as user errors: Hydra prints
    them over several lines and exits 1 unless HYDRA_FULL_ERROR lets them through to here."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    with user_errors():
        hydra_main()
