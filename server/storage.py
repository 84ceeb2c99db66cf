"""How an upload lands on disk: never over a completed file, never past a quota or the watermark.

The rules that pyftpdlib's STOR gets wrong for a drop box, free of any FTP library:

- a plain STOR never replaces an existing file (resume it with REST+STOR or APPE instead);
- a resume at offset n first cuts the file at n, so no old tail survives past the new bytes;
- REST past the end of the file is refused rather than leaving a hole;
- an upload that would cross the sender's quota or the free-disk watermark stops with the bytes
  written so far kept, so the upload resumes once there is room;
- the quota holds for the area, not for each upload: uploads open side by side in one area
  count their bytes in one :class:`AreaUsage`.

:class:`UploadFile` writes unbuffered: every byte it reports written is in the file, an error
(ENOSPC, EDQUOT) surfaces in :meth:`UploadFile.write` and never later in ``close()``. Nothing is
hashed here, on the IO loop, where it would slow every upload down to the hash's speed: an
upload from the file's first byte hands what it writes to a :class:`~airgap.server.tally.Tally`
(hashed on its own thread), and the server's :class:`~airgap.server.hashing.HashCache` hashes
any other finished upload once, on a worker.
This module answers with FTP reply texts because those are what a client sees, but it never
touches a socket and never follows a symbolic link.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path

from airgap.server.hashing import HashCache
from airgap.server.tally import Tally

#: How often (bytes written) an upload checks the free-disk watermark again.
SPACE_CHECK_EVERY = 4 * 1024 * 1024
#: The most entries an upload area may hold for a new file to be created in it. A sender needs
#: three a bundle, and a bundle leaves the area as soon as it is whole; the cap bounds what one
#: sender can make the appliance keep (empty files count against no quota) and scan.
MAX_AREA_FILES = 1000
#: The most refused bundles of one area the quarantine keeps before the area takes no upload.
MAX_QUARANTINED = 100


@dataclass(frozen=True)
class Refusal:
    """An FTP reply refusing the upload; nothing was changed on disk."""

    reply: str


@dataclass(frozen=True)
class Target:
    """The file an upload names, as it is now."""

    path: str
    exists: bool
    size: int

    def offset(self, *, append: bool, rest: int) -> int | Refusal:
        """Where the upload writes: the end (APPE), ``rest`` (REST+STOR) or 0 for a new file."""
        if not append and rest == 0 and self.size > 0:
            return Refusal("550 File exists and is never overwritten; resume with REST or APPE.")
        if rest > self.size:
            return Refusal(f"554 REST position ({rest}) is past the end of the file ({self.size}).")
        return self.size if append else rest


def target(path: str) -> Target | Refusal:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return Target(path, exists=False, size=0)
    except OSError as exc:
        return Refusal(f"550 {exc.strerror}.")
    if not stat.S_ISREG(info.st_mode):
        return Refusal("550 Not a regular file.")
    return Target(path, exists=True, size=info.st_size)


def free_bytes(path: str | Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


class AreaUsage:
    """The bytes in one upload area: one count, shared by every upload open there.

    Set from the disk each time an upload opens in the area (every byte an open upload wrote
    is already in its file: writes are unbuffered, and all on the IO loop), then raised by each
    write of each open upload, so uploads side by side see one another's bytes at once. A
    delete or a publish lowers only the disk's figure: until the next upload opens, the count
    errs on the side of the quota.
    """

    def __init__(self) -> None:
        self.used = 0


class Areas:
    """The :class:`AreaUsage` of each area with an upload open, by the directory's identity.

    An area that no open upload holds is dropped (counted afresh from the disk next time).
    Used on the IO loop only, as uploads open and write.
    """

    def __init__(self) -> None:
        self._usage: weakref.WeakValueDictionary[tuple[int, int], AreaUsage]
        self._usage = weakref.WeakValueDictionary()

    def usage(self, area: Path) -> AreaUsage:
        info = area.stat()
        key = (info.st_dev, info.st_ino)
        found = self._usage.get(key)
        if found is None:
            found = self._usage[key] = AreaUsage()
        return found


@dataclass(frozen=True)
class Budget:
    """The quota an upload writes under: its area's shared count, and what that count is once
    the upload has cut its file at its offset (applied by :func:`open_for_upload`)."""

    area: AreaUsage
    quota: int
    used: int


@dataclass(frozen=True)
class Survey:
    """An upload area's files (directories aside) and, when weighed, their bytes."""

    files: int
    size: int


def survey(upload: Target, *, weigh: bool) -> Survey:
    """One pass over the area of ``upload``. A file published, swept or deleted by another
    session while the pass runs is simply not counted: it has left the area."""
    files = size = 0
    with os.scandir(Path(upload.path).parent) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue
                if weigh:
                    size += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            files += 1
    return Survey(files, size)


def crowded(area: Survey) -> Refusal | None:
    """A 552 when the area of a new file already holds :data:`MAX_AREA_FILES` files (the
    senders' areas in ``pub/incoming`` do not count)."""
    if area.files >= MAX_AREA_FILES:
        return Refusal(
            f"552 This area holds {MAX_AREA_FILES} files already; wait for publishing, "
            "or for unfinished uploads to expire."
        )
    return None


