"""The tar layer of a files bundle: writing members as a stream, judging members on the way in.

:func:`tar_stream` turns (name, size, chunks) records into a POSIX tar byte stream without a
file object, so the bundle pipeline can pull from it. :func:`check_member` is the gate every
member of a received archive passes before a byte of it is written: only regular files with
plain relative names that the signed manifest lists, at the size it lists. Links, devices,
absolute paths and ``..`` are refused outright. Nothing here opens files.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from airgap.shared.errors import StorageError, UnsafeArchiveError
from airgap.shared.manifest import FileEntry, is_plain_name

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mtime: int
    chunks: Iterable[bytes]
    mode: int = 0o644


def tar_stream(members: Iterable[Member], entries: list[FileEntry]) -> Iterator[bytes]:
    """Yield a tar archive of ``members``; append each member's :class:`FileEntry` when done."""
    written = 0
    for member in members:
        check_name(member.name)
        info = tarfile.TarInfo(member.name)
        info.size, info.mtime, info.mode = member.size, member.mtime, member.mode & 0o755
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        yield header
        digest, size = hashlib.sha256(), 0
        for chunk in member.chunks:
            size += len(chunk)
            if size > member.size:
                raise StorageError(f"{member.name}: file grew while it was being read")
            digest.update(chunk)
            yield chunk
        if size != member.size:
            raise StorageError(f"{member.name}: file shrank while it was being read")
        pad = -size % BLOCK
        yield b"\0" * pad
        written += len(header) + size + pad
        entries.append(FileEntry(member.name, size, digest.hexdigest()))
    end = 2 * BLOCK
    yield b"\0" * (end + (-(written + end) % RECORD))


def check_name(name: str) -> None:
    """A member name must be a plain file name: files bundles carry base names only, so no
    directory in the output (not even a symlink someone put there) is ever walked into."""
    if not is_plain_name(name):
        raise UnsafeArchiveError(f"archive: member name {name!r} is not a plain file name")


def check_member(info: tarfile.TarInfo, expected: Mapping[str, FileEntry]) -> FileEntry:
    """Return the manifest entry ``info`` must match, or refuse it."""
    check_name(info.name)
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(f"archive: {info.name!r} is a link; bundles carry no links")
    if not info.isreg():
        raise UnsafeArchiveError(f"archive: {info.name!r} is not a regular file")
    entry = expected.get(info.name)
    if entry is None:
        raise UnsafeArchiveError(f"archive: {info.name!r} is not listed in the manifest")
    if info.size != entry.size:
        raise UnsafeArchiveError(f"archive: {info.name!r} has a size the manifest does not list")
    return entry
