"""Off-loop work: slow calls on a thread pool, their results back on the IO loop.

Password checks (scrypt), HASH and bundle checks never run on the FTP loop. :meth:`Services.run`
submits them to the pool and posts the completion to :class:`Mailbox`, a socketpair the loop
watches, so the callback runs on the loop like any other event. Nothing here knows about FTP
commands.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.ioloop import AsyncChat, IOLoop

from airgap.server.accounts import Accounts
from airgap.server.audit import AuditLog
from airgap.server.config import ServeConfig
from airgap.server.ftp.timers import keep_timers_in_order
from airgap.server.hashing import HashCache
from airgap.server.layout import Layout
from airgap.server.limits import BusyFiles, LoginGuard, Sessions
from airgap.server.publish import Outcome, Publisher
from airgap.server.users import UserDB

logger = logging.getLogger("airgap.server")


def new_ioloop() -> Any:
    if not keep_timers_in_order():
        logger.warning("this pyftpdlib's timers may be held back by a restarted idle timer")
    return IOLoop.factory()


class Mailbox(AsyncChat):  # type: ignore[misc]  # pyftpdlib is untyped
    """Run callbacks posted from worker threads on the IO loop, woken through a socketpair."""

    def __init__(self, ioloop: Any) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        super().__init__(self._reader, ioloop=ioloop)

    def post(self, call: Callable[[], None]) -> None:
        self._calls.put(call)
        # BlockingIOError: already awake (buffer full); OSError: shutting down.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._reader.recv(4096)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:
                logger.exception("callback failed")

    def close(self) -> None:
        super().close()
        self._writer.close()


@dataclass(frozen=True)
class Services:
    """What every connection shares; set on the handler class, never per user."""

    config: ServeConfig
    layout: Layout
    users: UserDB
    accounts: Accounts  # the same file, as sessions check it before each command
    guard: LoginGuard
    sessions: Sessions
    busy: BusyFiles
    publisher: Publisher
    hashes: HashCache
    audit: AuditLog
    pool: ThreadPoolExecutor  # hashing and publishing
    logins: ThreadPoolExecutor  # password checks: never queued behind a long hash
    mailbox: Mailbox

    def run(
        self,
        work: Callable[[], Any],
        done: Callable[[Future[Any]], None],
        *,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        """``work`` on a worker thread (of ``pool``, else the hashing one), then
        ``done(future)`` back on the IO loop."""
        future = (pool or self.pool).submit(work)
        future.add_done_callback(lambda f: self.mailbox.post(lambda: done(f)))

    def check_bundle(self, area: Path, bundle_id: str) -> None:
        def report(future: Future[Outcome]) -> None:
            if future.exception() is not None:  # not an OSError: a bug, never to pass unseen
                logger.error("bundle check %s failed: %r", bundle_id, future.exception())
            else:
                logger.info("bundle %s: %s", bundle_id, future.result().status)

        self.run(lambda: self.publisher.check_logged(area, bundle_id), report)
