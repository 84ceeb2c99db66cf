"""STOR and APPE: an upload goes through :mod:`airgap.server.storage`, never pyftpdlib's open.

An upload ending is only recorded (bytes and sha256, hashed off the loop) and handed to the
bundle check: a socket that closed cleanly says nothing about whether the file is whole. The
record's hash is the one a client's ``HASH`` and the bundle check then find in
``services.hashes``: an upload from the file's first byte was hashed as it landed
(:mod:`~airgap.server.tally`), any other finished upload is read once to hash it, with one job
at most waiting per file (:mod:`~airgap.server.ftp.records`), and an upload that wrote nothing
at the file's end changed nothing and is not hashed again.

A file is claimed in ``services.busy`` from before it is opened for writing until after it is
closed, so the publisher never moves a file with a writable handle open on it; every upload of
an area counts its bytes in that area's one :class:`~airgap.server.storage.AreaUsage`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

from airgap.server import storage
from airgap.server.ftp.records import Ended, UploadRecords
from airgap.server.ftp.session import Session
from airgap.server.policy import Op
from airgap.server.users import Role, could_be_name

logger = logging.getLogger("airgap.server")


class UploadCommands(Session):
    _upload: storage.UploadFile | None = None  # what this session writes, claimed in BusyFiles
    _queued_on: object = None  # the passive listener an upload waiting for its data awaits
    # One for the process, as the class is: areas are told apart by their directory's identity.
    _areas: ClassVar[storage.Areas] = storage.Areas()
    _records: ClassVar[UploadRecords] = UploadRecords()  # one hash job waiting per file at most

    def ftp_APPE(self, path: str) -> None:
        if self._restart_position:
            self._restart_position = 0
            self.respond("450 Can't APPE while REST request is pending.")
            return
        self.ftp_STOR(path, mode="a")

    def ftp_STOR(self, path: str, mode: str = "w") -> None:
        append = "a" in mode
        rest, self._restart_position = self._restart_position, 0
        # The policy before the disk: a refused path gets one reply whether or not it exists
        # (whoever may resume a file may also create it), and an account's name the same
        # whether its area was made yet or not.
        if self._takes_an_area(path):
            self.respond("553 Names like that are kept for senders' areas: add an extension.")
            return
        if not self._allowed(Op.CREATE, path):
            return
        target = storage.target(path)
        if isinstance(target, storage.Refusal):
            self.respond(target.reply)
            return
        # Writing into a file that is there is a resume, a plain STOR onto an empty one too
        # (a STOR onto a file with bytes in it is refused below, whoever sends it).
        resume = append or rest > 0 or target.size == 0
        if target.exists and resume and not self._allowed(Op.RESUME, path):
            return
        offset = target.offset(append=append, rest=rest)
        if isinstance(offset, storage.Refusal):
            self.respond(offset.reply)
            return
        config = self.services.config
        sender = self.principal is not None and self.principal.role is Role.SENDER
        quota = config.quota_bytes if sender else None
        # One pass, and none for a resume without a quota, which neither counts nor weighs.
        area = (
            storage.survey(target, weigh=bool(quota))
            if quota or not target.exists
            else storage.Survey(files=0, size=0)
        )
        if not target.exists and (refused := storage.crowded(area)) is not None:
            self.respond(refused.reply)
            return
        # A sender's only: anonymous uploads have no quota, and anyone could fill their count.
        held = (
            storage.quarantined(
                self.services.layout.quarantine_of(Path(path).parent), weigh=bool(quota)
            )
            if sender
            else 0
        )
        if isinstance(held, storage.Refusal):
            self.respond(held.reply)
            return
        budget = storage.budget(
            target,
            offset,
            quota=quota,
            min_free=config.min_free_bytes,
            areas=self._areas,
            survey=area,
            held=held,
        )
        if isinstance(budget, storage.Refusal):
            # Said to the operator too: a disk under the watermark refuses every upload.
            logger.warning("upload of %s refused: %s", path, budget.reply)
            self.respond(budget.reply)
            return
        if not self._data_coming():
            # Else the upload waits for a data connection that may never come, having made its
            # file and its audit record: STOR after STOR, a few bytes each, grew the log for
            # ever without a byte of data.
            self.respond("425 Use PASV or EPSV first (one upload per data connection).")
            return
        if not self.services.busy.claim([Path(path)]):
            self.respond("450 File busy: being written or published; try again later.")
            return
        try:
            upload = storage.open_for_upload(
                target,
                offset,
                budget=budget,
                min_free=config.min_free_bytes,
                hashes=self.services.hashes,
            )
        except OSError as exc:
            self.services.busy.release([Path(path)])
            self.respond(f"550 {exc.strerror}.")
            return
        self._release_upload()  # one this upload replaces, never to be written again
        self._upload = upload
        self._record("upload-started", path, offset=offset)
        self._start_receiving(upload, "APPE" if append else "STOR")

    def _data_coming(self) -> bool:
        """A data connection is open, or on its way (a passive port listening, an active one
        connecting), and no other upload is waiting for that one already."""
        if self._in_dtp_queue is not None and self._dtp_acceptor is self._queued_on:
            return False  # STOR after STOR on one PASV (after a new PASV, the first is given up)
        if self.data_channel is not None:
            return True
        waiting = (self._dtp_acceptor, self._dtp_connector)  # pyftpdlib keeps them once closed
        return any(d is not None and not d._closed for d in waiting)

    def _takes_an_area(self, path: str) -> bool:
        """An anonymous upload in ``pub/incoming`` named as an account could be: where that
        sender's area goes (made at its first login), which the file would keep it from. Every
        such name is refused, whether the account exists or not, or what is refused would tell
        anyone the names of the senders (and a file could squat an account made later). The
        access policy refuses these names too; this answers first, saying why."""
        return (
            self.principal is not None
            and self.principal.role is None
            and Path(path).parent == self.services.layout.incoming
            and could_be_name(Path(path).name)
        )

    def _start_receiving(self, upload: storage.UploadFile, cmd: str) -> None:
        """What pyftpdlib's ftp_STOR does once it has a file object."""
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(self._current_type, cmd)
        else:
            self.respond("150 File status okay. About to open data connection.")
            self._in_dtp_queue = (upload, cmd)
            self._queued_on = self._dtp_acceptor

    def _release_upload(self) -> None:
        """Close the file (pyftpdlib drops a queued one unclosed on REIN), then release it."""
        if self._upload is not None:
            upload, self._upload = self._upload, None
            upload.close()
            self.services.busy.release([Path(upload.name)])

    def on_file_received(self, file: str) -> None:
        self._upload_ended(file, complete=True)

    def on_incomplete_file_received(self, file: str) -> None:
        self._upload_ended(file, complete=False)

    def _upload_ended(self, file: str, *, complete: bool) -> None:
        upload = self._upload
        self._release_upload()
        # "completed" only means the socket closed cleanly; the bundle check decides.
        event = "upload-completed" if complete else "upload-incomplete"
        try:
            if upload is not None and upload.name == file and not upload.changed:
                self._record_unchanged(file, event)
            else:
                self._record_hashed(file, event)
        except OSError as exc:
            logger.warning("after upload of %s: %r", file, exc)
            self._check_bundle_of(file)

    def _record_hashed(self, file: str, event: str) -> None:
        # Opened and sized here, on the loop, as the upload ends: a client may rename the file,
        # or resume it, before a worker gets to it, and the record is of what this upload left.
        handle = os.fdopen(os.open(file, os.O_RDONLY | os.O_NOFOLLOW), "rb")
        ended = self._ended(file, event, size=os.fstat(handle.fileno()).st_size)
        self._records.add(self.services, handle, ended, lambda: self._check_bundle_of(file))

    def _record_unchanged(self, file: str, event: str) -> None:
        """Nothing came at the file's end: the file is as it was, and so is its hash, which is
        recorded if known (null otherwise), never taken again."""
        info = os.lstat(file)
        ended = self._ended(file, event, size=info.st_size)
        ended.record(self.services.audit, self.services.hashes.known(info))
        self._check_bundle_of(file)

    def _ended(self, file: str, event: str, *, size: int) -> Ended:
        return Ended(
            event=event,
            ip=self.remote_ip,
            user=self.principal.name if self.principal else "",
            file=os.path.relpath(file, self.services.layout.root),
            size=size,
        )

    def on_file_sent(self, file: str) -> None:
        self._record("download", file, complete=True)

    def on_incomplete_file_sent(self, file: str) -> None:
        self._record("download", file, complete=False)

    def close(self) -> None:
        self._release_upload()
        super().close()
