"""SHA-256 of a file or a byte range of it, for the FTP ``HASH`` command, with a cache.

An entry is keyed by what the file is, not what it is called: (st_dev, st_ino, st_size,
st_mtime_ns, start, stop). A rename keeps the inode and the mtime, so ``X.part``, ``X`` and
``pub/outgoing/X`` are one entry. Content never changes under a key: every write sets a new
mtime, no client can set an old one back (MFMT and utime are refused), an upload drops the
file's entries as it cuts the file (:meth:`HashCache.forget`, for a write within one clock
tick of the last and for a reused inode; a write at the end of a file not cut changes its size,
and so its key), and a digest is cached only
if the file did not change while it was read. Callers asking for the same range at once share
one read: a finished upload is hashed once, for its audit record, the client's ``HASH`` and the
bundle check together.
:func:`HashCache.digest` reads the file on a miss: call it on a worker thread, never on the IO
loop. An upload written from the file's first byte is not read at all: a
:class:`~airgap.server.tally.Tally` hashes it as it lands, and :meth:`HashCache.promise` makes
its digest the one such callers wait for.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
GENERATIONS = 4096  # files whose tokens are kept before those of files not cached are dropped
_Key = tuple[int, int, int, int, int, int]


class Generation:
    """A file's state between two uploads that cut it: compared by identity, never equal to
    one made before or after it (a count restarted after a trim could come round again)."""

    __slots__ = ()


def _key(info: os.stat_result, start: int, stop: int) -> _Key:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, start, stop)


def _sha256(handle: BinaryIO, start: int, stop: int) -> tuple[str, bool]:
    """Read bytes start..stop-1 and hash them: the only place a digest costs a read. Also
    whether every byte was there (a file cut meanwhile ends the read early)."""
    handle.seek(start)
    sha, left = hashlib.sha256(), stop - start
    while left > 0 and (chunk := handle.read(min(CHUNK, left))):
        sha.update(chunk)
        left -= len(chunk)
    return sha.hexdigest(), left == 0


class HashCache:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[_Key, str] = OrderedDict()
        self._reading: dict[_Key, threading.Event] = {}  # ranges being hashed right now
        # (dev, inode): a token an upload cutting the file replaces (see :meth:`generation`)
        self._generation: dict[tuple[int, int], Generation] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path, start: int = 0, end: int | None = None) -> tuple[str, int, int]:
        """(hex, start, end) for bytes start..end-1; ``end`` None means the file's size."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            return self.digest_of(handle, start, end)

    def digest_of(
        self, handle: BinaryIO, start: int = 0, end: int | None = None
    ) -> tuple[str, int, int]:
        """:meth:`digest` of a file already open (by whatever name it has now)."""
        node = os.fstat(handle.fileno())
        with self._lock:  # before the stat that makes the key: any upload after it shows
            generation = self._token((node.st_dev, node.st_ino))
        info = os.fstat(handle.fileno())
        stop = info.st_size if end is None else min(end, info.st_size)
        if start > stop:
            raise ValueError("range starts past the end of the file")
        key = _key(info, start, stop)
        while True:
            with self._lock:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    return cached, start, stop
                other = self._reading.get(key)
                if other is None:
                    done = self._reading[key] = threading.Event()
                    break
            other.wait()  # then the cache has it, unless the file changed meanwhile
        try:
            hexdigest, whole = _sha256(handle, start, stop)
            with self._lock:  # kept only if no upload opened the file meanwhile, and it held
                unchanged = self._generation.get(key[:2]) is generation  # every byte
            if whole and unchanged and _key(os.fstat(handle.fileno()), start, stop) == key:
                self._put(key, hexdigest)
        finally:
            with self._lock:
                del self._reading[key]
            done.set()
        return hexdigest, start, stop

    def known(self, info: os.stat_result) -> str | None:
        """The cached digest of the whole file ``info`` describes, if there is one; never reads."""
        with self._lock:
            return self._entries.get(_key(info, 0, info.st_size))

    def forget(self, info: os.stat_result) -> None:
        """Drop every entry of this file (by inode): it is about to be written. A read of it
        already under way then keeps its digest to itself, even if the file ends up with the
        same size and mtime (a rewrite within one clock tick)."""
        with self._lock:
            node = (info.st_dev, info.st_ino)
            self._trim()
            self._generation[node] = Generation()
            for key in [k for k in self._entries if k[:2] == node]:
                del self._entries[key]

    def generation(self, info: os.stat_result) -> Generation:
        """This file's (by inode) until an upload cuts it: see :meth:`promise`."""
        with self._lock:
            return self._token((info.st_dev, info.st_ino))

    def _token(self, node: tuple[int, int]) -> Generation:  # with the lock held
        token = self._generation.get(node)
        if token is None:
            self._trim()
            token = self._generation[node] = Generation()
        return token

    def _trim(self) -> None:  # with the lock held
        """Forget the tokens of files the cache neither holds nor is hashing, once there are
        many: a holder of a forgotten token finds another (or none) and keeps no digest, so
        this costs at most a read, never a stale digest."""
        if len(self._generation) <= GENERATIONS:
            return
        wanted = {key[:2] for key in self._entries} | {key[:2] for key in self._reading}
        for node in [node for node in self._generation if node not in wanted]:
            del self._generation[node]

    def promise(self, info: os.stat_result, generation: Generation) -> _Key | None:
        """Claim the whole-file digest of the file ``info`` describes, for a tally that saw
        every byte of it written: until :meth:`keep` is called with the key returned, callers
        asking for it wait rather than read. None (nothing claimed) if an upload cut the file
        since ``generation``, or its digest is known or being read already."""
        key = _key(info, 0, info.st_size)
        with self._lock:
            if self._generation.get(key[:2]) is not generation:
                return None
            if key in self._entries or key in self._reading:
                return None
            self._reading[key] = threading.Event()
        return key

    def keep(self, key: _Key, generation: Generation, hexdigest: str | None) -> None:
        """End a :meth:`promise`: cache ``hexdigest`` (None: no digest after all) unless an
        upload cut the file meanwhile, then let the waiting callers go on."""
        with self._lock:
            if hexdigest is not None and self._generation.get(key[:2]) is generation:
                self._store(key, hexdigest)
            done = self._reading.pop(key)
        done.set()

    def _put(self, key: _Key, hexdigest: str) -> None:
        with self._lock:
            self._store(key, hexdigest)

    def _store(self, key: _Key, hexdigest: str) -> None:  # with the lock held
        self._entries[key] = hexdigest
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
