"""Resumable transfers through a local spool: the remote side may fail, the spool remembers.

:class:`SpooledTransport` wraps a remote transport. Its writer stores every byte in a spool
file first while a thread uploads the file as it grows; after a network failure the upload
continues, after a backoff, from the server's size of the partial file, so a first attempt costs
about one pass of the encoder, not encode plus upload. Where the server offers HASH, the
uploaded bytes are checked against the spool before the writer returns. Its reader downloads
large files into a spool and, after a failure, resumes from what the spool holds, so nothing
verified is downloaded twice; the caller's checks run over every byte, spooled or not. Only a
payload goes through the spool: a manifest or signature is read with :meth:`read_unspooled`.

Spools live in the user's cache directory, 0700. The caller deletes a spool once its bundle is
safely sent or imported; a failed send leaves it for ``airgap send --resume``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Protocol, cast, runtime_checkable

from airgap.client.private import private_dir
from airgap.client.progress import UNSEEN, Meter
from airgap.client.transport import PARTIAL_SUFFIX, READ_BUFFER, Transport
from airgap.shared.errors import StorageError, TransferError
from airgap.shared.ids import bundle_id_of
from airgap.shared.pipeline import interrupted

CHUNK = 1 << 20
#: Seconds an upload's unsent bytes may stand still before the bar stops following them.
FOLLOW_STALL = 10.0


@dataclass(frozen=True)
class Backoff:
    attempts: int = 6
    first: float = 1.0
    factor: float = 2.0
    ceiling: float = 30.0
    #: Told of each retry before its wait (the CLI prints it on stderr), or None.
    notify: Callable[[str], None] | None = None

    def delays(self) -> list[float]:
        return [min(self.ceiling, self.first * self.factor**i) for i in range(self.attempts - 1)]


def retrying(
    what: str, backoff: Backoff, action: Callable[[], Any], *, resumes: bool = False
) -> Any:
    """Run ``action``; after a transfer failure wait and try again, up to the backoff's end.
    A failure that is not transient (a refused login, a certificate that is not the pinned
    one) is not retried: guessing again would only earn a ban, or talk to an impostor again;
    nor is anything once the process is being interrupted (its transfers were cut)."""
    for delay in [*backoff.delays(), None]:
        try:
            return action()
        except TransferError as exc:
            if not exc.transient or interrupted():
                raise
            if delay is None:
                raise TransferError(
                    f"{what}: gave up after {backoff.attempts} attempt"
                    f"{'s' if backoff.attempts != 1 else ''} ({exc.message})",
                    hint="run the same command again later"
                    + (" (the transfer resumes where it stopped)" if resumes else ""),
                ) from exc
            if backoff.notify is not None:
                backoff.notify(f"{exc.message}; trying again in {delay:g} s")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airgap"


def spool_failure(path: str | Path, exc: OSError) -> StorageError:
    """A spool file that could not be written, with a hint when its disk is full."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return StorageError(
        f"spool {path}: {exc.strerror or exc}",
        hint="free some space there (airgap spool show lists what the spool holds), "
        "then run the same command again"
        if full
        else None,
    )


