"""A lock file: an exclusive ``flock`` held while a read-change-write of a file runs, so two
processes doing one at once do not keep only one of their changes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from airgap.shared.errors import StorageError


@contextmanager
def held(path: Path, what: str) -> Iterator[None]:
    """Wait for and hold an exclusive lock on ``path`` (made 0600 if missing, never through a
    link); a failure to open it is a :class:`StorageError` naming ``what``. Not reentrant:
    a second hold in the same process waits for ever."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
