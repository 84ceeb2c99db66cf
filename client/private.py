"""Folders that hold keys, spools and trusted keys: private from the first one made, whatever
the umask (a world-writable trusted/ would let any local user add a signer); and the entries of
a folder, durable."""

from __future__ import annotations

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
