"""The zstd level of an upload, chosen as it goes: higher while the link, not the encoder, is
what the send waits for.

The encoder writes into the spool far ahead of a slow link (100 Mbit/s takes 10 s for what
level 1 makes of 300 MB in 2), and its cores sit idle meanwhile. :class:`Pace` climbs two
(or four) levels at a time, up to :data:`CEILING`, while the encoder makes payload at least
:data:`CLIMB` times as fast as the upload takes it, and steps down when the upload has caught
up with it. On a fast link the encoder is the slower one, and the level stays where it began.

Every choice is written to the spool's record before the payload it shapes, so that a send
continued after a crash encodes its start again with the same levels, byte for byte (the spool
compares them); past the record, it chooses anew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airgap.shared.errors import StorageError

#: The record's name in a send's spool.
LEVELS = "levels"
#: The highest level a pace climbs to. Beyond it the encoder's threads take the cores the
#: upload needs (measured: level 9 slowed a 100 Mbit/s upload beside it by 8 %).
CEILING = 7
#: After a climb, an upload this much slower than before it means the encoder now takes
#: what the upload needs: the pace steps back down and climbs no higher.
SLOWED = 0.9
#: The encoder must outpace the upload this many times over a window to climb two levels, and
#: twice this to climb four (two levels more cost it about half its speed).
CLIMB = 2.0
#: A window spans at least this many steps and seconds, so that no burst decides.
WINDOW_STEPS = 2
WINDOW_SECONDS = 0.5


@dataclass
class _Mark:
    step: int
    seconds: float
    produced: int
    uploaded: int


class Pace:
    """The level for each step of a send (see :class:`airgap.shared.stages.ZstdCompress`)."""

    def __init__(
        self,
        uploaded: Callable[[], int],
        record: Path,
        *,
        replay: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uploaded = uploaded
        self._record = record
        self._clock = clock
        self._replay = _recorded(record) if replay else []
        self._mark: _Mark | None = None
        self._ceiling = CEILING
        self._before: float | None = None  # the upload's rate before the last climb
        self._settled = False  # whether a window has been measured whole
        try:
            record.write_text("".join(f"{level}\n" for level in self._replay))
        except OSError as exc:
            raise StorageError(f"spool {record}: {exc.strerror or exc}") from exc

    def __call__(self, step: int, level: int, produced: int) -> int:
        if step <= len(self._replay):
            chosen = self._replay[step - 1]
            self._mark = None  # the rates of a replay are not the link's
        else:
            chosen = self._choose(step, level, produced)
            try:
                with self._record.open("a") as record:  # before any byte at that level
                    record.write(f"{chosen}\n")
            except OSError as exc:
                raise StorageError(f"spool {self._record}: {exc.strerror or exc}") from exc
        return chosen

    def _choose(self, step: int, level: int, produced: int) -> int:
        now = _Mark(step, self._clock(), produced, self._uploaded())
        mark = self._mark
        if mark is None or now.uploaded == 0:  # the upload has not begun: nothing to compare
            self._mark = now
            return level
        if now.step - mark.step < WINDOW_STEPS or now.seconds - mark.seconds < WINDOW_SECONDS:
            return level
        made, taken = now.produced - mark.produced, now.uploaded - mark.uploaded
        rate = taken / (now.seconds - mark.seconds)
        queued = now.produced - now.uploaded
        chosen = level
        if self._before is not None and rate < SLOWED * self._before:
            chosen = self._ceiling = max(1, level - 2)  # the climb took the upload's share
        elif taken > 0 and made >= CLIMB * taken and level < self._ceiling:
            # The link is the bottleneck: compress harder, the more so the slower it is.
            chosen = min(self._ceiling, level + (4 if made >= 2 * CLIMB * taken else 2))
        elif made < taken and queued < taken and level > 1:
            chosen = max(1, level - 2)  # the upload waits for the encoder: ease off
        # The first window's rate counts what the socket buffers took at once: no measure.
        self._before = rate if chosen > level and self._settled else None
        self._settled = True
        self._mark = now
        return chosen


def _recorded(record: Path) -> list[int]:
    """The levels an interrupted send chose, as far as its record is whole."""
    try:
        lines = record.read_text().split("\n")
    except (OSError, UnicodeDecodeError):
        return []
    levels = []
    for line in lines[:-1]:  # the last is empty, or a line the crash cut
        if not line.isdigit() or not 1 <= int(line) <= 22:
            break
        levels.append(int(line))
    return levels
