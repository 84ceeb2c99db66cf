"""Unpacking a verified files bundle into an output directory, all or nothing.

Members are written into a hidden staging directory inside the output directory while the
plaintext streams in; only once the whole plaintext has matched its signed sha256 are they moved
into place, each without replacing an existing file. On any failure the staging directory is
removed, so the output directory is left exactly as it was.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from airgap.shared.archive import check_member
from airgap.shared.errors import PlaintextHashError, StorageError, UnsafeArchiveError
from airgap.shared.manifest import FileEntry, Manifest

STAGING_PREFIX = ".airgap-staging-"
COPY_CHUNK = 1024 * 1024


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of chunks (tarfile pulls, the pipeline yields)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def drain(self) -> None:
        """Pull the rest of the stream, so the checks at its end run."""
        self._buffer = memoryview(b"")
        for _ in self._chunks:
            pass


def extract_files(plaintext: Iterator[bytes], manifest: Manifest, out_dir: Path) -> list[Path]:
    expected = {f.name: f for f in manifest.files}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out_dir)
        clashes = [n for n in expected if os.path.lexists(out_dir / n)]
        if clashes:
            raise StorageError(
                f"{out_dir} already has {', '.join(sorted(clashes))}",
                hint="move those files away or choose another --output-dir",
            )
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as exc:
        raise StorageError(f"{out_dir}: {exc.strerror or exc}") from exc
    try:
        reader = ChunkReader(plaintext)
        _unpack(reader, expected, staging)
        reader.drain()
        return _publish(staging, sorted(expected), out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(reader: ChunkReader, entries: dict[str, FileEntry], staging: Path) -> None:
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for info in tar:
                entry = check_member(info, entries)
                if entry.name in seen:
                    raise UnsafeArchiveError(f"archive: {entry.name!r} appears twice")
                seen.add(entry.name)
                source = tar.extractfile(info)
                if source is None:
                    raise UnsafeArchiveError(f"archive: {entry.name!r} has no data")
                digest = _write_member(source, staging / entry.name)
                if digest != entry.sha256:
                    raise PlaintextHashError(
                        f"plaintext: {entry.name!r} does not match its sha256 in the manifest"
                    )
    except (tarfile.TarError, EOFError) as exc:
        raise UnsafeArchiveError(f"archive: not a well-formed tar ({exc})") from exc
    missing = set(entries) - seen
    if missing:
        raise UnsafeArchiveError(f"archive: lacks {', '.join(sorted(missing))}")


def _write_member(source: IO[bytes], target: Path) -> str:
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            while chunk := source.read(COPY_CHUNK):
                digest.update(chunk)
                handle.write(chunk)
    except OSError as exc:
        raise StorageError(f"writing {target.name}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _publish(staging: Path, names: list[str], out_dir: Path) -> list[Path]:
    placed: list[Path] = []
    try:
        for name in names:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(staging / name, target)  # fails rather than replace a file that appeared
            placed.append(target)
    except OSError as exc:
        for path in placed:
            path.unlink(missing_ok=True)
        raise StorageError(f"placing files in {out_dir}: {exc.strerror or exc}") from exc
    return placed


def _remove_stale_staging(out_dir: Path) -> None:
    for entry in out_dir.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
