"""Running stages side by side: each in its own thread, linked by small bounded queues.

hashlib, zstd and file I/O release the GIL on large buffers, so a chain of stages whose work
is mostly hashing and compressing runs on every core this way, while memory stays bounded by
a few MiB per link. A step is either a :class:`Stage` (``update``/``finish``) or a transform,
an iterator-to-iterator function, for work whose output must be pulled in bounded pieces
(decompression). Exceptions keep their type and reach the consumer; closing the consumer's
iterator early, or an error anywhere, stops every thread before :func:`threaded` returns.

Except when the process is being interrupted (:func:`interrupting`, which the CLI calls on
Ctrl-C): a thread may be blocked in a read from a slow network for as long as a segment takes
to arrive, and an interrupted command must not wait for it. The threads are then left to end
with the process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import cast

from airgap.shared.stages import Stage

Transform = Callable[[Iterator[bytes]], Iterator[bytes]]
Step = Stage | Transform

_END = object()
_STOP = object()
#: How long a waiting thread sleeps before it looks at the stop flag on its own; stopping
#: also wakes every waiter at once, so this is only a safety net.
_RECHECK = 1.0
_INTERRUPTED = threading.Event()


def interrupting() -> None:
    """The process is being interrupted: from now on, no pipeline waits for its threads."""
    _INTERRUPTED.set()


def interrupted() -> bool:
    """Whether :func:`interrupting` was called: cleanup that waits on a peer should not."""
    return _INTERRUPTED.is_set()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Stopped(Exception):
    """Raised inside a transform's input when the pipeline stops."""


class _Upstream(Exception):
    """Carries an upstream failure through a transform, untouched."""

    def __init__(self, failed: _Failed) -> None:
        self.failed = failed


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
        size = _size(item)
        with self._changed:
            while self._items and self._held + size > self._capacity and not self._stop.is_set():
                self._changed.wait(_RECHECK)
            if self._stop.is_set():
                return False
            self._items.append(item)
            self._held += size
            self._changed.notify_all()
            return True

    def get(self) -> object:
        """The next item, or ``_STOP`` once the pipeline is stopping."""
        with self._changed:
            while not self._items and not self._stop.is_set():
                self._changed.wait(_RECHECK)
            if self._stop.is_set():
                return _STOP
            item = self._items.popleft()
            self._held -= _size(item)
            self._changed.notify_all()
            return item

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _size(item: object) -> int:
    """What an item holds: a stage may hand on a bytearray of its own as well as bytes."""
    return len(item) if isinstance(item, bytes | bytearray) else 0


def _feed(source: Iterable[bytes | bytearray], out: _Link) -> None:
    try:
        for chunk in source:
            if chunk and not out.put(chunk):
                return
        out.put(_END)
    except BaseException as exc:  # handed downstream with its type intact
        out.put(_Failed(exc))


def _inputs(inbox: _Link) -> Iterator[bytes]:
    while True:
        item = inbox.get()
        if item is _END:
            return
        if item is _STOP:
            raise _Stopped
        if isinstance(item, _Failed):
            raise _Upstream(item)
        yield cast(bytes, item)  # or a bytearray its maker no longer touches: both read alike


def _work(step: Step, inbox: _Link, out: _Link) -> None:
    try:
        if isinstance(step, Stage):
            for data in _inputs(inbox):
                if (piece := step.update(data)) and not out.put(piece):
                    return
            outputs: Iterable[bytes] = [step.finish()]
        else:
            outputs = step(_inputs(inbox))
        for piece in outputs:
            if piece and not out.put(piece):
                return
        out.put(_END)
    except _Stopped:
        return
    except _Upstream as upstream:
        out.put(upstream.failed)
    except BaseException as exc:
        out.put(_Failed(exc))


def threaded(
    source: Iterable[bytes | bytearray],
    steps: Sequence[Step],
    *,
    capacity: int = 4 << 20,
) -> Generator[bytes, None, None]:
    """Yield what comes out of the last step; the source is iterated on its own thread too.

    Each link between two threads holds at most ``capacity`` bytes (or one larger piece).
    """
    stop = threading.Event()
    links = [_Link(capacity, stop) for _ in range(len(steps) + 1)]
    threads = [threading.Thread(target=_feed, args=(source, links[0]), daemon=True)]
    threads += [
        threading.Thread(target=_work, args=(step, links[i], links[i + 1]), daemon=True)
        for i, step in enumerate(steps)
    ]
    for thread in threads:
        thread.start()
    failed: BaseException | None = None
    try:
        yield from _inputs(links[-1])
    except _Upstream as upstream:
        failed = upstream.failed.exc  # raised below, once every thread has stopped
    finally:
        stop.set()
        for link in links:
            link.wake()
        for thread in threads:
            if not _INTERRUPTED.is_set():  # a Ctrl-C while joining ends the wait as well
                thread.join()
    if failed is not None:
        raise failed
