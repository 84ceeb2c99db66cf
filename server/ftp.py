"""The one module that talks to pyftpdlib: the authorizer, the file system view, the handlers.

Every command that touches a path asks :mod:`airgap.server.policy` first, with the path made
relative to the server root. pyftpdlib's own pitfalls are closed here: STOR never truncates an
existing file (550; resume with REST+STOR or APPE), REST n + STOR cuts the file at n before
writing, a data connection reset answers 426 instead of 226, and no upload is ever taken as
complete because its socket closed: the bundle check in :mod:`airgap.server.publish` decides.

Slow work never runs on the IO loop: password checks (scrypt), HASH and bundle checks run on a
thread pool, and their results come back through :class:`Mailbox`, a socketpair the loop
watches. This module never logs a password (PASS lines are masked by pyftpdlib and never
reach the audit log) and never follows a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.filesystems import AbstractedFS, FilesystemError
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.ioloop import AsyncChat, IOLoop
from pyftpdlib.servers import FTPServer

from airgap.server.audit import AuditLog
from airgap.server.config import AnonymousMode, ServeConfig, TlsMode
from airgap.server.hashing import HashCache
from airgap.server.layout import Layout
from airgap.server.limits import BusyFiles, LoginGuard
from airgap.server.policy import Op, Parts, Principal, decide, rename_allowed, visible
from airgap.server.publish import Outcome, Publisher, bundle_id_of
from airgap.server.users import PasswordHash, Role, UserDB

logger = logging.getLogger("airgap.server")
ANONYMOUS = ("anonymous", "ftp")
_DUMMY_HASH = PasswordHash.make("not a password of anyone")  # equal work for unknown users
_SPACE_CHECK_EVERY = 4 * 1024 * 1024
MAX_LINE = 2048
_REFUSED_COMMANDS = ("MKD", "XMKD", "RMD", "XRMD", "STOU", "SITE CHMOD", "MFMT", "SITE")


class Mailbox(AsyncChat):  # type: ignore[misc]
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
    guard: LoginGuard
    busy: BusyFiles
    publisher: Publisher
    hashes: HashCache
    audit: AuditLog
    pool: ThreadPoolExecutor
    mailbox: Mailbox

    def run(self, work: Callable[[], Any], done: Callable[[Future[Any]], None]) -> None:
        """``work`` on a worker thread, then ``done(future)`` back on the IO loop."""
        future = self.pool.submit(work)
        future.add_done_callback(lambda f: self.mailbox.post(lambda: done(f)))

    def check_bundle(self, area: Path, bundle_id: str) -> None:
        def report(future: Future[Outcome]) -> None:
            if future.exception() is not None:
                logger.error("bundle check %s failed: %r", bundle_id, future.exception())
            else:
                logger.info("bundle %s: %s", bundle_id, future.result().status)

        self.run(lambda: self.publisher.check(area, bundle_id), report)


class Authorizer:
    """pyftpdlib's authorizer interface; logins are checked by the handler off the IO loop and
    permissions by :mod:`policy` per command, so this only answers the questions left."""

    def has_user(self, username: str) -> bool:
        return True

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return True  # each ftp_* override asks the policy, which knows the path's area

    def get_perms(self, username: str) -> str:
        return "elr"

    def get_msg_login(self, username: str) -> str:
        return "Logged in."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def impersonate_user(self, username: str, password: str) -> None:
        pass

    def terminate_impersonation(self, username: str) -> None:
        pass

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        raise AssertionError("logins go through AirgapHandler.ftp_PASS")


class AirgapFS(AbstractedFS):  # type: ignore[misc]
    """The file system as a session sees it: no links followed, listings filtered by policy."""

    def rel(self, path: str) -> Parts:
        root = self.cmd_channel.services.layout.root
        relative = os.path.relpath(os.path.realpath(path), root)
        if relative == ".":
            return ()
        if relative.startswith(".."):
            raise FilesystemError("outside the root")
        return Path(relative).parts

    def validpath(self, path: str) -> bool:
        if any(c in path for c in "\0\r\n"):
            return False
        return bool(super().validpath(path))

    def open(self, filename: str, mode: str) -> Any:
        if mode != "rb":
            raise FilesystemError("not allowed")
        fd = os.open(filename, os.O_RDONLY | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FilesystemError("not a regular file")
        return os.fdopen(fd, "rb")

    def listdir(self, path: str) -> list[str]:
        principal = self.cmd_channel.principal
        directory = self.rel(path)
        names = []
        for entry in os.scandir(path):
            if entry.is_symlink():
                continue
            if visible(principal, directory, entry.name, is_dir=entry.is_dir()):
                names.append(entry.name)
        return sorted(names)

    listdirinfo = listdir

    def mkstemp(self, *args: Any, **kwargs: Any) -> Any:
        raise FilesystemError("not allowed")

    def mkdir(self, path: str) -> None:
        raise FilesystemError("not allowed")

    def rmdir(self, path: str) -> None:
        raise FilesystemError("not allowed")

    def chmod(self, path: str, mode: int) -> None:
        raise FilesystemError("not allowed")

    def utime(self, path: str, timeval: float) -> None:
        raise FilesystemError("not allowed")


class UploadFile:
    """The file a STOR/APPE writes: counts bytes, enforces the quota and the disk watermark."""

    def __init__(self, handle: Any, path: str, *, budget: int | None, min_free: int) -> None:
        self._handle = handle
        self.name = path
        self._budget = budget
        self._min_free = min_free
        self._since_check = 0
        self.written = 0

    @property
    def closed(self) -> bool:
        return bool(self._handle.closed)

    def write(self, data: bytes) -> int:
        if self._budget is not None and self.written + len(data) > self._budget:
            raise OSError(errno.EDQUOT, "quota exceeded")
        self._since_check += len(data)
        if self._since_check >= _SPACE_CHECK_EVERY:
            self._since_check = 0
            if free_bytes(self.name) < self._min_free:
                raise OSError(errno.ENOSPC, "disk nearly full")
        count: int = self._handle.write(data)
        self.written += count
        return count

    def close(self) -> None:
        self._handle.close()


def free_bytes(path: str) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


class SpaceAwareDTP:
    """Data connection: a full disk or an exceeded quota answers 552, not 426."""

    def handle_error(self) -> None:
        exc = _current_exception()
        # pyftpdlib wraps write errors in _FileReadWriteError(err) without copying errno.
        cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "quota exceeded" if cause.errno == errno.EDQUOT else "not enough disk space"
            self._resp = (f"552 Upload stopped: {why}; resume later.", logger.warning)
            self.close()  # type: ignore[attr-defined]
            return
        super().handle_error()  # type: ignore[misc]


class ResetAwareDTP(SpaceAwareDTP):
    """Plain data connection: a TCP reset is an incomplete upload (426), never a 226."""

    _reset = False

    def recv(self, buffer_size: int) -> bytes:
        try:
            data: bytes = self.socket.recv(buffer_size)  # type: ignore[attr-defined]
        except ConnectionResetError:
            self._reset = True
            self.handle_close()
            return b""
        except OSError:
            return super().recv(buffer_size)  # type: ignore[misc, no-any-return]
        if not data:
            self.handle_close()
        return data

    def handle_close(self) -> None:
        if self._reset and self.receive and not self._closed:  # type: ignore[attr-defined]
            self.transfer_finished = False
            self._resp = ("426 Connection reset; upload incomplete.", logger.info)
            self.close()  # type: ignore[attr-defined]
            return
        super().handle_close()  # type: ignore[misc]


def _current_exception() -> BaseException | None:
    import sys

    return sys.exc_info()[1]


class PlainDTP(ResetAwareDTP, DTPHandler):  # type: ignore[misc]
    pass


class HandlerMixin:
    """The policy-enforcing FTP session; mixed into FTPHandler or TLS_FTPHandler."""

    services: Services
    principal: Principal | None = None
    # pyftpdlib's session attributes that this mixin reads and writes (FTPHandler sets them).
    remote_ip: str
    username: str
    _in_buffer: list[bytes]
    _in_buffer_len: int
    _rnfr: str | None
    _restart_position: int
    _upload: str | None = None
    _range: tuple[int, int] | None = None

    # --- connection and login

    def handle(self) -> None:
        ip = self.remote_ip
        if self.services.guard.banned(ip):
            self.services.audit.record("refused", ip=ip, reason="banned")
            self.respond("421 Too many failed logins; try again later.")  # type: ignore[attr-defined]
            self.close_when_done()  # type: ignore[attr-defined]
            return
        super().handle()  # type: ignore[misc]

    _overlong = False

    def collect_incoming_data(self, data: bytes) -> None:
        # pyftpdlib answers an overlong line twice (once when too long, once at its end), which
        # desynchronises clients; drop the whole line and answer once, at its end.
        if self._overlong:
            return
        self._in_buffer.append(data)
        self._in_buffer_len += len(data)
        if self._in_buffer_len > MAX_LINE:
            self._overlong = True
            self._in_buffer = []
            self._in_buffer_len = 0

    def found_terminator(self) -> None:
        if self._overlong:
            self._overlong = False
            self._in_buffer = []
            self._in_buffer_len = 0
            self.respond("500 Command too long.")  # type: ignore[attr-defined]
            return
        super().found_terminator()  # type: ignore[misc]

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if any(c in line for c in "\0\r\n"):
            self.respond("501 NUL, CR and LF are not allowed in commands.")  # type: ignore[attr-defined]
            return
        if cmd.upper() in _REFUSED_COMMANDS or cmd.upper().startswith("SITE"):
            self.respond("502 Command not implemented here.")  # type: ignore[attr-defined]
            return
        super().pre_process_command(line, cmd, arg)  # type: ignore[misc]

    def flush_account(self) -> None:
        super().flush_account()  # type: ignore[misc]
        self.principal = None

    def ftp_PASS(self, line: str) -> None:
        if self.authenticated:  # type: ignore[attr-defined]
            self.respond("503 User already authenticated.")  # type: ignore[attr-defined]
            return
        username: str = self.username
        if not username:
            self.respond("503 Login with USER first.")  # type: ignore[attr-defined]
            return
        services = self.services
        # No more commands are read until the check is answered (as pyftpdlib does for delays).
        self.del_channel()  # type: ignore[attr-defined]
        services.run(lambda: _authenticate(services, username, line), self._login_checked)

    def _login_checked(self, future: Future[Principal | None]) -> None:
        if self._closed:  # type: ignore[attr-defined]
            return
        self.add_channel()  # type: ignore[attr-defined]
        ip = self.remote_ip
        principal = future.result() if future.exception() is None else None
        audit = self.services.audit
        if principal is None:
            audit.record("login-failed", ip=ip, user=self.username)
            self.username = ""
            if self.services.guard.failed(ip):
                audit.record("ban", ip=ip, seconds=self.services.config.ban_seconds)
                self.respond("421 Too many failed logins; banned for a while.")  # type: ignore[attr-defined]
                self.close_when_done()  # type: ignore[attr-defined]
                return
            self.del_channel()  # type: ignore[attr-defined]
            delay = self.services.config.login_failure_delay
            self.ioloop.call_later(delay, self._login_refused, _errback=self.handle_error)  # type: ignore[attr-defined]
            return
        self.services.guard.succeeded(ip)
        self.principal = principal
        home = self.services.layout.root.joinpath(*principal.home)
        audit.record("login", ip=ip, user=principal.name, role=principal.label)
        # The password is not kept: pyftpdlib would store it in the session otherwise.
        self.handle_auth_success(str(home), "", "Logged in.")  # type: ignore[attr-defined]

    def _login_refused(self) -> None:
        if self._closed:  # type: ignore[attr-defined]
            return
        self.add_channel()  # type: ignore[attr-defined]
        self.attempted_logins += 1  # type: ignore[attr-defined]
        if self.attempted_logins >= self.max_login_attempts:  # type: ignore[attr-defined]
            self.respond("530 Authentication failed. Disconnecting.")  # type: ignore[attr-defined]
            self.close_when_done()  # type: ignore[attr-defined]
        else:
            self.respond("530 Authentication failed.")  # type: ignore[attr-defined]

    # --- the policy

    def _rel(self, path: str) -> Parts | None:
        try:
            return self.fs.rel(path)  # type: ignore[attr-defined, no-any-return]
        except FilesystemError:
            return None

    def _allowed(self, op: Op, path: str) -> bool:
        rel = self._rel(path)
        principal = self.principal
        if rel is None or principal is None:
            self.respond("550 No such file or directory.")  # type: ignore[attr-defined]
            return False
        is_dir = Path(path).is_dir() and not Path(path).is_symlink()
        decision = decide(principal, op, rel, is_dir=is_dir)
        if not decision.allowed:
            self.respond(f"550 Not allowed: {decision.reason}.")  # type: ignore[attr-defined]
            return False
        return True

    def ftp_CWD(self, path: str) -> None:
        if self._allowed(Op.CWD, path):
            super().ftp_CWD(path)  # type: ignore[misc]

    def ftp_LIST(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_LIST(path)  # type: ignore[misc]

    def ftp_NLST(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_NLST(path)  # type: ignore[misc]

    def ftp_MLSD(self, path: str) -> None:
        if self._allowed(Op.LIST, path):
            super().ftp_MLSD(path)  # type: ignore[misc]

    def ftp_MLST(self, path: str) -> None:
        if self._allowed(Op.STAT if Path(path).is_file() else Op.LIST, path):
            super().ftp_MLST(path)  # type: ignore[misc]

    def ftp_STAT(self, path: str) -> None:
        if not path or self._allowed(Op.LIST, path):
            super().ftp_STAT(path)  # type: ignore[misc]

    def ftp_SIZE(self, path: str) -> None:
        if self._allowed(Op.STAT, path):
            super().ftp_SIZE(path)  # type: ignore[misc]

    def ftp_MDTM(self, path: str) -> None:
        if self._allowed(Op.STAT, path):
            super().ftp_MDTM(path)  # type: ignore[misc]

    def ftp_RETR(self, path: str) -> None:
        if self._allowed(Op.READ, path):
            super().ftp_RETR(path)  # type: ignore[misc]

    def ftp_DELE(self, path: str) -> None:
        if not self._allowed(Op.DELETE, path):
            return
        if self.services.busy.is_busy(Path(path)):
            self.respond("450 File busy; try again later.")  # type: ignore[attr-defined]
            return
        if super().ftp_DELE(path):  # type: ignore[misc]
            self._record("delete", path)

    def ftp_RNFR(self, path: str) -> None:
        if self._allowed(Op.RENAME_FROM, path):
            super().ftp_RNFR(path)  # type: ignore[misc]

    def ftp_RNTO(self, path: str) -> None:
        source: str | None = self._rnfr
        self._rnfr = None
        if source is None:
            self.respond("503 Bad sequence of commands: use RNFR first.")  # type: ignore[attr-defined]
            return
        if not self._allowed(Op.RENAME_TO, path):
            return
        src, dst = self._rel(source), self._rel(path)
        if src is None or dst is None or not rename_allowed(src, dst):
            self.respond("550 Not allowed: only X.part may be renamed, to X.")  # type: ignore[attr-defined]
            return
        busy = self.services.busy
        if not busy.claim([Path(source), Path(path)]):
            self.respond("450 File busy; try again later.")  # type: ignore[attr-defined]
            return
        try:
            if os.path.lexists(path):
                self.respond("550 Not allowed: the target exists and is never replaced.")  # type: ignore[attr-defined]
                return
            Path(source).rename(path)
        except OSError as exc:
            self.respond(f"550 {exc.strerror}.")  # type: ignore[attr-defined]
            return
        finally:
            busy.release([Path(source), Path(path)])
        self.respond("250 Renaming ok.")  # type: ignore[attr-defined]
        self._record("rename", path, source=Path(source).name)
        self._check_bundle_of(path)

    def _record(self, event: str, path: str, **fields: Any) -> None:
        principal = self.principal
        self.services.audit.record(
            event,
            ip=self.remote_ip,
            user=principal.name if principal else "",
            file=os.path.relpath(path, self.services.layout.root),
            **fields,
        )

    def _check_bundle_of(self, path: str) -> None:
        bundle_id = bundle_id_of(Path(path).name)
        if bundle_id is not None:
            self.services.check_bundle(Path(path).parent, bundle_id)

    # --- uploads

    def ftp_APPE(self, path: str) -> None:
        if self._restart_position:
            self._restart_position = 0
            self.respond("450 Can't APPE while REST request is pending.")  # type: ignore[attr-defined]
            return
        self.ftp_STOR(path, mode="a")

    def ftp_STOR(self, path: str, mode: str = "w") -> None:
        append = "a" in mode
        rest: int = self._restart_position
        self._restart_position = 0
        try:
            info: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            self.respond(f"550 {exc.strerror}.")  # type: ignore[attr-defined]
            return
        if info is not None and not stat.S_ISREG(info.st_mode):
            self.respond("550 Not a regular file.")  # type: ignore[attr-defined]
            return
        size = info.st_size if info is not None else 0
        resuming = info is not None and (append or rest > 0)
        if not self._allowed(Op.RESUME if resuming else Op.CREATE, path):
            return
        if not append and rest == 0 and size > 0:
            self.respond("550 File exists and is never overwritten; resume with REST or APPE.")  # type: ignore[attr-defined]
            return
        if rest > size:
            self.respond(f"554 REST position ({rest}) is past the end of the file ({size}).")  # type: ignore[attr-defined]
            return
        offset = size if append else rest
        budget = self._space_left(path, offset, size)
        if budget is not None and budget <= 0:
            return
        if not self.services.busy.claim([Path(path)]):
            self.respond("450 Another session is writing this file; try again later.")  # type: ignore[attr-defined]
            return
        try:
            handle = _open_for_upload(path, offset, exists=info is not None)
        except OSError as exc:
            self.services.busy.release([Path(path)])
            self.respond(f"550 {exc.strerror}.")  # type: ignore[attr-defined]
            return
        self._release_upload()
        self._upload = path
        upload = UploadFile(
            handle, path, budget=budget, min_free=self.services.config.min_free_bytes
        )
        self._record("upload-started", path, offset=offset)
        cmd = "APPE" if append else "STOR"
        if self.data_channel is not None:  # type: ignore[attr-defined]
            self.respond("125 Data connection already open. Transfer starting.")  # type: ignore[attr-defined]
            self.data_channel.file_obj = upload  # type: ignore[attr-defined]
            self.data_channel.enable_receiving(self._current_type, cmd)  # type: ignore[attr-defined]
        else:
            self.respond("150 File status okay. About to open data connection.")  # type: ignore[attr-defined]
            self._in_dtp_queue = (upload, cmd)

    def _space_left(self, path: str, offset: int, size: int) -> int | None:
        """Bytes this upload may still write (None: no quota); answers 552 when there are none."""
        config = self.services.config
        if free_bytes(str(Path(path).parent)) < config.min_free_bytes:
            self.respond("552 Not enough disk space on the server; resume later.")  # type: ignore[attr-defined]
            return 0
        principal = self.principal
        if not config.quota_bytes or principal is None or principal.role is not Role.SENDER:
            return None
        area = Path(path).parent
        used = sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(area))
        budget = config.quota_bytes - (used - (size - offset))
        if budget <= 0:
            self.respond("552 Quota exceeded; delete .part files or wait for publishing.")  # type: ignore[attr-defined]
            return 0
        return budget

    def _release_upload(self) -> None:
        if self._upload is not None:
            self.services.busy.release([Path(self._upload)])
            self._upload = None

    def on_file_received(self, file: str) -> None:
        self._upload_ended(file, complete=True)

    def on_incomplete_file_received(self, file: str) -> None:
        self._upload_ended(file, complete=False)

    def _upload_ended(self, file: str, *, complete: bool) -> None:
        self._release_upload()
        services, ip = self.services, self.remote_ip
        user = self.principal.name if self.principal else ""
        relative = os.path.relpath(file, services.layout.root)
        event = "upload-completed" if complete else "upload-incomplete"

        def work() -> None:
            # "completed" only means the socket closed cleanly; the bundle check decides.
            size = os.lstat(file).st_size
            digest, _, _ = services.hashes.digest(Path(file))
            services.audit.record(event, ip=ip, user=user, file=relative, bytes=size, sha256=digest)

        def then(future: Future[None]) -> None:
            if future.exception() is not None:
                logger.warning("after upload of %s: %r", relative, future.exception())
            self._check_bundle_of(file) if self.services else None

        services.run(work, then)

    def on_file_sent(self, file: str) -> None:
        self._record("download", file, complete=True)

    def on_incomplete_file_sent(self, file: str) -> None:
        self._record("download", file, complete=False)

    def close(self) -> None:
        self._release_upload()
        super().close()  # type: ignore[misc]

    # --- HASH (draft-bryan-ftpext-hash): SHA-256 only, optional RANG

    def ftp_FEAT(self, line: str) -> None:
        if "HASH SHA-256*" not in self._extra_feats:  # type: ignore[has-type]
            self._extra_feats = [*self._extra_feats, "HASH SHA-256*", "RANG STREAM"]  # type: ignore[has-type]
        super().ftp_FEAT(line)  # type: ignore[misc]

    def ftp_OPTS(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd.upper() != "HASH":
            super().ftp_OPTS(line)  # type: ignore[misc]
        elif arg.strip().upper() in ("", "SHA-256"):
            self.respond("200 SHA-256")  # type: ignore[attr-defined]
        else:
            self.respond("504 Only SHA-256 is supported.")  # type: ignore[attr-defined]

    def ftp_RANG(self, line: str) -> None:
        try:
            start, end = (int(x) for x in line.split())
            if start < 0 or end < start:
                raise ValueError
        except ValueError:
            self.respond("501 Syntax: RANG <start> <end> (bytes, end included).")  # type: ignore[attr-defined]
            return
        self._range = (start, end)
        self.respond(f"350 Restarting at {start}. Ending byte range at {end}.")  # type: ignore[attr-defined]

    def ftp_HASH(self, path: str) -> None:
        byte_range, self._range = self._range, None
        if not self._allowed(Op.STAT, path):
            return
        if Path(path).is_symlink() or not Path(path).is_file():
            self.respond("550 Not a regular file.")  # type: ignore[attr-defined]
            return
        start, end = byte_range if byte_range else (0, None)
        stop = None if end is None else end + 1
        shown = self.fs.fs2ftp(path)  # type: ignore[attr-defined]
        hashes = self.services.hashes
        self.del_channel()  # type: ignore[attr-defined]

        def answer(future: Future[tuple[str, int, int]]) -> None:
            if self._closed:  # type: ignore[attr-defined]
                return
            self.add_channel()  # type: ignore[attr-defined]
            if future.exception() is not None:
                self.respond("550 Cannot hash this file.")  # type: ignore[attr-defined]
                return
            digest, first, last = future.result()
            self.respond(f"213 SHA-256 {first}-{max(last - 1, first)} {digest} {shown}")  # type: ignore[attr-defined]

        self.services.run(lambda: hashes.digest(Path(path), start, stop), answer)


def _open_for_upload(path: str, offset: int, *, exists: bool) -> Any:
    """Open for writing at ``offset``, the file cut there: a resume never keeps an old tail."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if not exists else 0)
    fd = os.open(path, flags, 0o640)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Not a regular file")
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _authenticate(services: Services, username: str, password: str) -> Principal | None:
    """On a worker thread: scrypt is slow on purpose."""
    mode = services.config.anonymous
    if username.lower() in ANONYMOUS:
        return Principal("anonymous", None, mode) if mode is not AnonymousMode.OFF else None
    user = services.users.get(username) if username.isascii() else None
    if user is None:
        _DUMMY_HASH.matches(password)
        return None
    if not user.password.matches(password):
        return None
    if user.role is Role.SENDER:
        area = services.layout.sender_area(user.name)
        area.mkdir(mode=0o755, exist_ok=True)
    return Principal(user.name, user.role)


