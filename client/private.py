"""Folders that hold keys, spools and trusted keys: private from the first one made, whatever
the umask (a world-writable trusted/ would let any local user add a signer); and the entries of
a folder, durable; and files written whole."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from airgap.shared.errors import StorageError


def private_dir(path: Path) -> Path:
    """``path``, made 0700 with every folder above it that did not exist yet."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"making {path}: {exc.strerror or exc}") from exc
    return path


def sync_dir(directory: Path) -> None:
    """The directory's new entries, durable: the names as well as the bytes."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staged(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a hidden file beside ``path``, on disk: renamed over ``path``, it is whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened a secret
        left = memoryview(data)
        while left:
            left = left[os.write(fd, left) :]
        os.fsync(fd)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return tmp


def write_whole(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """``path`` holds ``data``, whole or not at all (the old content until then), on disk."""
    staged(path, data, mode).replace(path)
