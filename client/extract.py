"""Unpacking a verified files bundle into an output directory, all or nothing.

Members are written into a hidden staging directory beside the output directory while the
plaintext streams in; only once the whole plaintext has matched its signed sha256 are they moved
into place, each without replacing an existing file (a file of ours that already holds the
member's signed bytes is left as it is: a run cut off between placing the files and writing
its ledger placed it). That one hash binds every member's bytes,
so members are not hashed again here (the manifest's per-file sha256 is for people and
tools). On any failure the staging directory is removed, so the output directory is left
exactly as it was.

Others may be able to write into the output directory (a shared 1777 tmpfs): no name there is
written through or reused. Final names are made by link(2), which neither follows nor replaces
an existing entry; across file systems each member is first copied into a new file of a random
hidden name, created with O_EXCL and O_NOFOLLOW, and linked from there.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from airgap.client.private import sync_dir
from airgap.shared.archive import check_member
from airgap.shared.errors import StorageError, UnsafeArchiveError
from airgap.shared.manifest import FileEntry, Manifest
from airgap.shared.tarread import read_tar

STAGING_PREFIX = ".airgap-staging-"
COPY_CHUNK = 1024 * 1024
COPY_PREFIX = ".airgap-copy-"


def extract_files(plaintext: Iterator[bytes], manifest: Manifest, out_dir: Path) -> list[Path]:
    expected = {f.name: f for f in manifest.files}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        there = {n for n in expected if os.path.lexists(out_dir / n)}
        clashes = sorted(n for n in there if not _placed_before(out_dir / n, expected[n]))
        if clashes:
            raise StorageError(
                f"{out_dir} already has {', '.join(clashes)}",
                hint="move those files away or choose another --output-dir",
            )
        staging, lock = _staging(out_dir)
    except OSError as exc:
        raise StorageError(f"{out_dir}: {exc.strerror or exc}") from exc
    try:
        _unpack(plaintext, expected, staging)
        _publish(staging, sorted(set(expected) - there), out_dir)
        swapped = sorted(n for n in there if not _placed_before(out_dir / n, expected[n]))
        if swapped:  # replaced while this run unpacked: others may write the directory
            raise StorageError(f"{out_dir}: {', '.join(swapped)} changed while fetching")
        return [out_dir / name for name in sorted(expected)]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def _placed_before(path: Path, entry: FileEntry) -> bool:
    """Whether ``path`` is this member as an earlier run placed it, before a crash kept the
    ledger from saying so: a regular file of ours, not a link, of the signed size and sha256.
    Such a file is left as it is; any other entry is a clash. The bundle is still verified
    whole before the run counts it as imported."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False  # a link, a name gone meanwhile, one we may not read
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        if info.st_nlink != 1:  # a link to a file of ours planted there: edits would reach it
            return False
        if info.st_size != entry.size:
            return False
        digest = hashlib.file_digest(handle, "sha256")
    return hmac.compare_digest(digest.hexdigest(), entry.sha256)


def _unpack(plaintext: Iterator[bytes], entries: dict[str, FileEntry], staging: Path) -> None:
    """Write every member into ``staging``; return only after the whole stream checked out."""
    seen: set[str] = set()
    handle: BinaryIO | None = None
    try:
        for item in read_tar(plaintext):
            if isinstance(item, memoryview):
                if handle is None:
                    raise UnsafeArchiveError("archive: data outside a member")
                handle.write(item)
                continue
            if handle is not None:
                _durable(handle)
            entry = check_member(item, entries)
            if entry.name in seen:
                raise UnsafeArchiveError(f"archive: {entry.name!r} appears twice")
            seen.add(entry.name)
            handle = _create(staging / entry.name)
        if handle is not None:
            _durable(handle)
    except OSError as exc:
        raise StorageError(f"unpacking: {exc.strerror or exc}") from exc
    finally:
        if handle is not None:
            handle.close()
    missing = set(entries) - seen
    if missing:
        raise UnsafeArchiveError(f"archive: lacks {', '.join(sorted(missing))}")


def _durable(handle: BinaryIO) -> None:
    """Flush and fsync a member, then close it: the ledger records the bundle as imported once
    this returns, so a crash after it must not lose the file's bytes."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _create(target: Path) -> BinaryIO:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "wb")


def _staging(out_dir: Path) -> tuple[Path, int]:
    """A private folder beside the output directory (so nothing unverified is ever inside
    it, even after a crash); inside it only where its parent is not ours to write. With the
    descriptor that holds its lock until the unpacking is over: another fetch into the same
    directory (with a ledger of its own, so no lock between them) removes only the folders
    a crash left (found in review: it removed this run's, mid-way)."""
    prefix = f"{STAGING_PREFIX}{out_dir.resolve().name}-"
    parent = out_dir.resolve().parent
    _remove_stale(parent.glob(prefix + "*"))
    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except PermissionError:
        _remove_stale(out_dir.iterdir(), named=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        lock = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fcntl.flock(lock, fcntl.LOCK_EX)
    return staging, lock


#: A staging folder younger than this is never removed as stale: one just made is not
#: locked yet.
STAGING_GRACE = 60.0


def _remove_stale(candidates: Iterator[Path], *, named: bool = False) -> None:
    """Remove the staging folders among ``candidates`` that no fetch holds (a crash left
    them); ``named``: only those whose name says they are staging folders."""
    for stale in candidates:
        if named and not stale.name.startswith(STAGING_PREFIX):
            continue
        try:
            info = stale.lstat()
            if not stat.S_ISDIR(info.st_mode) or time.time() - info.st_mtime < STAGING_GRACE:
                continue
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another fetch is unpacking there
            os.close(fd)
            continue
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


def _publish(staging: Path, names: list[str], out_dir: Path) -> list[Path]:
    placed: list[Path] = []
    try:
        for name in names:
            target = out_dir / name
            _place(staging / name, target)
            placed.append(target)
        sync_dir(out_dir)
    except BaseException as exc:  # an interrupt too: all or nothing
        for path in placed:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"placing files in {out_dir}: {exc.strerror or exc}") from exc
        raise
    return placed


def _place(source: Path, target: Path) -> None:
    """Link the verified file into place, never replacing an entry that is there or appeared
    meanwhile: link(2) fails on any existing name (a dangling symlink too) and follows none.
    Across file systems, copy it first into a new file of a random hidden name in the output
    directory, created exclusively and without following a link, and link that: the output
    directory may be writable by others (a shared tmpfs), so no name there is ours to reuse."""
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, hidden = _new_hidden_file(target.parent)
    try:
        with os.fdopen(fd, "wb") as copy:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(src, "rb") as original:
                shutil.copyfileobj(original, copy, COPY_CHUNK)
            copy.flush()
            os.fsync(copy.fileno())
            os.link(hidden, target, follow_symlinks=False)
            if not os.path.samestat(os.fstat(copy.fileno()), os.lstat(target)):
                target.unlink()  # our hidden name was swapped: what we linked is not our copy
                raise StorageError(f"{target.parent}: {hidden.name} was replaced while in use")
    finally:
        hidden.unlink(missing_ok=True)


def _new_hidden_file(directory: Path) -> tuple[int, Path]:
    """A new, empty file of a random hidden name in ``directory``, opened for writing; never an
    entry someone prepared (O_EXCL), never through a link (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        path = directory / f"{COPY_PREFIX}{secrets.token_hex(8)}"
        try:
            return os.open(path, flags, 0o644), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name for a temporary copy", str(directory))