class SpooledTransport:
    """The remote transport, with spooled, resumable, retried payload transfers."""

    def __init__(
        self, remote: Transport, spool: Path, *, backoff: Backoff = Backoff(), big: int = CHUNK
    ) -> None:
        self.remote = remote
        self.spool = private_dir(spool)
        self.sent = 0  # payload bytes that crossed the network, for the summary
        self.reached = 0  # how far into its file the upload under way has gone
        self.received = 0
        self.backoff = backoff
        self._big = big  # smaller files are not worth a spool

    def describe(self) -> str:
        return self.remote.describe()

    def list(self) -> list[str]:
        return list(retrying("listing", self.backoff, self.remote.list))

    def size(self, name: str) -> int | None:
        result: int | None = retrying(
            f"size of {name}", self.backoff, lambda: self.remote.size(name)
        )
        return result

    def rename(self, src: str, dst: str) -> None:
        """Rename on the server; after a failed attempt, a ``src`` gone means that attempt's
        rename was done and only its reply lost (a connection cut, the server killed right
        after): the appliance may have published the bundle already, so ``dst`` is not
        always there to see, and asking again would fail for good."""
        tried = False

        def attempt() -> None:
            nonlocal tried
            if tried and self.remote.size(src) is None:
                return
            tried = True
            self.remote.rename(src, dst)

        retrying(f"renaming {src}", self.backoff, attempt)
        if (self.spool / src).exists():
            (self.spool / src).replace(self.spool / dst)

    def delete(self, name: str) -> None:
        retrying(f"deleting {name}", self.backoff, lambda: self.remote.delete(name))

    def close(self) -> None:
        self.remote.close()

    def forget(self, name: str, *, keep: int = 0) -> None:
        """Drop the spooled copy of ``name`` (its bundle is imported or kept elsewhere), or
        what it holds past its first ``keep`` bytes (verified ones, before a part that failed:
        the next download asks the server for the rest again)."""
        path = self.spool / name
        try:
            if not keep:
                path.unlink(missing_ok=True)
            elif path.stat().st_size > keep:
                os.truncate(path, keep)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"spool {path}: {exc.strerror or exc}") from exc

    def keep_only(self, bundle_ids: set[str]) -> None:
        """Drop what the spool holds of every bundle but ``bundle_ids``: one imported already
        (a run cut off between its ledger record and dropping its spool left it there, and
        no run reads it again), or one the source no longer lists (another receiver's
        ``--consume`` took it, say: none can be finished from it)."""
        try:
            names = [p.name for p in self.spool.iterdir()]
        except OSError as exc:
            raise StorageError(f"spool {self.spool}: {exc.strerror or exc}") from exc
        for name in names:
            bundle_id = bundle_id_of(name)
            if bundle_id is not None and bundle_id not in bundle_ids:
                self.forget(name)

    def read_unspooled(
        self, name: str, *, limit: int, offset: int = 0, whole: bool = False
    ) -> bytes:
        """At most ``limit`` bytes of ``name``, straight from the server, the whole read tried
        again after a failure. Never spooled: a manifest or signature not yet verified must not
        outlive this run (a spooled prefix would be trusted as is next time). ``whole``: the
        file holds ``limit`` bytes from ``offset`` (a signed size), so a read that ends short
        is a cut transfer, tried again (found in review: a failed check, exit 3)."""

        def read() -> bytes:
            with self.remote.reader(name, offset=offset) as handle:
                data: bytes = handle.read(limit)
            if whole and len(data) < limit:
                raise TransferError(
                    f"downloading {name}: the download ended at byte {offset + len(data)} of "
                    f"{offset + limit}"
                )
            return data

        data: bytes = retrying(f"downloading {name}", self.backoff, read)
        return data

    def reader(self, name: str, *, offset: int = 0, size: int | None = None) -> io.BufferedIOBase:
        """``size``: what the caller knows the file holds (a signed size, checked against the
        server's SIZE already): not asked again, so a second answer cannot spool more than
        that, and a larger spool be taken next time for a stale one and dropped whole."""
        known = size is not None  # signed, not just what the server said
        if size is None:
            size = self.size(name)
        if size is None:
            handle: io.BufferedIOBase = retrying(
                f"downloading {name}", self.backoff, lambda: self.remote.reader(name, offset=offset)
            )
            return handle
        if size < self._big:  # not worth a spool: read whole, and the whole read tried again
            data = self.read_unspooled(
                name, limit=max(0, size - offset), offset=offset, whole=known
            )
            self.received += len(data)
            return io.BytesIO(data)
        raw = _SpooledDownload(self, name, size, self.spool / name)
        raw.seek(offset)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def writer(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        if offset:
            raise TransferError("a spooled upload always starts a file from its beginning")
        return io.BufferedWriter(_SpooledUpload(self, name, self.spool / name), buffer_size=CHUNK)

    def vouched_writer(
        self, name: str, *, continuing: bool = False, meter: Meter = UNSEEN
    ) -> VouchedWriter:
        """A writer whose caller knows the sha256 of what it writes (an encoder does) and
        says so with :meth:`VouchedWriter.vouch` before closing: the server's ``HASH`` is
        checked against that, and the upload does not hash the bytes a second time.

        When ``continuing``, the writer repeats an interrupted one: what the spool already
        holds is compared, not written (a difference is :class:`ContinueMismatch`), the rest
        appended, and the upload resumes from the server's size meanwhile. ``meter`` counts
        the bytes uploaded."""
        upload = _SpooledUpload(
            self, name, self.spool / name, continuing=continuing, vouched=True, meter=meter
        )
        return VouchedWriter(upload, buffer_size=CHUNK)

    def upload_file(
        self, name: str, local: Path, *, keyed: bool = False, meter: Meter = UNSEEN
    ) -> None:
        """Make the remote ``name`` hold exactly ``local``'s bytes: resume ``name.part`` from
        the server's size, then rename it. ``keyed``: a payload an earlier run encrypted, whose
        partial on the server is never uploaded over (:class:`ContinueMismatch` instead)."""
        uploader = _Uploader(
            self, name + PARTIAL_SUFFIX, local, final=name, keyed=keyed, meter=meter
        )
        uploader.finished.set()
        uploader.run()
        uploader.raise_failure()


class _SpooledDownload(io.RawIOBase):
    def __init__(self, owner: SpooledTransport, name: str, size: int, path: Path) -> None:
        self._owner, self._name, self._size = owner, name, size
        try:
            self._file = path.open("a+b")
        except OSError as exc:
            raise StorageError(f"spool {path}: {exc.strerror or exc}") from exc
        self._spooled = os.fstat(self._file.fileno()).st_size  # only this object writes it
        if self._spooled > size:  # a stale spool of another file
            self._file.truncate(0)
            self._spooled = 0
        self._pos = 0
        self._remote: io.BufferedIOBase | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < 0:
            raise OSError("spooled downloads seek from the start only")
        self._pos = pos
        self._drop_remote()
        return pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size:
            return 0
        if self._pos < self._spooled:
            got = os.preadv(
                self._file.fileno(), [memoryview(buffer)[: self._spooled - self._pos]], self._pos
            )
        else:
            got = retrying(
                f"downloading {self._name}",
                self._owner.backoff,
                lambda: self._fetch(buffer),
                resumes=True,
            )
        self._pos += got
        return got

    def _fetch(self, buffer: Any) -> int:
        try:
            if self._remote is None:
                self._remote = self._resumed()
            view = memoryview(buffer)[: self._size - self._pos]
            got = self._remote.readinto(view)
            if not got:
                raise TransferError(
                    f"downloading {self._name}: the download ended at byte {self._pos} of "
                    f"{self._size}"
                )
        except TransferError:
            self._drop_remote()
            raise
        self._owner.received += got
        try:
            os.pwrite(self._file.fileno(), view[:got], self._pos)
        except OSError as exc:
            raise StorageError(f"spool: {exc.strerror or exc}") from exc
        self._spooled = max(self._spooled, self._pos + got)
        return got

    def _resumed(self) -> io.BufferedIOBase:
        """The server's bytes from ``_pos``. A resumed download asks for ``OVERLAP`` bytes
        more, before ``_pos``, which must be the spool's: a server that ignores REST (it says
        350, then sends from byte 0) would otherwise splice its start into the payload, and
        every run fail the same segment's check (found in review). Such a server is read from
        its start instead, into the spool again: nothing in the spool is trusted as it is,
        each run checks every segment."""
        back = min(self._pos, OVERLAP) if self._spooled >= self._pos else 0
        remote = self._owner.remote.reader(self._name, offset=self._pos - back)
        self._owner.received += back
        try:
            if back and _read_exactly(remote, back, self._name) != os.pread(
                self._file.fileno(), back, self._pos - back
            ):
                remote.close()
                remote = self._owner.remote.reader(self._name, offset=0)
                self._refill(remote)
            return remote
        except BaseException:
            with contextlib.suppress(TransferError):
                remote.close()
            raise

    def _refill(self, remote: io.BufferedIOBase) -> None:
        """The server's first ``_pos`` bytes into the spool, over what it held."""
        done = 0
        while done < self._pos:
            chunk = _read_exactly(remote, min(CHUNK, self._pos - done), self._name)
            self._owner.received += len(chunk)
            try:
                os.pwrite(self._file.fileno(), chunk, done)
            except OSError as exc:
                raise StorageError(f"spool: {exc.strerror or exc}") from exc
            done += len(chunk)

    def _drop_remote(self) -> None:
        if self._remote is not None:
            with contextlib.suppress(TransferError):  # broken: the next read reconnects
                self._remote.close()
            self._remote = None

    def close(self) -> None:
        if not self.closed:
            self._drop_remote()
            self._file.close()
        super().close()


#: What a resumed download reads again, before where it stopped, to tell that the server
#: resumed there.
OVERLAP = 4096


def _read_exactly(remote: io.BufferedIOBase, count: int, name: str) -> bytes:
    data = remote.read(count)
    if len(data) < count:
        raise TransferError(f"downloading {name}: the download ended early")
    return data


class _Aborted(Exception):
    """The upload was called off (its bytes are not to be sent)."""


class ContinueMismatch(StorageError):
    """The bytes encoded again differ from those an interrupted send left in the spool."""


class UploadRefused(TransferError):
    """An upload that trying again cannot mend: not retried."""

    transient = False


class VouchedWriter(io.BufferedWriter):
    """See :meth:`SpooledTransport.vouched_writer`. Left by an exception, it stops uploading at
    once (the spool keeps what was written, for a rerun); closed without :meth:`vouch`, it
    refuses to finish the upload."""

    def vouch(self, sha256: str) -> None:
        """The sha256 of everything written, known to the caller: call it before closing."""
        cast(_SpooledUpload, self.raw).uploader.vouched = sha256

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            cast(_SpooledUpload, self.raw).uploader.abort()
        super().__exit__(exc_type, exc, traceback)


class _SpooledUpload(io.RawIOBase):
    """Writes land in the spool; an uploader thread follows the file to the server. When
    ``continuing``, the spool's bytes are a prefix the writes must repeat."""

    def __init__(
        self,
        owner: SpooledTransport,
        name: str,
        path: Path,
        *,
        continuing: bool = False,
        vouched: bool = False,
        meter: Meter = UNSEEN,
    ) -> None:
        try:
            self._file = path.open("r+b" if continuing and path.exists() else "wb")
            self._held = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise StorageError(f"spool {path}: {exc.strerror or exc}") from exc
        self._at = 0
        # While continuing, only bytes compared with the new encoding go up.
        self.uploader = _Uploader(
            owner,
            name,
            path,
            limit=(lambda: self._at) if continuing else None,
            spooled=self._held if continuing else None,
            vouching=vouched,
            meter=meter,
        )
        self._thread = threading.Thread(target=self.uploader.run, daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.uploader.raise_failure()
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            if self._at < self._held:
                same = min(size, self._held - self._at)
                spooled = os.pread(self._file.fileno(), same, self._at)
                if spooled != view[:same]:
                    pairs = zip(spooled, view[: len(spooled)], strict=True)
                    at = self._at + next((i for i, (a, b) in enumerate(pairs) if a != b), same)
                    self.uploader.abort()
                    raise ContinueMismatch(
                        f"the payload encoded again differs from the interrupted one at byte "
                        f"{at}: the images or files changed, or the engine's save is not "
                        "repeatable"
                    )
                self._at, view = self._at + same, view[same:]
            if view:
                self._file.seek(self._at)
                written = self._file.write(view)
                self._file.flush()  # in the file before the uploader may read it
                self._at += written
        except OSError as exc:
            raise self._failed(exc) from exc
        self.uploader.wake()
        return size

    def _failed(self, exc: OSError) -> StorageError:
        return spool_failure(self._file.name, exc)

    def close(self) -> None:
        if self.closed:
            return
        if self._at < self._held:
            # The new encoding ended short of what the interrupted one spooled: the spool's
            # tail is not part of it, so none of it goes up (the caller reports the mismatch).
            self.uploader.abort()
        failed = None
        try:
            self._file.close()  # flushes what a failed write left in its buffer: it may fail too
        except OSError as exc:
            failed = self._failed(exc)
            self.uploader.abort()
        self.uploader.meter.expect(self._at)
        self.uploader.finished.set()
        self.uploader.wake()
        try:
            self._thread.join()
        except BaseException:  # Ctrl-C while the upload catches up: it stops too, at once
            self.uploader.abort()
            raise
        super().close()
        if failed is not None:
            raise failed
        self.uploader.raise_failure()


class _Uploader:
    """Uploads a (possibly growing) local file to ``partial``, resuming what the server holds;
    with ``final``, renames it to ``final`` once whole (unless ``final`` is already there)."""

    def __init__(
        self,
        owner: SpooledTransport,
        partial: str,
        local: Path,
        final: str | None = None,
        *,
        limit: Callable[[], int] | None = None,
        spooled: int | None = None,
        keyed: bool = False,
        vouching: bool = False,
        meter: Meter = UNSEEN,
    ) -> None:
        self.owner, self.partial, self.local, self.final = owner, partial, local, final
        self.meter = meter
        self.name = final or partial
        self.finished = threading.Event()  # set when the local file has all its bytes
        self._limit = limit  # how far the upload may go before the file is finished
        # Continuing: the bytes an interrupted upload left in the spool, which the new
        # encoding is compared with, then every byte this upload read from it.
        self._spooled = spooled
        # An earlier run's key encrypted this payload (``keyed``): what the server holds may
        # be another encoding under that key, never to be uploaded over (_over_another).
        self._keyed = keyed or spooled is not None
        # With ``vouching``, the writer gives the file's sha256 (``vouched``) once it is whole.
        self._vouching = vouching
        self.vouched: str | None = None
        self._aborted = threading.Event()
        self._grown = threading.Condition()
        self._failure: BaseException | None = None
        self._mismatches = 0

    def abort(self) -> None:
        """Stop uploading at once: what the file holds is not to be sent."""
        self._aborted.set()
        self.wake()

    def wake(self) -> None:
        with self._grown:
            self._grown.notify_all()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def run(self) -> None:
        try:
            retrying(f"uploading {self.name}", self.owner.backoff, self._attempt, resumes=True)
        except _Aborted:
            pass
        except BaseException as exc:  # handed to the writing thread
            self._failure = exc

    def _attempt(self) -> None:
        remote = self.owner.remote
        total = self.local.stat().st_size if self.finished.is_set() else None
        if self.final and total is not None and remote.size(self.final) == total:
            self.meter.reach(total)
            return  # already there, from an earlier run
        offset = remote.size(self.partial)
        if self._spooled is not None and offset is not None and offset > self._spooled:
            self._over_another(
                f"the spool lost bytes of {self.name} that the server holds ({offset} there, "
                f"{self._spooled} here: a crash before they reached the disk?)"
            )
        if self._keyed and offset is not None and total is not None and offset > total:
            self._over_another(f"the server holds more of {self.name} than was encoded")
        if offset is not None and (offset == 0 or (total is not None and offset > total)):
            remote.delete(self.partial)  # nothing to keep: start anew (STOR never overwrites)
            offset = None
        offset = offset or 0
        if total is not None:
            self.meter.expect(total)
        self.meter.reach(offset)
        server = _hashing(remote)
        digest = self._hash_prefix(offset) if server and not self._vouching else None
        with self.local.open("rb") as source, remote.writer(self.partial, offset=offset) as out:
            source.seek(offset)
            queue = _queue_of(out) if self.meter.shown else None
            while True:
                if self._aborted.is_set():
                    raise _Aborted
                chunk = source.read(self._room(source.tell()))
                if chunk:
                    if self._spooled is not None:  # what the server gets up to here is ours,
                        self._spooled = max(self._spooled, source.tell())  # even cut short
                    if digest is not None:
                        digest.update(chunk)
                    out.write(chunk)
                    out.flush()  # on the network, where the bar can see it
                    self.owner.sent += len(chunk)
                    self.owner.reached = source.tell()
                    self.meter.advance(source.tell() - (queue.unsent() if queue else 0))
                elif self.finished.is_set() and source.tell() >= self.local.stat().st_size:
                    break
                else:
                    with self._grown:
                        self._grown.wait(0.2)
            if queue is not None:
                self._follow(queue, source.tell())
        if interrupted():  # the close did not wait for the server: its copy may be short
            raise _Aborted
        if self._vouching and self.vouched is None:
            raise UploadRefused(f"uploading {self.name}: closed before its sha256 was given")
        expected = digest.hexdigest() if digest is not None else self.vouched
        if server and expected is not None:
            self._check_hash(server, expected)
        if self.final:
            remote.rename(self.partial, self.final)

    def _follow(self, queue: _Queued, end: int) -> None:
        """Past the last write, the bar follows what the server has yet to receive: seconds
        of a slow link, or of a throttled server. Until the queue empties, or stops moving
        (closing then waits for the server's reply, and its timeout)."""
        left, moved = queue.unsent(), time.monotonic()
        while left:
            self.meter.advance(end - left)
            if self._aborted.wait(0.1) or interrupted():
                raise _Aborted  # those bytes may never arrive: no 100%, no hash, no rename
            now = queue.unsent()
            if now < left:
                moved = time.monotonic()
            elif time.monotonic() - moved > FOLLOW_STALL:
                return
            left = now
        self.meter.advance(end)

    def _room(self, at: int) -> int:
        if self._limit is None or self.finished.is_set():
            return CHUNK
        return max(0, min(CHUNK, self._limit() - at))

    def _hash_prefix(self, offset: int) -> Any:
        digest = hashlib.sha256()
        with self.local.open("rb") as source:
            left = offset
            while left and (chunk := source.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
        return digest

    def _over_another(self, why: str) -> NoReturn:
        """The server may hold another encoding of this payload under the key an earlier run
        used. Uploading over it would put two ciphertexts under one key and nonce where the
        drop box could see both (their XOR is their plaintexts'): the send starts anew, a
        new bundle under a new key (:class:`ContinueMismatch`), and the partial goes."""
        raise ContinueMismatch(why)

    def _check_hash(self, server: _Hashing, expected: str) -> None:
        got = server.hash(self.partial)
        if got is not None and got != expected and self._keyed:
            self._over_another(f"uploading {self.name}: the server's HASH differs from ours")
        if got is not None and got != expected:
            self.owner.remote.delete(self.partial)
            self._mismatches += 1
            message = f"uploading {self.name}: the server's HASH differs from ours"
            if self._mismatches == 1:
                raise TransferError(message)  # uploaded again from the start, once
            raise UploadRefused(
                f"{message}, twice",
                hint="the drop box's disk, or something between, alters what it receives",
            )


@runtime_checkable
class _Hashing(Protocol):
    def features(self) -> set[str]: ...

    def hash(self, name: str) -> str | None: ...


@runtime_checkable
class _Queued(Protocol):
    def unsent(self) -> int: ...


def _queue_of(out: object) -> _Queued | None:
    """The connection under ``out``, if it can tell what it has not yet delivered."""
    raw = getattr(out, "raw", None)
    return raw if isinstance(raw, _Queued) else None


def _hashing(remote: Transport) -> _Hashing | None:
    """The server, if it can hash what it holds (FTP ``HASH``): only then is there a check."""
    if isinstance(remote, _Hashing) and "HASH" in remote.features():
        return remote
    return None