_NEW_COMMANDS = {
    "HASH": {"perm": None, "auth": True, "arg": True, "help": "Syntax: HASH <SP> file-name"},
    "RANG": {"perm": None, "auth": True, "arg": True, "help": "Syntax: RANG <SP> start end"},
}


def _commands(base: dict[str, Any]) -> dict[str, Any]:
    table = {k: v for k, v in base.items() if k not in _REFUSED_COMMANDS}
    table.update(_NEW_COMMANDS)
    # HASH and RANG take a path or numbers the handler parses itself; path commands go through
    # pyftpdlib's ftp2fs/validpath because they carry a permission letter.
    table["HASH"] = {**table["HASH"], "perm": "l"}
    return table


def handler_class(services: Services) -> type:
    config = services.config
    base: type = FTPHandler
    dtp: type = PlainDTP
    attributes: dict[str, Any] = {}
    if config.tls is not TlsMode.OFF:
        from OpenSSL import SSL
        from pyftpdlib.handlers import TLS_FTPHandler
        from pyftpdlib.handlers.ftps.data import TLS_DTPHandler

        class TlsDTP(SpaceAwareDTP, TLS_DTPHandler):  # type: ignore[misc]
            pass

        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.use_certificate_chain_file(str(services.layout.tls_cert))
        context.use_privatekey_file(str(services.layout.tls_key))
        base, dtp = TLS_FTPHandler, TlsDTP
        required = config.tls is TlsMode.REQUIRED
        attributes |= {
            "ssl_context": context,
            "tls_control_required": required,
            "tls_data_required": required,
        }
    dtp_class = type("AirgapDTP", (dtp,), {"timeout": config.data_timeout})
    attributes |= {
        "services": services,
        "authorizer": Authorizer(),
        "abstracted_fs": AirgapFS,
        "dtp_handler": dtp_class,
        "proto_cmds": _commands(base.proto_cmds),  # type: ignore[attr-defined]
        "timeout": config.idle_timeout,
        "banner": "airgap drop box ready.",
        "max_login_attempts": 3,
        "permit_foreign_addresses": False,
        "permit_privileged_ports": False,
        "masquerade_address": config.masquerade_address,
        "passive_ports": range(config.passive_ports[0], config.passive_ports[1] + 1),
        "use_sendfile": False,
    }
    return type("AirgapHandler", (HandlerMixin, base), attributes)


def make_server(services: Services, ioloop: Any) -> Any:
    server = FTPServer(
        (services.config.host, services.config.port), handler_class(services), ioloop=ioloop
    )
    server.max_cons = services.config.max_connections
    server.max_cons_per_ip = services.config.max_connections_per_ip
    return server


def new_ioloop() -> Any:
    return IOLoop.factory()
