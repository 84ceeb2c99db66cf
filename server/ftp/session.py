"""One control connection: bans, hostile lines, logins off the loop, and the policy per command.

Every command that names a path asks :func:`airgap.server.policy.decide` first (``_allowed``),
with the path made relative to the root by :class:`~airgap.server.ftp.fs.AirgapFS`; the file
commands that do so are in :mod:`~airgap.server.ftp.files`, uploads and HASH in their own.
Logins are checked on a worker thread; until the answer comes back the session reads no more
input, and the lines a client sent ahead in the same packets wait, a few at most, to run one by
one after it (a packet of 2,000 PASS lines is one check, not 2,000). PASS lines never reach
the audit log, and pyftpdlib is never handed the password to keep. A logged-in session whose
account ``airgap user`` changed or removed since its login is ended at its next command. A
client that does not read its replies is disconnected rather than have them pile up in memory.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from airgap.server.ftp.base import SessionAPI
from airgap.server.ftp.loop import Services
from airgap.server.login import Login, authenticate
from airgap.server.policy import Op, Principal, decide
from airgap.server.users import User
from airgap.shared.ids import bundle_id_of

logger = logging.getLogger("airgap.server")
_GONE = object()  # what a check skipped for a client that has gone returns

MAX_LINE = 2048
#: Seconds a connection has to log in (``--idle-timeout`` if shorter): one that never does must
#: not hold a connection slot for the idle timeout's five minutes.
LOGIN_WINDOW = 60.0
#: Lines a client may send ahead while a login or HASH is being checked; more closes it.
MAX_HELD_LINES = 16
#: Replies a client may leave unread (each a push; the longest is HELP's kilobyte or so).
MAX_UNREAD_REPLIES = 512
REFUSED_COMMANDS = ("MKD", "XMKD", "RMD", "XRMD", "STOU", "SITE CHMOD", "MFMT", "SITE")


def _log_failure() -> None:
    logger.exception("a timer failed")


class Session(SessionAPI):
    """The policy-enforcing FTP session; mixed in before FTPHandler or TLS_FTPHandler."""

    services: Services
    principal: Principal | None = None
    _account: User | None = None  # what the password matched at login; None: anonymous
    _overlong = False
    _held: deque[bytes | None] | None = None  # while a check runs: lines not yet run
    _login_by = 0.0  # the monotonic time by which the connection must have logged in
    _ending = False  # told 421 and closing: lines still in the buffer get nothing more
    _secured: object = None  # a new object each time AUTH TLS switches the connection
    _counted: str | None = None  # the account whose session count this login holds

    # --- connection and command lines

    def handle(self) -> None:
        # pyftpdlib's own max_cons counts every socket on the loop (listener, data channels);
        # the configured limit counts control connections, this one included.
        if len(self.server.ip_map) > self.services.config.max_connections:
            self.handle_max_cons()
            return
        if self.services.guard.banned(self.remote_ip):
            self._refuse_banned()
            return
        self._login_by = time.monotonic() + self._login_window()
        super().handle()
        if not self._closed:  # its own timer: cancelled when the connection closes
            self.call_later(self._login_window(), self._login_due, _errback=_log_failure)

    def _login_window(self) -> float:
        return min(float(self.services.config.idle_timeout), LOGIN_WINDOW)

    def _login_due(self) -> None:
        """The window to log in is over: closed unless logged in (or it opened again since,
        with REIN or USER: then at that window's end)."""
        if self._closed or self._ending or self.authenticated:
            return
        if (left := self._login_by - time.monotonic()) > 0 or self._checking():
            # A PASS in time being checked (or waiting out a failure's delay) is answered by
            # its check, not cut off: look again a little later.
            self.call_later(max(left, 1.0), self._login_due, _errback=_log_failure)
            return
        self._no_login()

    def _refuse_banned(self) -> None:
        # Not a record each: a banned client looping on connect would fill the disk with them.
        if count := self.services.guard.refused(self.remote_ip):
            self.services.audit.record("refused", ip=self.remote_ip, reason="banned", count=count)
        self.respond("421 Too many failed logins; try again later.")
        self.close_when_done()

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
        if self._closed:  # dropped mid-read: the rest of what was read goes unanswered
            return
        if self._ending:  # told 421: nothing more is answered, an overlong line neither
            self._in_buffer, self._in_buffer_len, self._overlong = [], 0, False
            return
        line: bytes | None = None if self._overlong else b"".join(self._in_buffer)
        self._overlong = False
        self._in_buffer = []
        self._in_buffer_len = 0
        if self._held is not None:
            if len(self._held) >= MAX_HELD_LINES:
                self._drop("commands sent ahead of a check")
                return
            self._held.append(line)
            return
        self._run(line)

    def _run(self, line: bytes | None) -> None:
        """Answer one command line (None: one too long to keep)."""
        if line is None:
            self.respond("500 Command too long.")
            return
        self._in_buffer, self._in_buffer_len = [line], len(line)
        super().found_terminator()

    def push(self, data: bytes) -> None:
        if self._closed:
            return
        if len(self.producer_fifo) >= MAX_UNREAD_REPLIES:
            self._drop("replies not read")
            return
        super().push(data)

    def _drop(self, reason: str) -> None:
        if self._closed:
            return
        ip = self.remote_ip
        self.services.audit.record("refused", ip=ip, reason=reason)
        # Before a login it counts as a failed one: a loop of these ends in a ban.
        if not self.authenticated and (until := self.services.guard.failed(ip, self.username)):
            self._banned(until)
        self.close()

    def _check(
        self,
        work: Callable[[], Any],
        answer: Callable[[Future[Any]], None],
        *,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        """Run ``work`` on a worker thread (of ``pool``, else the hashing one), then ``answer``
        on the loop; no command runs in between, whatever the client sends ahead. ``answer``
        calls :meth:`_resume` once it has replied (or closes the session)."""
        self.del_channel()
        self._held = deque()

        def job() -> Any:
            if self._closed or self._peer_gone():  # a client gone costs no scrypt, no hashing
                return _GONE
            return work()

        def done(future: Future[Any]) -> None:
            if self._closed:
                return
            if future.exception() is None and future.result() is _GONE:
                self.close()
                return
            self.add_channel()
            answer(future)

        self.services.run(job, done, pool=pool)

    def _peer_gone(self) -> bool:
        """Whether the client closed its side (the loop does not read while a check waits)."""
        try:  # a copy of the descriptor: the socket may be pyOpenSSL's, which cannot peek
            with socket.socket(fileno=os.dup(self.socket.fileno())) as peer:
                ahead = peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset, or closed meanwhile
            return True
        return ahead == b""

    def _resume(self) -> None:
        """After a check's reply: read again, and run the lines that came meanwhile, in order,
        until one starts another check (which then holds the rest). A line that fails ends
        the session, as it would have unheld."""
        held, self._held = self._held or deque(), None
        partial = self._in_buffer, self._in_buffer_len  # the start of a line not ended yet
        secured = self._secured
        try:
            while held and not self._closed and not self._checking():
                self._run(held.popleft())
                if self._secured is not secured:  # AUTH TLS ran: what came in clear behind
                    held.clear()  # it is dropped (see protection.DataProtection.ftp_AUTH)
                    partial = [], 0
        except Exception:
            self.handle_error()
            return
        if held and self._checking():  # the rest waits for that check
            self._keep_ahead(held)
        self._in_buffer, self._in_buffer_len = partial

    def _checking(self) -> bool:
        return self._held is not None

    def _keep_ahead(self, lines: deque[bytes | None]) -> None:
        if self._held is not None:
            self._held.extendleft(reversed(lines))

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if self._ending:  # one 421 and one audit record, not one for each line sent ahead
            return
        if any(c in line for c in "\0\r\n"):
            self.respond("501 NUL, CR and LF are not allowed in commands.")
            return
        if cmd.upper() in REFUSED_COMMANDS or cmd.upper().startswith("SITE"):
            self.respond("502 Command not implemented here.")
            return
        if self._login_overdue() or self._account_changed():
            return
        super().pre_process_command(line, cmd, arg)

    def _login_overdue(self) -> bool:
        """A connection has :data:`LOGIN_WINDOW` seconds to log in, however much it says
        meanwhile: the idle timer alone, which every command restarts, let a NOOP a minute hold
        a connection slot for ever without an account. Checked as each command comes, and by a
        timer for one that says nothing."""
        if self.authenticated or time.monotonic() < self._login_by:
            return False
        self._no_login()
        return True

    def _no_login(self) -> None:
        self._count_no_login()
        self.respond("421 No login in time; closing control connection.")
        self._ending = True
        self.close_when_done()

    def _count_no_login(self) -> None:
        """Audited, and counted as a failed login: connections from a few addresses that never
        log in would otherwise hold every slot, unbanned, one window after another."""
        ip = self.remote_ip
        self.services.audit.record("refused", ip=ip, reason="no login in time")
        if until := self.services.guard.failed(ip, self.username):
            self._banned(until)

    def handle_timeout(self) -> None:
        """One silent from the start is refused for the same reason as one that talked."""
        if not self.authenticated and not self._ending:
            self._count_no_login()
            self._ending = True  # counted once, whichever timer came first
        super().handle_timeout()

    def _account_changed(self) -> bool:
        """End the session if ``airgap user`` changed or removed its account since its login."""
        account = self._account
        if not self.authenticated or account is None:
            return False
        reason = self.services.accounts.change_of(account)
        if reason is None:
            return False
        self.services.audit.record("logout", ip=self.remote_ip, user=account.name, reason=reason)
        self.respond(f"421 Logged out: {reason} since this login.")
        self._ending = True
        self.close_when_done()
        return True

    # --- login

    def ftp_USER(self, line: str) -> None:
        if not self._moving():
            super().ftp_USER(line)

    def ftp_REIN(self, line: str) -> None:
        if not self._moving():
            super().ftp_REIN(line)

    def _moving(self) -> bool:
        """A logout while data moves is refused: the transfer would go on (RFC 959 says so)
        and end recorded under the next login's name, or none."""
        channel = self.data_channel
        if not self.authenticated or channel is None or not channel.transfer_in_progress():
            return False
        self.respond("503 A transfer is under way; log in again once it has ended.")
        return True

    def flush_account(self) -> None:
        super().flush_account()
        self._give_back_session()
        self.principal = None
        self._account = None
        # Logged out (REIN, or USER again): as if it had just connected.
        self._login_by = time.monotonic() + self._login_window()
        if not self._closed:
            self.call_later(self._login_window(), self._login_due, _errback=_log_failure)

    def ftp_PASS(self, line: str) -> None:
        if self.authenticated:
            self.respond("503 User already authenticated.")
            return
        username = self.username
        if not username:
            self.respond("503 Login with USER first.")
            return
        services, ip = self.services, self.remote_ip
        # Checked here too, not only when the connection opened: connections opened before a
        # ban would otherwise go on guessing through it.
        if services.guard.banned(ip):
            self._refuse_banned()
            return

        def check() -> Login | None:
            if services.guard.banned(ip):  # banned while this waited for a worker: no check
                return None
            return authenticate(
                username,
                line,
                users=services.users,
                layout=services.layout,
                anonymous=services.config.anonymous,
            )

        self._check(check, self._login_checked, pool=services.logins)

    def _login_checked(self, future: Future[Login | None]) -> None:
        ip = self.remote_ip
        audit = self.services.audit
        if (failure := future.exception()) is not None:  # the server's fault, not the client's
            logger.error("login of %r: %s", self.username, failure)
            audit.record("refused", ip=ip, user=self.username, reason="server error")
            self.respond("421 This account cannot be served now; tell the operator.")
            self.close_when_done()
            return
        if self.services.guard.banned(ip):  # banned meanwhile, by another connection
            self._refuse_banned()
            return
        login = future.result()
        if login is None:
            audit.record("login-failed", ip=ip, user=self.username)
            name, self.username = self.username, ""
            if (until := self.services.guard.failed(ip, name)) is not None:
                self._banned(until)
                self.respond("421 Too many failed logins; banned for a while.")
                self.close_when_done()
                return
            self.del_channel()
            delay = self.services.config.login_failure_delay
            self.ioloop.call_later(delay, self._login_refused, _errback=self.handle_error)
            return
        self.services.guard.succeeded(ip, self.username)
        # Anonymous is anyone: counted per address, not one place for every client of it.
        counted = login.principal.name if login.account else f"anonymous from {ip}"
        if not self.services.sessions.take(counted):
            self._too_many_sessions(login.principal.name)
            return
        self._counted = counted
        principal = self.principal = login.principal
        self._account = login.account
        home = self.services.layout.root.joinpath(*principal.home)
        audit.record("login", ip=ip, user=principal.name, role=principal.label)
        # The password is not kept: pyftpdlib would store it in the session otherwise.
        # The role in the reply lets a client tell a mistaken account (receiving as a sender).
        said = f"Logged in as a {principal.label}." if principal.role else "Logged in."
        self.handle_auth_success(str(home), "", said)
        self._resume()

    def _too_many_sessions(self, name: str) -> None:
        """The password was right, but the account has every session it may: no login, and
        no failure counted against the address. A client retries later."""
        self.services.audit.record("refused", ip=self.remote_ip, user=name, reason="sessions")
        limit = self.services.sessions.limit
        self.respond(f"421 This account has its {limit} sessions already; try again later.")
        self._ending = True
        self._held = None  # lines sent ahead now go unanswered, not count as a failed login
        self.close_when_done()

    def _give_back_session(self) -> None:
        if (name := self._counted) is not None:
            self._counted = None
            self.services.sessions.give_back(name)

    def close(self) -> None:
        self._give_back_session()
        super().close()

    def handle_error(self) -> None:
        super().handle_error()
        # pyftpdlib's TLS handler closes on an error (a bad TLS record, say) from its own
        # class, past every close() of ours: what they give back (a session's place, an
        # upload's claim on its file) would stay taken until the server restarts.
        self.close()

    def _banned(self, until: float) -> None:
        services, ip = self.services, self.remote_ip
        services.audit.record("ban", ip=ip, seconds=services.config.ban_seconds)

        def over() -> None:  # the refusals of its last minute, which no record counted yet
            if count := services.guard.ban_over(ip, until):
                services.audit.record("refused", ip=ip, reason="banned", count=count)

        self.ioloop.call_later(services.config.ban_seconds, over, _errback=_log_failure)

    def _login_refused(self) -> None:
        if self._closed:
            return
        self.add_channel()
        self.attempted_logins += 1
        if self.attempted_logins >= self.max_login_attempts:
            self.respond("530 Authentication failed. Disconnecting.")
            self.close_when_done()
        else:
            self.respond("530 Authentication failed.")
            self._resume()

    # --- the policy

    def _allowed(self, op: Op, path: str) -> bool:
        rel = self.fs.rel(path)
        principal = self.principal
        if rel is None or principal is None:
            self.respond("550 No such file or directory.")
            return False
        try:
            is_dir = Path(path).is_dir() and not Path(path).is_symlink()
        except OSError:  # a name too long for the file system, say
            self.respond("550 No such file or directory.")
            return False
        decision = decide(principal, op, rel, is_dir=is_dir)
        if not decision.allowed:
            self.respond(f"550 Not allowed: {decision.reason}.")
            return False
        return True

    # --- shared by the command mixins

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
