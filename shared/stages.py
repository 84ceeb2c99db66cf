"""Streaming stages: small units with one interface, composed by :class:`Chain`.

A stage takes bytes with ``update(data) -> bytes`` and drains what it still holds with
``finish() -> bytes``. Hashing stages pass data through untouched and keep a digest; the
compression and encryption stages transform it. A stage owns only its own buffer: it never opens
files or sockets, so every stage is testable with bytes alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Protocol, TypeVar, cast, runtime_checkable

import zstandard

from airgap.shared.errors import AirgapError, CompressionError

DEFAULT_ZSTD_LEVEL = 1
#: The size of the pieces ZstdCompress emits: a whole number of age chunks (64 KiB).
ZSTD_PIECE = 1 << 20
#: Plaintext bytes between the points where a paced ZstdCompress may change its level.
LEVEL_STEP = 16 * 1024 * 1024


class Pace(Protocol):
    """Chooses the zstd level as the plaintext goes by (see :class:`ZstdCompress`)."""

    def __call__(self, step: int, level: int, produced: int) -> int:
        """The level from step ``step`` on (``step`` * LEVEL_STEP plaintext bytes are in),
        given the level so far and the compressed bytes produced so far."""
        ...


@runtime_checkable
class Stage(Protocol):
    def update(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Chain:
    """Stages run in order: the output of one is the input of the next."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(stages)

    def update(self, data: bytes) -> bytes:
        for stage in self._stages:
            if not data:
                return b""
            data = stage.update(data)
        return data

    def finish(self) -> bytes:
        out = b""
        for stage in self._stages:
            out = stage.update(out) if out else b""
            out += stage.finish()
        return out


class Sha256:
    """Counts and hashes what passes through."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> bytes:
        self._hash.update(data)
        self.size += len(data)
        return data

    def finish(self) -> bytes:
        return b""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Segments:
    """Hashes what passes through in fixed-size segments (the last one may be shorter)."""

    def __init__(self, segment_size: int) -> None:
        if segment_size <= 0:
            raise ValueError("segment size must be positive")
        self.segment_size = segment_size
        self.digests: list[str] = []
        self._hash = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            take = min(len(view), self.segment_size - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.segment_size:
                self._close_segment()
        return data

    def finish(self) -> bytes:
        if self._filled:
            self._close_segment()
        return b""

    def _close_segment(self) -> None:
        self.digests.append(self._hash.hexdigest())
        self._hash = hashlib.sha256()
        self._filled = 0


class _Chunker(Protocol):
    """What ZstdCompress uses of zstandard's chunker (whose stubs leave ``finish`` untyped)."""

    def compress(self, data: bytes | memoryview) -> Iterable[bytes]: ...

    def finish(self) -> Iterable[bytes]: ...


