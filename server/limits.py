"""Counters shared by every connection: login failures and bans per IP, sessions per account,
files being written.

They are used from the IO loop and from worker threads, so each guards its state with a lock
held only for a dictionary update; nothing here sleeps, blocks on IO or knows about FTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: While an IP stays banned, its refused connections are reported at most this often.
REPORT_REFUSALS_EVERY = 60.0


@dataclass
class _Ban:
    until: float
    unreported: int = 0  # connections refused since the last report
    reported_at: float | None = None


class LoginGuard:
    """``max_failures`` failed logins from one IP within ``ban_seconds`` ban it that long.

    Failures are kept per IP and login name: a success clears only the failures against the
    name it logged in as, so a login to one's own account (or anonymous) does not wipe the
    guesses made at another. A ban's refused connections are counted, to be reported a few
    at a time (:meth:`refused`, :meth:`ban_over`) rather than one log line each. Failures
    older than ``ban_seconds`` count for nothing, and are swept out once per ``ban_seconds``:
    the table holds only the IPs that failed lately, however many addresses have tried.
    """

    def __init__(
        self,
        *,
        max_failures: int,
        ban_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.ban_seconds = ban_seconds
        self._clock = clock
        self._failures: dict[str, list[tuple[float, str]]] = {}  # ip: (when, login name)
        self._bans: dict[str, _Ban] = {}  # kept past their end until ban_over() reports them
        self._swept = clock()
        self._lock = threading.Lock()

    def banned(self, ip: str) -> bool:
        with self._lock:
            ban = self._bans.get(ip)
            return ban is not None and ban.until > self._clock()

    def failed(self, ip: str, name: str) -> float | None:
        """Count a failure of login ``name``; if this one earned a ban, when the ban ends."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            recent = [f for f in self._failures.get(ip, []) if now - f[0] < self.ban_seconds]
            recent.append((now, name))
            if len(recent) >= self.max_failures:
                self._failures.pop(ip, None)
                self._bans[ip] = _Ban(now + self.ban_seconds)
                return now + self.ban_seconds
            self._failures[ip] = recent
            return None

    def _sweep(self, now: float) -> None:
        """Drop the IPs whose last failure counts no more (with the lock held)."""
        if now - self._swept < self.ban_seconds:
            return
        self._swept = now
        stale = [ip for ip, kept in self._failures.items() if now - kept[-1][0] >= self.ban_seconds]
        for ip in stale:
            del self._failures[ip]

    def succeeded(self, ip: str, name: str) -> None:
        """Forget the failures of login ``name`` from ``ip``; those of other names stay."""
        with self._lock:
            kept = [f for f in self._failures.get(ip, []) if f[1] != name]
            if kept:
                self._failures[ip] = kept
            else:
                self._failures.pop(ip, None)

    def refused(self, ip: str) -> int:
        """Count a connection refused for the ban of ``ip``; the refusals to report now (the
        first of a ban, then those since the last report once a minute), or 0."""
        now = self._clock()
        with self._lock:
            ban = self._bans.get(ip)
            if ban is None:
                return 0
            ban.unreported += 1
            if ban.reported_at is not None and now - ban.reported_at < REPORT_REFUSALS_EVERY:
                return 0
            count, ban.unreported, ban.reported_at = ban.unreported, 0, now
            return count

    def ban_over(self, ip: str, until: float) -> int:
        """Forget the ban of ``ip`` that ended at ``until``; the refusals not yet reported."""
        with self._lock:
            ban = self._bans.get(ip)
            if ban is None or ban.until != until:
                return 0
            del self._bans[ip]
            return ban.unreported


class Sessions:
    """Logged-in sessions per account (anonymous: per address), at most ``limit`` each: one
    account cannot hold every passive port, as a session holds one at a time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, name: str) -> bool:
        """One more session of ``name``, unless it holds ``limit`` already."""
        with self._lock:
            held = self._held.get(name, 0)
            if held >= self.limit:
                return False
            self._held[name] = held + 1
            return True

    def give_back(self, name: str) -> None:
        with self._lock:
            held = self._held.pop(name, 0) - 1
            if held > 0:
                self._held[name] = held


class BusyFiles:
    """Paths someone is writing (an upload) or checking (the publisher): one at a time."""

    def __init__(self) -> None:
        self._busy: set[Path] = set()
        self._lock = threading.Lock()

    def claim(self, paths: Iterable[Path]) -> bool:
        """Claim all of ``paths`` or none of them."""
        wanted = set(paths)
        with self._lock:
            if wanted & self._busy:
                return False
            self._busy |= wanted
            return True

    def release(self, paths: Iterable[Path]) -> None:
        with self._lock:
            self._busy -= set(paths)

    def is_busy(self, path: Path) -> bool:
        with self._lock:
            return path in self._busy
