"""``state/credentials.txt``: the passwords generated on first start, for the operator to read.

The file holds plaintext, so it lives with mode 0600 and only as long as it is true: a line
goes as soon as its account's password changes or the account goes, and the file goes with its
last line. It is always written whole (a private temporary file, then a rename), never edited in
place. This module never logs or prints a password; it is the only one that reads the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from airgap.server import secretfile
from airgap.shared.errors import StorageError

HEADER = "# user role password (generated on first start; change with airgap user)\n"


def create(path: Path, lines: Sequence[str]) -> None:
    """Write the first start's ``NAME ROLE PASSWORD`` lines; never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(HEADER + "".join(f"{line}\n" for line in lines))


def forget(path: Path, name: str) -> bool:
    """Drop the line of account ``name``; True if there was one.

    Removes the file when no account's line is left in it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as handle:
            lines = handle.read().splitlines(keepends=True)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"reading {path}: {exc.strerror or exc}") from exc
    kept = [line for line in lines if _account(line) != name]
    if len(kept) == len(lines):
        return False
    try:
        if not any(_account(line) for line in kept):
            path.unlink()
        else:
            secretfile.replace(path, "".join(kept))
    except OSError as exc:
        raise StorageError(f"writing {path}: {exc.strerror or exc}") from exc
    return True


def _account(line: str) -> str | None:
    """The account a line is about; None for a comment or a blank line."""
    fields = line.split()
    return fields[0] if fields and not fields[0].startswith("#") else None
