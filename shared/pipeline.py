"""Running stages side by side: each in its own thread, linked by small bounded queues.

hashlib, zstd and file I/O release the GIL on large buffers, so a chain of stages whose work
is mostly hashing and compressing runs on every core this way, while memory stays bounded by
``depth`` pieces per link. Exceptions keep their type and reach the consumer; closing the
consumer's iterator early stops every thread. The stages themselves never know they are threaded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

from airgap.shared.stages import Stage

_END = object()
_STOP = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Link:
    """A bounded queue whose ``put`` gives up once the pipeline is stopping."""

    def __init__(self, depth: int, stop: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = stop

    def put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def get(self) -> object:
        """The next item, or ``_STOP`` once the pipeline is stopping."""
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _STOP


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
    source: Iterable[bytes], stages: Sequence[Stage], *, depth: int = 4
) -> Iterator[bytes]:
    """Yield what comes out of the last stage; the source is iterated on its own thread too."""
    stop = threading.Event()
    links = [_Link(depth, stop) for _ in range(len(stages) + 1)]
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
