"""The zstd level of an upload, chosen as it goes: higher while the link, not the encoder, is
what the send waits for.

The encoder writes into the spool far ahead of a slow link (100 Mbit/s takes 10 s for what
level 1 makes of 300 MB in 2), and its cores sit idle meanwhile. :class:`Pace` climbs two
(or four) levels at a time, up to :data:`CEILING`, while the encoder makes payload at least
:data:`CLIMB` times as fast as the upload takes it; if the upload then runs slower (the
encoder took the cores it needs), it steps back and climbs no higher; and it eases off when
the upload has caught up with the encoder. On a fast link the encoder is the slower one, and
the level stays where it began.

Every choice is written to the spool's record (and synced) before the payload it shapes, so
that a send continued after a crash encodes its start again with the same levels, byte for
byte (the spool compares them); past the record, it chooses anew.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airgap.client.spool import spool_failure
from airgap.shared.errors import StorageError

#: The record's name in a send's spool.
LEVELS = "levels"
#: The highest level a pace climbs to. Beyond it the encoder's threads take the cores the
#: upload needs (measured: level 9 slowed a 100 Mbit/s upload beside it by 8 %).
CEILING = 7
#: After a climb, an upload this much slower than before it, in each of the next two windows,
#: means the encoder now takes what the upload needs: the pace goes back to the level it left
#: and climbs no higher.
SLOWED = 0.9
#: The upload's counter moves a chunk at a time: a window may miss one of its chunks.
CHUNK = 1 << 20
#: The encoder must outpace the upload this many times over a window to climb two levels, and
#: twice this to climb four (two levels more cost it about half its speed).
CLIMB = 2.0
#: A window spans at least this many steps and seconds, so that no burst decides.
WINDOW_STEPS = 2
WINDOW_SECONDS = 0.5
#: Windows judged after a climb before it stands.
JUDGED = 2


@dataclass
class _Mark:
    step: int
    seconds: float
    produced: int
    uploaded: int


class Pace:
    """The level for each step of a send (see :class:`airgap.shared.stages.ZstdCompress`).

    ``uploaded`` tells how far into the payload the upload has gone (from its start, however
    much an earlier run uploaded), as the encoder's count of what it produced does."""

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
        self._replay, whole = _recorded(record) if replay else ([], 0)
        self._mark: _Mark | None = None
        self._ceiling = CEILING
        self._before: float | None = None  # the upload's rate before a climb being judged
        self._judged: list[bool] = []  # whether each window since that climb was slower
        self._from = 1  # the level that climb left
        self._settled = False  # whether a window has been measured whole
        try:
            with record.open("ab") as kept:
                kept.truncate(whole)  # a line a crash cut is no choice: it goes
        except OSError as exc:
            raise self._failed(exc) from exc

    def __call__(self, step: int, level: int, produced: int) -> int:
        if step <= len(self._replay):
            self._mark = None  # the rates of a replay are not the link's
            return self._replay[step - 1]
        chosen = self._choose(step, level, produced)
        try:
            with self._record.open("a") as record:  # before any byte at that level
                record.write(f"{chosen}\n")
                record.flush()
                os.fsync(record.fileno())
        except OSError as exc:
            raise self._failed(exc) from exc
        return chosen

    def _choose(self, step: int, level: int, produced: int) -> int:
        now = _Mark(step, self._clock(), produced, self._uploaded())
        mark = self._mark
        if mark is None or now.uploaded == 0:  # the upload has not begun: nothing to compare
            self._mark = now
            return level
        seconds = now.seconds - mark.seconds
        if now.step - mark.step < WINDOW_STEPS or seconds < WINDOW_SECONDS:
            return level
        self._mark = now
        made, taken = now.produced - mark.produced, now.uploaded - mark.uploaded
        if taken <= 0:  # the upload stands (a retry, a backoff): nothing to learn from
            return level
        rate = taken / seconds
        settled, self._settled = self._settled, True
        if self._before is not None:  # a climb under judgement: no other move meanwhile
            self._judged.append((taken + CHUNK) / seconds < SLOWED * self._before)
            if all(self._judged) and len(self._judged) == JUDGED:
                self._before = None
                self._ceiling = self._from  # the climb took the upload's share
                return self._ceiling
            if len(self._judged) == JUDGED or not self._judged[-1]:
                self._before = None  # it stands
            return level
        if made >= CLIMB * taken and level < self._ceiling:
            # The link is the bottleneck: compress harder, the more so the slower it is.
            chosen = min(self._ceiling, level + (4 if made >= 2 * CLIMB * taken else 2))
            # The first window's rate counts what the socket buffers took at once: no measure.
            if settled:
                self._before, self._judged, self._from = rate, [], level
            return chosen
        if made < taken and now.produced - now.uploaded < taken and level > 1:
            return max(1, level - 2)  # the upload waits for the encoder: ease off
        return level

    def _failed(self, exc: OSError) -> StorageError:
        return spool_failure(self._record, exc)


def _recorded(record: Path) -> tuple[list[int], int]:
    """The levels an interrupted send chose, as far as its record is whole, and that part's
    length in bytes."""
    try:
        lines = record.read_bytes().split(b"\n")
    except OSError:
        return [], 0
    levels: list[int] = []
    whole = 0
    for line in lines[:-1]:  # the last is empty, or a line the crash cut
        if not line.isdigit() or not 1 <= int(line) <= 22:
            break
        levels.append(int(line))
        whole += len(line) + 1
    return levels, whole
