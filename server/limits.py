"""Counters shared by every connection: login failures and bans per IP, files being written.

Both are used from the IO loop and from worker threads, so each guards its state with a lock
held only for a dictionary update; nothing here sleeps, blocks on IO or knows about FTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class LoginGuard:
    """``max_failures`` failed logins from one IP within ``ban_seconds`` ban it that long.

    Failures are kept per IP and login name: a success clears only the failures against the
    name it logged in as, so a login to one's own account (or anonymous) does not wipe the
    guesses made at another.
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
        self._banned_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def banned(self, ip: str) -> bool:
        with self._lock:
            until = self._banned_until.get(ip)
            if until is None:
                return False
            if until <= self._clock():
                del self._banned_until[ip]
                return False
            return True

    def failed(self, ip: str, name: str) -> bool:
        """Count a failure of login ``name``; True if this one earned a ban."""
        now = self._clock()
        with self._lock:
            recent = [f for f in self._failures.get(ip, []) if now - f[0] < self.ban_seconds]
            recent.append((now, name))
            if len(recent) >= self.max_failures:
                self._failures.pop(ip, None)
                self._banned_until[ip] = now + self.ban_seconds
                return True
            self._failures[ip] = recent
            return False

    def succeeded(self, ip: str, name: str) -> None:
        """Forget the failures of login ``name`` from ``ip``; those of other names stay."""
        with self._lock:
            kept = [f for f in self._failures.get(ip, []) if f[1] != name]
            if kept:
                self._failures[ip] = kept
            else:
                self._failures.pop(ip, None)


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