class ZstdCompress:
    """zstd frames; ``threads`` > 0 compresses on worker threads while we go on.

    Output comes in whole pieces of ``ZSTD_PIECE`` bytes (each frame's last one shorter): zstd
    writes straight into one piece, where a compressobj would grow and copy a buffer on every
    call (4-5 % of the encoder's CPU time on two cores).

    Without ``pace``, one frame at ``level``. With it, ``pace`` is asked for the level at every
    ``LEVEL_STEP`` bytes of plaintext; a new level ends the frame, and the next plaintext byte
    begins another (``zstd -d`` reads concatenated frames as one stream). The steps fall at
    fixed offsets, so the same plaintext and the same answers give the same bytes however the
    plaintext is cut.
    """

    def __init__(
        self, *, level: int = DEFAULT_ZSTD_LEVEL, threads: int = 0, pace: Pace | None = None
    ) -> None:
        self.level = self.highest = level
        self._threads = threads
        self._pace = pace
        self._taken = 0  # plaintext bytes in
        self._produced = 0  # compressed bytes out
        # None between a level change and the next plaintext byte: a frame is begun only for
        # data, so a plaintext that ends on a step does not end in an empty frame.
        self._chunker: _Chunker | None = self._frame(level)

    def _frame(self, level: int) -> _Chunker:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=self._threads, write_checksum=True
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        chunker: _Chunker = compressor.chunker(chunk_size=ZSTD_PIECE)
        return chunker

    def update(self, data: bytes) -> bytes:
        if self._pace is None:
            return b"".join(self._started().compress(data))
        pieces: list[bytes] = []
        view = memoryview(data)
        while view:
            room = LEVEL_STEP - self._taken % LEVEL_STEP
            part, view = view[:room], view[room:]
            pieces.extend(self._started().compress(part))
            self._taken += len(part)
            if self._taken % LEVEL_STEP == 0:
                produced = self._produced + sum(map(len, pieces))
                level = self._pace(self._taken // LEVEL_STEP, self.level, produced)
                if level != self.level:
                    pieces.extend(self._started().finish())
                    self._chunker, self.level = None, level
        out = b"".join(pieces)
        self._produced += len(out)
        return out

    def finish(self) -> bytes:
        return b"".join(self._chunker.finish()) if self._chunker is not None else b""

    def _started(self) -> _Chunker:
        """The frame at the current level, begun now if the level has just changed."""
        if self._chunker is None:
            self._chunker = self._frame(self.level)
            self.highest = max(self.highest, self.level)
        return self._chunker


def zstd_decompress(chunks: Iterator[bytes], *, piece: int = 1 << 20) -> Iterator[bytes]:
    """The zstd frames in ``chunks``, pulled ``piece`` bytes at a time: however well the input
    compresses (a GiB of zeros fits in a few KiB), no output piece is larger than ``piece``.

    A damaged frame, a frame checksum that does not match, or bytes after a frame that are not
    another frame raise :class:`CompressionError`. A second frame is decoded too, and input cut
    short just ends the output (a cut checksum goes unnoticed): the caller's checks of the
    plaintext's signed size and sha256 are what prove the output whole."""
    source = cast("IO[bytes]", _ChunkFile(chunks))  # all the reader calls is read(n)
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=piece)
    try:
        while data := reader.read(piece):
            yield data
    except zstandard.ZstdError as exc:
        raise CompressionError(f"zstd: corrupt compressed stream ({exc})") from exc


class _ChunkFile:
    """The ``read(n)`` a zstd stream reader pulls from, over an iterator of chunks. It hands
    out views of the chunks, not copies: the reader keeps a reference until it is done."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = memoryview(b"")

    def read(self, size: int = -1) -> memoryview:
        if not self._rest:
            self._rest = memoryview(next(self._chunks, b""))
        take = len(self._rest) if size < 0 else min(size, len(self._rest))
        data, self._rest = self._rest[:take], self._rest[take:]
        return data


class Limit:
    """Refuses more than ``limit`` bytes: a stream may not grow past what was declared."""

    def __init__(self, limit: int, error: type[AirgapError], what: str) -> None:
        self._left = limit
        self._error = error
        self._what = what

    def update(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise self._error(f"{self._what} is longer than the manifest says")
        return data

    def finish(self) -> bytes:
        return b""


Data = TypeVar("Data", bytes, memoryview)
Taken = TypeVar("Taken", bytes, memoryview, contravariant=True)


class Takes(Protocol[Taken]):
    """A stage as :func:`run` sees it: it may also take views (of a buffer it must not keep:
    the view is good only for the call), and hand on a bytearray of its own (which it no
    longer touches) rather than copy it into bytes."""

    def update(self, data: Taken) -> bytes | bytearray: ...

    def finish(self) -> bytes: ...


def run(chunks: Iterable[Data], stage: Takes[Data]) -> Iterator[bytes | bytearray]:
    """Push ``chunks`` through ``stage`` and yield the non-empty outputs, drained at the end."""
    for chunk in chunks:
        out = stage.update(chunk)
        if out:
            yield out
    out = stage.finish()
    if out:
        yield out


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Slices large pieces to at most ``size`` bytes, so no stage sees an outsized input."""
    for chunk in chunks:
        if len(chunk) <= size:
            yield chunk
        else:
            yield from map(bytes, views([chunk], size))


def views(chunks: Iterable[bytes | memoryview], size: int) -> Iterator[memoryview]:
    """Like :func:`rechunk`, but copies nothing: each piece is a view of what came in."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), size):
            yield view[start : start + size]
