"""What the command lines share: a mistake in the user's input ends them in one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def user_errors(*more: type[Exception]) -> Iterator[None]:
    """A bad value, a missing file or unusable data (ValueError, FileNotFoundError, or `more`)
    raised in the block ends the program with `error: <message>` and exit status 2, not a
    traceback: the messages already name the input and what to do."""
    try:
        yield
    except (ValueError, FileNotFoundError, *more) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
