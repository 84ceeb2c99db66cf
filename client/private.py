"""Folders that hold keys, spools and trusted keys: private from the first one made, whatever
the umask (a world-writable trusted/ would let any local user add a signer); and the entries of
a folder, durable; and files written whole."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
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


def written_by_others(path: Path) -> str | None:
    """Why someone else than this user (or root) could have written ``path``, or None. For a
    file that decides whom to trust (a trusted key, a recipient, the config), as ssh refuses
    such an authorized_keys: owned by another user, writable by others, or in a folder others
    may write to (one with the sticky bit, as /tmp, lets only a file's owner replace it)."""
    me = os.geteuid()
    try:
        info = path.stat()
        folders = {path.parent, path.resolve().parent}  # a link's folder, and its target's
        held = [(folder, folder.stat()) for folder in sorted(folders)]
    except OSError:
        return None  # not there: whoever reads it says so
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (me, 0):
        return f"it belongs to another user (uid {info.st_uid})"
    if mode & _writers(info):
        return f"others may write it (mode {mode:04o})"
    for folder, found in held:
        folder_mode = stat.S_IMODE(found.st_mode)
        if found.st_uid not in (me, 0):
            return f"its folder {folder} belongs to another user (uid {found.st_uid})"
        if folder_mode & _writers(found) and not folder_mode & stat.S_ISVTX:
            return f"others may write its folder {folder} (mode {folder_mode:04o})"
    return None


def _writers(info: os.stat_result) -> int:
    """The write bits that let others in: group write too, unless the group is the owner's
    own (a user private group, as a umask of 002 goes with, which Debian's ssh allows)."""
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return 0o022
    private = group.gr_name == owner and set(group.gr_mem) <= {owner}
    return 0o002 if private else 0o022
