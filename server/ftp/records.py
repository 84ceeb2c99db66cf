"""The audit record of each finished upload, with the sha256 of what it left: one hash job at
most waiting per file.

A job holds one open descriptor of its file and reads the whole of it on the worker pool that
also publishes. An upload that ends while its file's job still waits joins that job rather
than queueing another (its descriptor replaces the job's): a client resuming one file over and
over costs the server one waiting job and one descriptor, not one of each per resume. The job
hashes what the latest upload left, and the first bytes of the file up to each earlier
upload's size in one more pass, so every record still has the sha256 of what its upload left
(as long as no later upload cut the file below it: then that record says ``sha256: null``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import BinaryIO

from airgap.server.audit import AuditLog
from airgap.server.ftp.loop import Services

logger = logging.getLogger("airgap.server")
_Node = tuple[int, int]  # (st_dev, st_ino)


@dataclass(frozen=True)
class Ended:
    """An upload that ended: its audit record, less the digest."""

    event: str
    ip: str
    user: str
    file: str  # relative to the root
    size: int  # of the file, as the upload left it

    def record(self, audit: AuditLog, sha256: str | None) -> None:
        audit.record(
            self.event, ip=self.ip, user=self.user, file=self.file, bytes=self.size, sha256=sha256
        )


@dataclass
class _Job:
    handle: BinaryIO
    ended: list[Ended] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)  # on the loop, once recorded


class UploadRecords:
    """Hash jobs of finished uploads, by file; used from the IO loop, run on the pool."""

    def __init__(self) -> None:
        self._waiting: dict[_Node, _Job] = {}
        self._lock = threading.Lock()  # the loop adds to a job, a worker takes it

    def add(
        self, services: Services, handle: BinaryIO, ended: Ended, then: Callable[[], None]
    ) -> None:
        """Record ``ended`` with the sha256 of ``handle`` (which this takes over), then call
        ``then`` on the loop, whether or not the hash could be taken."""
        info = os.fstat(handle.fileno())
        node = (info.st_dev, info.st_ino)
        with self._lock:
            job = self._waiting.get(node)
            if job is not None:  # not started yet: it hashes this upload's file instead
                job.handle.close()
                job.handle = handle
                job.ended.append(ended)
                job.then.append(then)
                return
            job = self._waiting[node] = _Job(handle, [ended], [then])
        services.run(lambda: self._hash(services, node), lambda f: self._done(job, f))

    def _hash(self, services: Services, node: _Node) -> None:
        with self._lock:
            job = self._waiting.pop(node)
        last = job.ended[-1]
        with job.handle as handle:
            digest, _, _ = services.hashes.digest_of(handle, 0, last.size)
            earlier = _prefix_digests(handle, {e.size for e in job.ended} - {last.size})
        for ended in job.ended:
            ended.record(services.audit, earlier.get(ended.size, digest))

    @staticmethod
    def _done(job: _Job, future: Future[None]) -> None:
        if future.exception() is not None:
            files = sorted({ended.file for ended in job.ended})
            logger.warning("after upload of %s: %r", ", ".join(files), future.exception())
        for then in job.then:
            then()


def _prefix_digests(handle: BinaryIO, sizes: set[int]) -> dict[int, str | None]:
    """The sha256 of the file's first ``size`` bytes, for each of ``sizes``, in one read; None
    for a size past what the file now holds."""
    found: dict[int, str | None] = dict.fromkeys(sizes)
    digest, at = hashlib.sha256(), 0
    for size in sorted(sizes):
        while at < size and (chunk := os.pread(handle.fileno(), min(1 << 20, size - at), at)):
            digest.update(chunk)
            at += len(chunk)
        if at < size:
            break
        found[size] = digest.copy().hexdigest()
    return found
