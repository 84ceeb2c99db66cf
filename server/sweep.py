"""Uploads left behind: a ``.part`` nobody has written for ``--partial-expiry`` seconds is
deleted, so that an abandoned send stops holding its sender's quota and the disk; so is any
file of a sender's area that long unwritten (a payload whose manifest and signature never
came: a whole bundle is published, out of the area, as soon as its signature arrives), but
for the empty ``ID.refused`` notices the publisher leaves there, which wait for the sender.

A sender that comes back later loses nothing it cannot redo: its client asks the size of the
partial, finds none, and uploads from the start out of its own spool. A file that an upload
holds open is claimed in :class:`~airgap.server.limits.BusyFiles` and is never touched, nor is
anything but a regular file directly in an upload area, nor a finished anonymous upload in
``pub/incoming`` itself (there, the area is the exchange). Every deletion is an audit record.
A bundle whose signature is in its area is never expired while its check fails: the
appliance's own failure (a full disk while it moved the bundle, say) must not cost a sender a
bundle it was told had landed. :func:`upkeep` checks such bundles again every time, and sweeps
after; it also deletes what a cut ``--consume`` left in ``pub/outgoing`` (see
:meth:`~airgap.server.publish.Publisher.clear_leftovers`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from airgap.server.audit import AuditLog
from airgap.server.layout import Layout
from airgap.server.limits import BusyFiles
from airgap.server.policy import PARTIAL_SUFFIX, REFUSED_SUFFIX
from airgap.server.publish import Publisher
from airgap.shared.ids import bundle_id_of, is_bundle_id

logger = logging.getLogger("airgap.server")


def stale(
    layout: Layout,
    *,
    older_than: float,
    now: float,
    keep: Collection[tuple[str, str]] = (),
) -> list[tuple[Path, os.stat_result]]:
    """``*.part`` files of ``pub/incoming``, and the regular files of the senders' areas, last
    written before ``now - older_than``; in a sender's area, only when no file of the same
    bundle was written since (a client resuming a send writes its manifest, say, beside a
    payload whole for days), and none of a bundle in ``keep`` (area path, bundle id)."""
    files = []
    newest: dict[tuple[str, str], float] = {}  # (area, bundle id or name) -> latest write
    for entry, senders in _upload_entries(layout):
        if not senders and not entry.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # renamed meanwhile: the upload finished
            continue
        if not stat.S_ISREG(info.st_mode) or _notice(entry.name, info):
            continue
        group = (str(Path(entry.path).parent), bundle_id_of(entry.name) or entry.name)
        newest[group] = max(newest.get(group, 0.0), info.st_mtime)
        files.append((entry, info, group))
    cutoff = now - older_than
    return [
        (Path(e.path), info)
        for e, info, group in files
        if newest[group] < cutoff and group not in keep
    ]


def _notice(name: str, info: os.stat_result) -> bool:
    """A refusal notice (see :func:`~airgap.server.publish._tell_sender`): it stays until its
    sender's next send reads it, however long that takes."""
    head, _, tail = name.partition(".")
    return info.st_size == 0 and "." + tail == REFUSED_SUFFIX and is_bundle_id(head)


def _upload_entries(layout: Layout) -> Iterator[tuple[os.DirEntry[str], bool]]:
    """What ``pub/incoming`` holds (anonymous uploads, the senders' areas) and what each
    sender's area holds, each with whether it is in a sender's area."""
    for entry in _entries(layout.incoming):
        yield entry, False
        if entry.is_dir(follow_symlinks=False):
            yield from ((inner, True) for inner in _entries(Path(entry.path)))


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:  # an area removed meanwhile
        return []


def sweep(
    layout: Layout,
    *,
    busy: BusyFiles,
    audit: AuditLog,
    older_than: float,
    keep: Collection[tuple[str, str]] = (),
) -> list[Path]:
    """Delete the stale uploads no upload holds, but for the bundles in ``keep`` (area path,
    bundle id); return what was deleted."""
    now = time.time()
    deleted = []
    for path, info in stale(layout, older_than=older_than, now=now, keep=keep):
        if not busy.claim([path]):
            continue  # being written right now: not stale after all
        try:
            again = path.lstat()
            # Written, or replaced by another file, since it was found: leave it.
            if (again.st_ino, again.st_mtime_ns) != (info.st_ino, info.st_mtime_ns):
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        finally:
            busy.release([path])
        deleted.append(path)
        audit.record(
            "expire",
            file=str(path.relative_to(layout.root)),
            bytes=info.st_size,
            idle_seconds=int(now - info.st_mtime),
        )
    return deleted


def upkeep(
    layout: Layout,
    *,
    busy: BusyFiles,
    audit: AuditLog,
    older_than: float,
    publisher: Publisher,
) -> None:
    """What the appliance does every :func:`interval`, on a worker thread: check again the
    bundles left signed in their areas (:meth:`~airgap.server.publish.Publisher.check_signed`),
    then, with an expiry, :func:`sweep` (which leaves a bundle whose check failed again), then
    delete the leftovers of a cut ``--consume`` in ``pub/outgoing``
    (:meth:`~airgap.server.publish.Publisher.clear_leftovers`). A failure is logged, and the
    next turn tries again."""
    try:
        checked = publisher.check_signed()
        failed = {(str(area), out.bundle_id) for area, out in checked if out.status == "failed"}
        if older_than:
            sweep(layout, busy=busy, audit=audit, older_than=older_than, keep=failed)
        publisher.clear_leftovers()
    except OSError as exc:
        logger.error("upkeep of the drop box failed: %s", exc)


def interval(older_than: float) -> float:
    """How often to look: a tenth of the expiry, between a second and an hour; a minute with
    none (``--partial-expiry 0``: only bundles to check again, and leftovers)."""
    if not older_than:
        return 60.0
    return min(3600.0, max(1.0, older_than / 10))
