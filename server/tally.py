"""The sha256 of an upload taken as its bytes land, so a finished upload is never read back.

A :class:`Tally` goes with an upload written from the file's first byte (a fresh file, or one
cut to nothing). The IO loop hands it each piece once written; one thread, shared by every
upload, hashes the pieces in order (hashlib lets go of the GIL), so the loop never waits on a
hash. When the upload closes, a tally that saw every byte of what the file holds promises its
digest to the :class:`~airgap.server.hashing.HashCache`: the audit record, the client's ``HASH``
and the bundle check wait for it there, a moment at most, instead of reading the whole payload
again (on an appliance's disk, long after it left the page cache).

The thread may fall behind by :data:`MAX_BEHIND` bytes, over all uploads together; a piece
that would take it further drops its upload's tally, and that upload is read once it ends, as
a resumed one is. Nothing is promised for a file whose bytes the tally did not all see.

A promise holds no descriptor of its file: an upload's file must have no handle left once its
claim is released (the publisher moves it). So a file deleted while its digest is still being
kept (30 ms at most, 64 MiB behind) frees its inode; a file not written by an upload, given
that inode with the same size and nanosecond mtime within that moment, would find the old
digest. Every file a client can write is an upload, and an upload cuts the file, which drops it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from dataclasses import dataclass

from airgap.server.hashing import HashCache

logger = logging.getLogger("airgap.server")
MAX_BEHIND = 64 * 1024 * 1024


@dataclass(frozen=True)
class _End:
    key: tuple[int, int, int, int, int, int]


class Tally:
    """The sha256 of one upload's bytes, from the file's first; used from the IO loop."""

    def __init__(self, hashes: HashCache, info: os.stat_result) -> None:
        """``info``: the file as opened for the upload, cut to nothing (or empty already)."""
        self._hashes = hashes
        self._node = (info.st_dev, info.st_ino)
        self._generation = hashes.generation(info)  # after the upload's own cut
        self._sha = hashlib.sha256()  # the follower's alone
        self._fed = 0
        self._dropped = False  # given up: the file is read once the upload ends
        self._ended = False

    def add(self, data: bytes) -> None:
        """``data`` has been written at the file's end."""
        if self._dropped or self._ended or not data:
            return
        piece = bytes(data)  # the follower reads it later: never a buffer that could change
        if not _FOLLOWER.take(len(piece)):
            self._dropped = True  # the follower is too far behind: the file is read later
            return
        self._fed += len(piece)
        try:
            _FOLLOWER.put(self, piece)
        except RuntimeError:  # no thread to hash it (the process is out of them): read later
            self._dropped = True
            _FOLLOWER.done(len(piece))

    def end(self, fd: int) -> None:
        """The upload writes no more; ``fd`` is its descriptor, still open."""
        if self._dropped or self._ended:
            return
        self._ended = True
        try:
            info = os.fstat(fd)
        except OSError:  # the file is read once the upload ends
            self._dropped = True
            return
        if (info.st_dev, info.st_ino) != self._node or info.st_size != self._fed:
            self._dropped = True  # a write that failed part way: bytes the tally lacks
            return
        key = self._hashes.promise(info, self._generation)
        if key is None:
            return
        try:
            _FOLLOWER.put(self, _End(key))
        except BaseException as exc:
            self._hashes.keep(key, self._generation, None)  # no caller waits for it for ever
            if not isinstance(exc, RuntimeError):  # RuntimeError: no thread; the file is read
                raise

    def _step(self, item: bytes | _End) -> None:
        """On the follower: hash a piece, or keep the digest of them all."""
        if isinstance(item, bytes):
            if not self._dropped:  # else the file is read later: no use hashing the rest
                self._sha.update(item)
            return
        digest: str | None = None
        try:
            digest = self._sha.hexdigest()
        finally:
            self._hashes.keep(item.key, self._generation, digest)


class _Follower:
    """One thread hashing every tally's pieces, in the order they came."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Tally, bytes | _End]] = queue.SimpleQueue()
        self._behind = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, size: int) -> bool:
        """Room for ``size`` more bytes in the queue, counted until they are hashed."""
        with self._lock:
            if self._behind + size > MAX_BEHIND:
                return False
            self._behind += size
        return True

    def put(self, tally: Tally, item: bytes | _End) -> None:
        if self._thread is None:  # once: no lock on the loop for every piece after
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="airgap-tally", daemon=True)
                    thread.start()  # if it cannot, the next piece tries again
                    self._thread = thread
        self._queue.put((tally, item))

    def _run(self) -> None:
        while True:
            tally, item = self._queue.get()
            try:
                tally._step(item)
            except Exception:  # a digest not kept is read later; the thread must go on
                logger.exception("hashing an upload as it landed")
            finally:
                if isinstance(item, bytes):
                    self.done(len(item))

    def done(self, size: int) -> None:
        """``size`` bytes :meth:`take` counted are hashed (or never will be)."""
        with self._lock:
            self._behind -= size


_FOLLOWER = _Follower()
