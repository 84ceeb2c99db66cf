"""Progress bars on stderr (tqdm): bytes, rate and ETA, only where a person is watching.

A :class:`Meter` is one bar: off when stderr is not a terminal or with --quiet, and then it
costs nothing. Any thread may feed it (the upload runs in one of its own). A send shows what
is encoded and what is uploaded, a fetch what is downloaded and what is loaded or unpacked:
the two overlap, and the slower one is the one the person waits for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from airgap.client import terminal

if TYPE_CHECKING:
    from tqdm import tqdm


class Meter:
    def __init__(
        self, what: str, *, quiet: bool = True, total: int | None = None, line: int = 0
    ) -> None:
        self._bar: tqdm[Any] | None = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm  # only here: its import costs a quiet command 20 ms

            terminal.write = _above_bars  # a retry's news, say, does not tear a bar apart
            self._bar = tqdm(
                total=total,
                desc=what,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                position=line,
                # tqdm's own pacing, learnt from the first updates, stalls an upload's bar:
                # its first megabytes fill socket buffers at memory speed. Redraw by time.
                miniters=1,
            )

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def add(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def advance(self, count: int) -> None:
        """Forward to ``count`` (never back), redrawn at the bar's pace as :meth:`add` is."""
        if self._bar is not None and count > self._bar.n:
            self._bar.update(count - self._bar.n)

    def reach(self, count: int) -> None:
        """Where a transfer (re)starts: the bytes a resumed one does not send again."""
        if self._bar is not None and self._bar.n != count:
            self._bar.n = self._bar.last_print_n = count
            self._bar.refresh()

    def expect(self, total: int) -> None:
        """The total, once it is known (an upload's, when its encoding has ended)."""
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _above_bars(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


#: The meter of a transfer nobody watches.
UNSEEN = Meter("")


def counted(chunks: Iterable[bytes], meter: Meter) -> Iterator[bytes]:
    """``chunks`` unchanged, counted as they pass."""
    if not meter.shown:
        yield from chunks
        return
    for chunk in chunks:
        meter.add(len(chunk))
        yield chunk


def counted_reads(readinto: Callable[[Any], int], meter: Meter) -> Callable[[Any], int]:
    """``readinto`` unchanged, its bytes counted."""
    if not meter.shown:
        return readinto

    def read(buffer: Any) -> int:
        got = readinto(buffer)
        meter.add(got)
        return got

    return read
