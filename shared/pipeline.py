"""Running stages side by side: each in its own thread, linked by small bounded queues.

hashlib, zstd and file I/O release the GIL on large buffers, so a chain of stages whose work
is mostly hashing and compressing runs on every core this way, while memory stays bounded by
a few MiB per link. Exceptions keep their type and reach the consumer; closing the
consumer's iterator early stops every thread. The stages themselves never know they are threaded.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

from airgap.shared.stages import Stage

_END = object()
_STOP = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Link:
    """A queue bounded by bytes, not items: stages emit pieces of very different sizes (a zstd
    job can finish 16 MiB at once), and memory must stay bounded whatever they do. An item
    larger than the bound is let through alone. Both ends give up once the pipeline stops."""

    def __init__(self, capacity: int, stop: threading.Event) -> None:
        self._items: deque[object] = deque()
        self._held = 0
        self._capacity = capacity
        self._stop = stop
        self._changed = threading.Condition()

    def put(self, item: object) -> bool:
        size = len(item) if isinstance(item, bytes) else 0
        with self._changed:
            while self._items and self._held + size > self._capacity:
                if self._stop.is_set():
                    return False
                self._changed.wait(0.1)
            if self._stop.is_set():
                return False
            self._items.append(item)
            self._held += size
            self._changed.notify_all()
            return True

    def get(self) -> object:
        """The next item, or ``_STOP`` once the pipeline is stopping."""
        with self._changed:
            while not self._items:
                if self._stop.is_set():
                    return _STOP
                self._changed.wait(0.1)
            item = self._items.popleft()
            self._held -= len(item) if isinstance(item, bytes) else 0
            self._changed.notify_all()
            return item


def _feed(source: Iterable[bytes], out: _Link) -> None:
    try:
        for chunk in source:
            if chunk and not out.put(chunk):
                return
        out.put(_END)
    except BaseException as exc:  # handed downstream with its type intact
        out.put(_Failed(exc))


def _work(stage: Stage, inbox: _Link, out: _Link) -> None:
    try:
        while True:
            item = inbox.get()
            if item is _STOP:
                return
            if item is _END:
                tail = stage.finish()
                if not tail or out.put(tail):
                    out.put(_END)
                return
            if isinstance(item, _Failed):
                out.put(item)
                return
            data = stage.update(cast(bytes, item))
            if data and not out.put(data):
                return
    except BaseException as exc:
        out.put(_Failed(exc))


def threaded(
    source: Iterable[bytes],
    stages: Sequence[Stage],
    *,
    capacity: int = 4 << 20,
    source_capacity: int | None = None,
) -> Iterator[bytes]:
    """Yield what comes out of the last stage; the source is iterated on its own thread too.

    Each link between two threads holds at most ``capacity`` bytes (or one larger piece); the
    first holds ``source_capacity`` if given, for a source that releases data in large bursts
    (a verified segment) and should go on to the next burst while the stages work.
    """
    stop = threading.Event()
    links = [_Link(capacity, stop) for _ in range(len(stages) + 1)]
    if source_capacity is not None:
        links[0] = _Link(source_capacity, stop)
    threads = [threading.Thread(target=_feed, args=(source, links[0]), daemon=True)]
    threads += [
        threading.Thread(target=_work, args=(stage, links[i], links[i + 1]), daemon=True)
        for i, stage in enumerate(stages)
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = links[-1].get()
            if item is _END or item is _STOP:
                break
            if isinstance(item, _Failed):
                raise item.exc
            yield cast(bytes, item)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