def quarantined(folder: Path, *, weigh: bool) -> int | Refusal:
    """The bytes a sender's quarantine ``folder`` holds (0 unless ``weigh``), or a 552 once it
    holds :data:`MAX_QUARANTINED` bundles: nothing more goes in until the operator has looked.
    Without this, bundles refused by the publisher left the sender's area, and its quota, and
    a sender could fill the disk one refused bundle at a time."""
    try:
        with os.scandir(folder) as entries:
            bundles = list(itertools.islice(entries, MAX_QUARANTINED))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    if len(bundles) >= MAX_QUARANTINED:
        return Refusal(
            f"552 {MAX_QUARANTINED} of this area's bundles are in quarantine; the operator of "
            "the drop box must look at them first."
        )
    total = 0
    for bundle in bundles if weigh else ():
        try:
            if bundle.is_dir(follow_symlinks=False):
                with os.scandir(bundle.path) as files:
                    total += sum(f.stat(follow_symlinks=False).st_size for f in files)
        except OSError:  # the operator removed it meanwhile
            continue
    return total


def budget(
    upload: Target,
    offset: int,
    *,
    quota: int | None,
    min_free: int,
    areas: Areas,
    survey: Survey,
    held: int = 0,
) -> Budget | Refusal | None:
    """The quota the upload writes under (None: no quota), or a 552 when there is no room.

    ``quota`` is the area's limit in bytes (None: none); the area is the file's directory,
    ``survey`` its files weighed. ``held``: the area's bytes in quarantine, which count
    against its quota too.
    """
    area = Path(upload.path).parent
    if free_bytes(area) < min_free:
        return Refusal("552 Not enough disk space on the server; resume later.")
    if not quota:
        return None
    used = held + survey.size
    used -= upload.size - offset
    if used >= quota:
        if held:
            return Refusal(
                f"552 Quota exceeded, {held} bytes of it by bundles in quarantine; the "
                "operator of the drop box must look at them."
            )
        return Refusal("552 Quota exceeded; delete .part files or wait for publishing.")
    return Budget(areas.usage(area), quota, used)


class UploadFile:
    """The file a STOR/APPE writes: enforces its area's quota and the disk watermark.

    ``changed``: whether the upload changed the file yet (made it, cut it, or wrote to it).
    """

    def __init__(
        self,
        fd: int,
        path: str,
        *,
        budget: Budget | None,
        min_free: int,
        changed: bool = True,
        tally: Tally | None = None,
    ) -> None:
        self._fd = fd
        self._tally = tally
        self.name = path
        self._area = budget.area if budget is not None else None
        self._quota = budget.quota if budget is not None else 0
        self._min_free = min_free
        self._since_check = 0
        self.changed = changed

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def write(self, data: bytes) -> int:
        area = self._area
        if area is not None and area.used + len(data) > self._quota:
            raise OSError(errno.EDQUOT, "quota exceeded")
        self._since_check += len(data)
        if self._since_check >= SPACE_CHECK_EVERY:
            self._since_check = 0
            if free_bytes(self.name) < self._min_free:
                raise OSError(errno.ENOSPC, "disk nearly full")
        self.changed = self.changed or bool(data)
        view = memoryview(data)
        while view:  # a short write (a disk filling up) writes the rest or raises ENOSPC
            count = os.write(self._fd, view)
            if area is not None:
                area.used += count
            view = view[count:]
        if self._tally is not None:
            self._tally.add(data)
        return len(data)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if self._tally is not None:
                    self._tally.end(fd)
            finally:
                os.close(fd)


def open_for_upload(
    upload: Target,
    offset: int,
    *,
    budget: Budget | None,
    min_free: int,
    hashes: HashCache | None = None,
) -> UploadFile:
    """Open for writing at ``offset``, the file cut there: a resume never keeps an old tail.

    The area's count is set from ``budget`` only once the file is open and cut, so an upload
    refused here leaves the other uploads' count as it was. ``hashes`` forgets what it knew
    of a file that is cut. A resume at the file's end is not a cut: the file and its cached
    hash stay as they were until a byte comes, and that byte makes the file longer, so no
    entry cached for it before (keyed by its size) matches it any more; a resume with nothing
    to send costs no hash. An upload from the first byte is hashed as it lands (a
    :class:`~airgap.server.tally.Tally`).
    """
    flags = os.O_WRONLY | os.O_NOFOLLOW | (0 if upload.exists else os.O_CREAT | os.O_EXCL)
    fd = os.open(upload.path, flags, 0o640)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "Not a regular file")
        cut = not upload.exists or offset != info.st_size
        if cut:
            if hashes is not None:
                hashes.forget(info)
            os.ftruncate(fd, offset)  # sets a new mtime even at the same size
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    if budget is not None:
        budget.area.used = budget.used
    tally = Tally(hashes, os.fstat(fd)) if hashes is not None and offset == 0 else None
    return UploadFile(fd, upload.path, budget=budget, min_free=min_free, changed=cut, tally=tally)
