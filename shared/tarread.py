"""Reading a tar stream from an iterator of chunks, strictly and without copying data.

:func:`read_tar` yields a :class:`tarfile.TarInfo` when a member starts and then that member's
data as memoryviews, so a consumer can write files straight from the decrypted stream. It reads
what :func:`airgap.shared.archive.tar_stream` and ``tar`` write: ustar headers, pax ``x``
headers for long names and large sizes. Global pax headers, GNU long names, sparse files,
unknown pax keys, bad checksums, and after the end of the archive anything but a record's
zeros are refused. It judges structure only: whether a member may be written is
:func:`check_member`'s call.
"""

from __future__ import annotations

import re
import tarfile
from collections import deque
from collections.abc import Iterable, Iterator

from airgap.shared.errors import UnsafeArchiveError

BLOCK = tarfile.BLOCKSIZE
_SIZE = re.compile(r"[0-9]{1,20}")
MAX_PAX = 64 * 1024
#: The most the end of an archive may take: its two zero blocks, padded to a whole record (of
#: 10 KiB for tar, Python's tarfile and airgap; 1 MiB with ``tar -b 2048``), so a block under
#: two records. A signed plaintext of a few files and GiBs of zeros (a few KiB compressed)
#: would otherwise keep a fetch busy for hours.
MAX_END = (1 << 20) + BLOCK
#: pax keys we apply, and the harmless ones tar writers add that we ignore.
PAX_APPLIED = {"path", "size"}
PAX_IGNORED = {"mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"}
REFUSED_TYPES = {
    tarfile.XGLTYPE: "a global pax header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long name",
    tarfile.GNUTYPE_LONGLINK: "a GNU long link",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class _Stream:
    """Bytes from an iterator of chunks, taken exactly or streamed as views."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._views: deque[memoryview] = deque()

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._views.append(memoryview(chunk))
                return True
        return False

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size:
            if not self._views and not self._more():
                raise UnsafeArchiveError("archive: ends in the middle of a member")
            view = self._views.popleft()
            if len(view) > size:
                self._views.appendleft(view[size:])
                view = view[:size]
            size -= len(view)
            yield view

    def exactly(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def at_end(self) -> bool:
        return not self._views and not self._more()

    def rest_is_zero(self, limit: int) -> bool:
        """Whether what is left is zeros, ``limit`` bytes at most."""
        while self._views or self._more():
            view = self._views.popleft()
            limit -= len(view)
            if limit < 0 or any(view):
                return False
        return True


def read_tar(chunks: Iterable[bytes]) -> Iterator[tarfile.TarInfo | memoryview]:
    stream = _Stream(chunks)
    overrides: dict[str, str] = {}
    while True:
        if stream.at_end():
            raise UnsafeArchiveError("archive: ends without its end-of-archive marker")
        block = stream.exactly(BLOCK)
        if not any(block):
            if not stream.rest_is_zero(MAX_END - BLOCK):
                raise UnsafeArchiveError(
                    "archive: data, or more zeros than a tar record, after the end-of-archive "
                    "marker"
                )
            return
        info = _header(block)
        if info.type == tarfile.XHDTYPE:
            if info.size > MAX_PAX or overrides:
                raise UnsafeArchiveError("archive: oversized or repeated pax header")
            overrides = _pax(stream.exactly(info.size))
            stream.exactly(-info.size % BLOCK)
            continue
        _apply(info, overrides)
        overrides = {}
        yield info
        yield from stream.pieces(info.size)
        stream.exactly(-info.size % BLOCK)


def _header(block: bytes) -> tarfile.TarInfo:
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError, ValueError) as exc:
        raise UnsafeArchiveError(f"archive: malformed header ({exc})") from exc
    if info.type in REFUSED_TYPES:
        raise UnsafeArchiveError(f"archive: {REFUSED_TYPES[info.type]} is not supported")
    if info.size < 0:
        raise UnsafeArchiveError("archive: negative member size")
    return info


def _pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            if not _SIZE.fullmatch(data[pos:space].decode("ascii")):
                raise ValueError("pax record length")
            length = int(data[pos:space])
            record = data[space + 1 : pos + length]
            key, _, value = record[:-1].decode("utf-8").partition("=")
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnsafeArchiveError("archive: malformed pax header") from exc
        if space < 0 or length <= 0 or not record.endswith(b"\n") or key in records:
            raise UnsafeArchiveError("archive: malformed pax header")
        if key not in PAX_APPLIED | PAX_IGNORED:
            raise UnsafeArchiveError(f"archive: pax key {key!r} is not supported")
        records[key] = value
        pos += length
    return records


def _apply(info: tarfile.TarInfo, overrides: dict[str, str]) -> None:
    if "path" in overrides:
        info.name = overrides["path"]
    if "size" in overrides:
        if not _SIZE.fullmatch(overrides["size"]):
            raise UnsafeArchiveError("archive: malformed pax size")
        info.size = int(overrides["size"])
