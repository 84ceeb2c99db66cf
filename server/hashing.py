"""SHA-256 of a file or a byte range of it, for the FTP ``HASH`` command, with a cache.

The cache key is (path, size, mtime in ns, inode, range), so any change to the file misses it.
:func:`HashCache.digest` reads the file: call it on a worker thread, never on the IO loop.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

CHUNK = 1024 * 1024
_Key = tuple[str, int, int, int, int, int]


class HashCache:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[_Key, str] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, path: Path, start: int = 0, end: int | None = None) -> tuple[str, int, int]:
        """(hex, start, end) for bytes start..end-1; ``end`` None means the file's size."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            stop = info.st_size if end is None else min(end, info.st_size)
            if start > stop:
                raise ValueError("range starts past the end of the file")
            key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino, start, stop)
            with self._lock:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    return cached, start, stop
            handle.seek(start)
            sha, left = hashlib.sha256(), stop - start
            while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                sha.update(chunk)
                left -= len(chunk)
            hexdigest = sha.hexdigest()
        with self._lock:
            self._entries[key] = hexdigest
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return hexdigest, start, stop
