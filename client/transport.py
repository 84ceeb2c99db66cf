"""Where bundles travel: the few operations send and fetch need, and the directory transport.

A transport is a flat area of named files: list, size, read from an offset, write from an offset,
rename and delete. Send and fetch never know which transport they have; the FTP drop box and a
directory on removable media are two implementations. A bundle is *published* once its
``.minisig`` exists: writers put it last, readers ignore anything without one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from airgap.client.private import sync_dir
from airgap.shared.errors import AirgapError, StorageError, TransferError
from airgap.shared.ids import ID_LENGTH, is_bundle_id
from airgap.shared.manifest import is_plain_name

MANIFEST_SUFFIX = ".manifest.json"
SIGNATURE_SUFFIX = ".manifest.json.minisig"
PARTIAL_SUFFIX = ".part"
#: The most a listing may hold, in bytes of names: 16 MiB is ~400,000 bundle file names.
MAX_LISTING = 16 << 20
#: The buffer of a transport's file reader. It is smaller than the pieces a payload is read in
#: (1 MiB), because a BufferedReader copies every read no larger than its buffer through that
#: buffer, and hands larger ones straight to the file.
READ_BUFFER = 64 * 1024


class Writable(Protocol):
    """What a transport's writer is: write, then close (or leave its ``with`` block)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Writable: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
        /,
    ) -> None: ...


class Transport(Protocol):
    def describe(self) -> str: ...

    def list(self) -> list[str]: ...

    def size(self, name: str) -> int | None: ...

    def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase: ...

    def writer(self, name: str, *, offset: int = 0) -> Writable: ...

    def rename(self, src: str, dst: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...


def published_ids(names: list[str]) -> list[str]:
    """Bundle ids whose signature has arrived, oldest first (ids sort by time). Names that
    are not bundle ids are ignored: they are never echoed to a terminal."""
    ids = (n[: -len(SIGNATURE_SUFFIX)] for n in names if n.endswith(SIGNATURE_SUFFIX))
    return sorted(i for i in ids if is_bundle_id(i))


def put_small(transport: Transport, name: str, data: bytes) -> None:
    """``data`` as ``name``, which appears only once whole (renamed from a partial)."""
    partial = name + PARTIAL_SUFFIX
    with transport.writer(partial) as out:
        out.write(data)
    transport.rename(partial, name)


class DirectoryTransport:
    """A directory, such as removable media. Names are plain file names inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        if not is_plain_name(name):
            raise TransferError(f"{name!r} is not a plain file name")
        return self.root / name

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(self.root, what) from exc
            raise TransferError(f"{what}: {exc.strerror or exc}") from exc

    def list(self) -> list[str]:
        """The files whose names can be a bundle's (they begin with a bundle id), at most
        :data:`MAX_LISTING` bytes of them, as for a drop box: media holding millions of other
        files cost a scan, never a list of their names."""
        with self._errors(f"listing {self.root}"):
            return sorted(self._bundle_names())

    def _bundle_names(self) -> Iterator[str]:
        held = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not is_bundle_id(entry.name[:ID_LENGTH]):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                held += len(entry.name) + 1
                if held > MAX_LISTING:
                    raise TransferError(
                        f"listing {self.root}: more than {MAX_LISTING >> 20} MiB of names of "
                        "bundle files",
                        hint="no send leaves that many; move bundles off the media in batches",
                    )
                yield entry.name

    def size(self, name: str) -> int | None:
        """The size of a regular file; None for anything else (missing, link, FIFO, device)."""
        try:
            info = self._path(name).lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransferError(f"{name}: {exc.strerror or exc}") from exc
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        with self._errors(f"reading {name}"):
            # O_NONBLOCK: opening a FIFO planted on the media must not hang us.
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise TransferError(f"{name} is not a regular file")
                os.set_blocking(fd, True)
                raw = _MediaFile(fd, name)
            except BaseException:
                os.close(fd)
                raise
            raw.seek(offset)
            return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def writer(self, name: str, *, offset: int = 0) -> Writable:
        """Write from ``offset``: 0 creates the file anew; a resume cuts the file there."""
        with self._errors(f"writing {name}"):
            self.root.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self._path(name), flags | (os.O_TRUNC if offset == 0 else 0), 0o644)
            os.ftruncate(fd, offset)
            handle = os.fdopen(fd, "wb")
            handle.seek(offset)
            return _SyncOnClose(handle, self.root)

    def rename(self, src: str, dst: str) -> None:
        with self._errors(f"renaming {src}"):
            self._path(src).replace(self._path(dst))
            sync_dir(self.root)

    def delete(self, name: str) -> None:
        with self._errors(f"deleting {name}"):
            self._path(name).unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release: each operation opens and closes what it needs."""


def _no_space(where: Path, what: str = "") -> StorageError:
    return StorageError(
        f"{what + ': ' if what else ''}no space left on {where}",
        hint="the bundle does not fit there: free some space, or use a larger disk",
    )


class _MediaFile(io.FileIO):
    """A file on the media whose read errors are transfer errors, not tracebacks."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__(fd, "rb", closefd=True)
        self._label = name

    def readinto(self, buffer: Any) -> int | None:
        try:
            return super().readinto(buffer)
        except OSError as exc:
            raise TransferError(f"reading {self._label}: {exc.strerror or exc}") from exc


class _SyncOnClose:
    """A file that reaches the disk before close returns: media get pulled right after."""

    def __init__(self, handle: BinaryIO, where: Path) -> None:
        self._handle = handle
        self._where = where

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise self._failed(exc, TransferError) from exc

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            raise self._failed(exc, StorageError) from exc

    def close(self) -> None:
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise self._failed(exc, StorageError) from exc
        finally:
            # Its flush failed above, maybe, and would again here: what went wrong is said.
            with contextlib.suppress(OSError):
                self._handle.close()

    def _failed(self, exc: OSError, kind: type[AirgapError]) -> AirgapError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _no_space(self._where)
        return kind(f"writing into {self._where}: {exc.strerror or exc}")

    def __enter__(self) -> _SyncOnClose:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
            return
        with contextlib.suppress(AirgapError):  # the error under way says what went wrong
            self.close()
