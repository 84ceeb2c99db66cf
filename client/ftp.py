"""The FTP(S) drop box as a transport: the one module of the client that talks to ftplib.

``FtpTransport`` implements the transport operations over one control connection to a working
directory (the URL's path): NLST, SIZE, RETR from an offset, STOR from an offset (REST + STOR,
or APPE where a server refuses REST before STOR), RNFR/RNTO and DELE, plus the HASH extension
where the server offers it. With ``ftps://`` it speaks explicit TLS (AUTH TLS, PROT P), and a
pinned SHA-256 certificate fingerprint is checked before the password is sent, and again on
every data connection. Passive mode only, and the data address is always the control
connection's host, whatever PASV says. Replies and listings are bounded in size and time, and
one the client cannot parse is a transfer error: the server is not trusted either.

It never retries: deciding what to do after a failure is the caller's business.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ftplib
import hashlib
import hmac
import io
import re
import socket
import ssl
import sys
import termios
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from airgap.client.transport import MAX_LISTING
from airgap.shared.errors import (
    AirgapError,
    CertificateMismatch,
    LoginError,
    TransferError,
    UsageError,
)
from airgap.shared.pipeline import interrupted

DEFAULT_TIMEOUT = 60.0
#: How long an upload whose data connection broke waits for the server to say why.
REFUSAL_WAIT = 2.0
#: A download read returns once it has this much, or the end of the file.
FILL = 1 << 20
#: What ftplib raises when the connection, not the server, fails us.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (*ftplib.all_errors, EOFError)
#: No reply after a broken upload, or one that makes no sense.
_UNSAID: tuple[type[BaseException], ...] = (*NETWORK_ERRORS, ValueError)
#: The most a reply may hold, all its lines (ftplib caps only each line, at 8 KiB).
MAX_REPLY = 64 << 10
#: A download that brings fewer bytes than this in a whole timeout has stalled: a server can
#: send a byte now and then to defeat a timeout on each read. Far below any real link.
STALL_BYTES = 1024
#: How airgap serve names the account at login; other servers say nothing of the kind.
_ROLE = re.compile(r"230 Logged in as a (sender|receiver)\.")


@dataclass(frozen=True)
class FtpTarget:
    scheme: str  # "ftp" or "ftps"
    host: str
    port: int
    user: str
    path: str

    @classmethod
    def parse(cls, url: str) -> FtpTarget:
        if _password_in(url):  # first: no message below may quote it
            raise _password_refused()
        try:
            parts = urlsplit(url)
            if parts.password is not None:  # after a user name holding an "@"
                raise _password_refused()
            port = parts.port
        except ValueError as exc:  # a port out of range, an unclosed [ ...
            raise UsageError(f"{_shown(url)!r} is not a valid URL ({exc})") from exc
        if parts.scheme not in ("ftp", "ftps") or not parts.hostname:
            raise UsageError(
                f"{_shown(url)!r} is not an ftp:// or ftps:// URL",
                hint="write it as ftps://USER@HOST:PORT/ (ftp:// for a server without TLS)",
            )
        if "?" in url or "#" in url:  # "ftp://a#b@h/" would be host "a"; a query means nothing
            raise UsageError(
                f"{_shown(url)!r}: an ftp:// URL has no query or fragment",
                hint="write a ? in a name or path as %3F, a # as %23",
            )
        return cls(
            parts.scheme,
            parts.hostname,
            port or 21,
            unquote(parts.username or ""),  # none given: see credentials.login_for
            unquote(parts.path) or "/",
        )

    def same(self, other: FtpTarget) -> bool:
        """Whether both name one account and folder: ``ftps://u@h:21`` is ``ftps://u@H/``."""
        return (self.scheme, self.host, self.port, self.user, self.path.rstrip("/")) == (
            other.scheme,
            other.host,
            other.port,
            other.user,
            other.path.rstrip("/"),
        )

    @property
    def address(self) -> str:
        """``HOST:PORT``, an IPv6 host in brackets, as a URL writes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        user = self.user or "anonymous"
        return f"{self.scheme}://{user}@{self.host}:{self.port}{self.path}"


def same_server(url: str, other: str | None) -> bool:
    """Whether two drop box URLs name one account and folder (a URL that does not parse is
    only itself: its use says what is wrong with it)."""
    if other is None:
        return False
    try:
        return FtpTarget.parse(url).same(FtpTarget.parse(other))
    except UsageError:
        return url == other


def _password_in(url: str) -> bool:
    """Whether ``url`` may hold a password: a ``:`` in what precedes its last ``@``, before
    any other ``@``. Stricter than urlsplit, which ends the user part at a ``/``, ``?`` or
    ``#`` and so misses a password holding one (and a malformed URL's altogether); a path
    with an ``@`` after a port is refused too, which no drop box needs."""
    rest = url.partition("//")[2] if "//" in url else url.partition(":")[2]
    userinfo = rest.rpartition("@")[0]
    return ":" in userinfo.partition("@")[0]


def _password_refused() -> UsageError:
    return UsageError(
        "a password in the URL would show in the process list and shell history",
        hint="use AIRGAP_PASSWORD, ~/.netrc or the prompt (an @ in a path is written %40)",
    )


def _shown(url: str) -> str:
    """``url`` as an error may quote it: nothing before its last ``@`` (where a user name
    and a password would be)."""
    if "@" not in url:
        return url
    scheme = url.partition("//")[0] + "//" if "//" in url else ""
    return f"{scheme}...@{url.rpartition('@')[2]}"


class _Bounded(ftplib.FTP):
    """ftplib with a bound on a reply: at most :data:`MAX_REPLY` bytes, whole within the
    timeout. ftplib reads the lines of a multi-line reply for as long as they come (a hostile
    greeting grew a client to 4.8 GB in 12 s, before login or TLS), and reads a line through
    a file whose every byte restarts the socket's timeout (a byte a minute held one line for
    days). Lines are read here from the socket itself, against the reply's deadline."""

    _pending = b""  # received after the last line handed out
    _deadline = 0.0

    def getmultiline(self) -> str:
        self._deadline = time.monotonic() + (self.timeout or DEFAULT_TIMEOUT)
        line = self.getline()
        if line[3:4] == "-":
            code = line[:3]
            while True:
                if len(line) > MAX_REPLY:
                    raise ftplib.error_proto("a reply too long or too slow")
                more = self.getline()
                line += "\n" + more
                if more[:3] == code and more[3:4] != "-":
                    break
        return line

    def getline(self) -> str:
        while (end := self._pending.find(b"\n")) < 0 and len(self._pending) <= self.maxline:
            self._pending += self._receive()
        if not 0 <= end <= self.maxline:  # no end of line within ftplib's bound on one
            raise ftplib.Error(f"got more than {self.maxline} bytes")
        raw, self._pending = self._pending[: end + 1], self._pending[end + 1 :]
        line = raw.decode(self.encoding)  # strict, as ftplib's file: see _errors
        return line[:-2] if line.endswith("\r\n") else line[:-1]

    def _receive(self) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise ftplib.error_proto("a reply too long or too slow")
        sock = self.sock
        if sock is None:  # closed meanwhile
            raise EOFError
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 14)
        except TimeoutError:
            raise ftplib.error_proto("a reply too long or too slow") from None
        finally:
            sock.settimeout(self.timeout)
        if not data:
            raise EOFError
        return data


class _PinnedTLS(_Bounded, ftplib.FTP_TLS):
    """FTP_TLS that reuses the control connection's TLS session on data connections (vsftpd
    and others require it), checks each one's certificate against the pin too (else a man in
    the middle of a data connection reads listings, manifests and payloads), and never trusts
    the address in a PASV reply."""

    def __init__(self, *, pin: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(context=context, timeout=timeout)
        self.pin = pin

    def auth(self) -> str:
        """Whatever followed the reply to AUTH TLS came in clear: it is never read as a reply."""
        reply = super().auth()
        self._pending = b""
        return reply

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            try:
                conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
                pinned = _pinned(conn, self.pin)
            except BaseException:
                conn.close()
                raise
            if not pinned:
                conn.close()
                raise CertificateMismatch(
                    "the data connection's TLS certificate does not match the pinned fingerprint"
                )
        return conn, size


#: How much of a server's refusal an error message quotes.
SAID = 300


def _said(exc: ftplib.Error) -> str:
    """A server's reply as one line, cut short: the lines of a multi-line reply, printed as
    they come, could pass for airgap's own ("fetched ...", "airgap: hint: ...")."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= SAID else text[: SAID - 3] + "..."


def _pinned(sock: socket.socket | None, pin: str) -> bool:
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    return bool(der) and hmac.compare_digest(fingerprint(der or b""), pin)


def _no_delay(sock: socket.socket) -> None:
    """Small writes go out at once: a manifest's upload waited ~44 ms on Nagle's algorithm
    and the server's delayed ACK, twice per send (measured: 0.59 s -> 0.52 s for a 5 MB image)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_pin(target: FtpTarget, pin: str | None) -> None:
    """Refuse an ftps:// URL without a pin, or a pin that cannot be one, before anything
    connects (or asks for a password)."""
    if target.scheme == "ftps" and pin is None:
        raise UsageError(
            "ftps:// needs the appliance's certificate fingerprint",
            hint="pass --tls-fingerprint sha256:... as airgap serve printed it",
        )
    check_fingerprint(pin)


def is_fingerprint(pin: str) -> bool:
    return re.fullmatch(r"sha256:[0-9a-f]{64}", pin, re.IGNORECASE) is not None


def check_fingerprint(pin: str | None) -> None:
    """Refuse a pin that cannot be one."""
    if pin is not None and not is_fingerprint(pin):
        raise UsageError(
            f"--tls-fingerprint {pin!r} is not sha256: and 64 hex digits",
            hint="copy it whole from what airgap serve printed",
        )


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


class FtpTransport:
    def __init__(
        self,
        target: FtpTarget,
        password: str,
        *,
        pin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        check_pin(target, pin)
        self.target = target
        self._password = password
        self._pin = pin.lower() if pin else None
        self._timeout = timeout
        self._ftp: ftplib.FTP | None = None
        self._features: set[str] | None = None
        self._reached = False  # a connection to the server was once made
        self.role: str | None = None  # what our appliance says the account is

    def describe(self) -> str:
        return self.target.describe()

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> ftplib.FTP:
        if self._ftp is not None:
            return self._ftp
        ftp = self._client()
        try:
            with self._errors("connecting", login=True):
                self._dial(ftp)
                if ftp.sock is not None:
                    _no_delay(ftp.sock)
                if isinstance(ftp, ftplib.FTP_TLS):
                    ftp.auth()
                    self._check_pin(ftp)
                    welcome = ftp.login(self.target.user, self._password)
                    ftp.prot_p()
                else:
                    welcome = ftp.login(self.target.user, self._password)
                role = _ROLE.match(welcome)
                self.role = role.group(1) if role else None
                ftp.cwd(self.target.path)
        except BaseException:
            ftp.close()
            raise
        self._ftp = ftp
        return ftp

    def _dial(self, ftp: ftplib.FTP) -> None:
        """Open the control connection. Where this transport never reached the server, a
        connection refused, unroutable or unanswered is :class:`Unreachable`: nothing serves
        there (a server down, a wrong host or port), and waiting would only delay saying so
        (curl, too, retries no refused connection unless told). Once reached, the same is a
        server restarting or a network that dropped, and may pass."""
        try:
            ftp.connect(self.target.host, self.target.port)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no answer in {self._timeout:g} s"
            elif exc.errno in _UNREACHABLE and exc.strerror:
                reason = exc.strerror[:1].lower() + exc.strerror[1:]
            else:
                raise
            kind = TransferError if self._reached else Unreachable
            raise kind(
                f"connecting: nothing answers at {self.target.address} ({reason})",
                hint="check the host and port in the URL, and that the server is running there",
            ) from exc
        self._reached = True

    def _client(self) -> ftplib.FTP:
        if self.target.scheme == "ftp":
            return _Bounded(timeout=self._timeout)
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The appliance's certificate is self-signed: trust comes from the pin, checked
        # in _check_pin before the password is sent.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return _PinnedTLS(pin=self._pin or "", context=context, timeout=self._timeout)

    def _check_pin(self, ftp: ftplib.FTP_TLS) -> None:
        if not _pinned(ftp.sock, self._pin or ""):
            raise CertificateMismatch(
                f"{self.target.host}: TLS certificate does not match the pinned fingerprint",
                hint="check --tls-fingerprint against what airgap serve printed",
            )

    def close(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is None:
            return
        if interrupted():  # Ctrl-C: no goodbye, and another thread may be dropping it too
            with contextlib.suppress(OSError, AttributeError):
                ftp.close()
            return
        try:
            ftp.quit()
        except NETWORK_ERRORS:
            ftp.close()

    @contextmanager
    def _errors(self, what: str, *, login: bool = False) -> Iterator[None]:
        """FTP failures as airgap errors. A refusal (a 5xx, such as "550 SSL/TLS required")
        stands: it is not transient, as asking again won't change it; with ``login``, it is
        a :class:`LoginError`."""
        try:
            yield
        except ftplib.error_perm as exc:
            text = _said(exc)
            if text.startswith("530"):
                login_hint = (
                    "check the user name and the password (AIRGAP_PASSWORD, ~/.netrc or the "
                    "configured password_file)"
                )
                if self.target.user == "anonymous":  # as a URL without USER@ logs in (review)
                    login_hint = (
                        "the login was anonymous's, as neither the URL nor ~/.netrc names an "
                        f"account: name one, as in {self.target.scheme}://USER@"
                        f"{self.target.address}/"
                    )
                raise LoginError(
                    f"{self.describe()}: login refused ({text})", hint=login_hint
                ) from exc
            if text.startswith("552"):
                quota = "quota" in text.lower()
                raise DropBoxFull(
                    f"{what}: the drop box is full or over quota ({text})",
                    hint="ask the appliance's operator for "
                    + ("a larger --quota-bytes" if quota else "more free disk space"),
                ) from exc
            if text.startswith(("522", "500 OOPS")):  # a data connection's TLS failed, or
                self._drop()  # vsftpd's own trouble (out of passive ports): they may pass
                raise TransferError(f"{what}: {text}") from exc
            if login and not _refusal_hint(text):
                hint = "use ftps://" if self.target.scheme == "ftp" and "TLS" in text else None
                if self.target.scheme == "ftps" and "AUTH" in text:
                    hint = "this server offers no TLS: use ftp://, or have TLS turned on there"
                raise LoginError(f"{what}: refused by the server ({text})", hint=hint) from exc
            raise _refused(what, text) from exc
        except CertificateMismatch as exc:
            self._drop()
            raise CertificateMismatch(f"{what}: {exc.message}", hint=exc.hint) from exc
        except ftplib.error_temp as exc:
            self._drop()
            text = _said(exc)
            if "failed logins" in text:  # the appliance's ban: asking again extends it
                raise LoginError(
                    f"{self.describe()}: refused after failed logins from here ({text})",
                    hint="check the password, and wait for the ban to end (the server's "
                    "--ban-seconds) before trying again",
                ) from exc
            raise TransferError(f"{what}: {text}") from exc
        except socket.gaierror as exc:  # a name that does not resolve will not by waiting
            self._drop()
            raise UnknownHost(
                f"{what}: cannot find {self.target.host} ({exc.strerror or exc})",
                hint="check the host name in the URL",
            ) from exc
        except NETWORK_ERRORS as exc:
            self._drop()
            raise TransferError(f"{what}: {str(exc) or type(exc).__name__}") from exc
        # A reply ftplib could not decode (UTF-8) or parse (SIZE), or a passive port past
        # 65535, which ftplib hands on to the socket as it is.
        except (ValueError, OverflowError) as exc:
            self._drop()
            raise TransferError(
                f"{what}: the server's reply makes no sense ({type(exc).__name__})"
            ) from exc

    def _drop(self) -> None:
        if self._ftp is not None:
            self._ftp.close()
            self._ftp = None

    # -- transport operations ------------------------------------------------------------

    def list(self) -> list[str]:
        """NLST, bounded: at most :data:`MAX_LISTING` bytes, whole within ten timeouts. A name
        that is not UTF-8 cannot be a bundle's; it is listed with U+FFFD in its place."""
        ftp = self._connect()
        received: list[bytes] = []
        held = 0
        deadline = time.monotonic() + 10 * self._timeout

        def take(data: bytes) -> None:
            nonlocal held
            held += len(data)
            if held > MAX_LISTING or time.monotonic() > deadline:
                raise ftplib.error_proto(f"a listing longer than {MAX_LISTING >> 20} MiB or slow")
            received.append(data)

        with self._errors("listing"):
            try:
                ftp.retrbinary("NLST", take)
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):  # an empty directory, for some servers
                    return []
                raise
        lines = b"".join(received).decode("utf-8", "replace").split("\n")
        names = (line.rstrip("\r").rsplit("/", 1)[-1] for line in lines)
        return sorted(n for n in names if n)

    def size(self, name: str) -> int | None:
        ftp = self._connect()
        with self._errors(f"size of {name}"):
            ftp.voidcmd("TYPE I")  # SIZE is only meaningful in binary mode
            try:
                return ftp.size(name)
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):  # no such file
                    return None
                raise

    def features(self) -> set[str]:
        if self._features is None:
            ftp = self._connect()
            with self._errors("FEAT"):
                try:
                    lines = ftp.sendcmd("FEAT").splitlines()[1:-1]
                except ftplib.error_perm:
                    lines = []
            self._features = {line.strip().split(" ")[0].upper() for line in lines}
        return self._features

    def hash(self, name: str) -> str | None:
        """The server's SHA-256 of ``name`` (draft-bryan-ftpext-hash), or None if not offered."""
        if "HASH" not in self.features():
            return None
        ftp = self._connect()
        with self._errors(f"HASH {name}"):
            ftp.sendcmd("OPTS HASH SHA-256")
            reply = ftp.sendcmd(f"HASH {name}")
        fields = reply.split()
        if len(fields) < 4 or fields[1] != "SHA-256":
            raise TransferError(f"HASH {name}: unexpected reply {reply[:80]!r}")
        return fields[3].lower()

    def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        ftp = self._connect()
        with self._errors(f"downloading {name}"):
            ftp.voidcmd("TYPE I")  # a listing switched to ASCII
            conn = ftp.transfercmd(f"RETR {name}", rest=offset or None)
        reader = _DataReader(self, conn, name, window=self._timeout)
        return io.BufferedReader(reader, buffer_size=1 << 20)

    def writer(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        """Upload from ``offset``: REST + STOR (the server keeps the first ``offset`` bytes), or
        APPE when the server refuses REST before STOR and holds exactly ``offset`` bytes."""
        ftp = self._connect()
        with self._errors(f"uploading {name}"):
            ftp.voidcmd("TYPE I")
            if offset == 0:
                conn = ftp.transfercmd(f"STOR {name}")
            else:
                try:
                    conn = ftp.transfercmd(f"STOR {name}", rest=offset)
                except ftplib.error_perm:
                    held = self._held(ftp, name)
                    if held is None:  # expired by the appliance since its SIZE (review)
                        raise TransferError(
                            f"uploading {name}: the server no longer holds it; starting again"
                        ) from None  # transient: the next attempt asks its size again
                    if held != offset:
                        raise
                    conn = ftp.transfercmd(f"APPE {name}")
        return io.BufferedWriter(_DataWriter(self, conn, name), buffer_size=1 << 20)

    def rename(self, src: str, dst: str) -> None:
        ftp = self._connect()
        with self._errors(f"renaming {src}"):
            ftp.rename(src, dst)

    def delete(self, name: str) -> None:
        """Delete ``name``; one already gone is no error (a retry after a lost reply, another
        receiver's --consume), as with a directory. A refusal of a file still there stands."""
        ftp = self._connect()
        with self._errors(f"deleting {name}"):
            try:
                ftp.delete(name)
            except ftplib.error_perm as exc:
                if not str(exc).startswith("550") or self._there(name):
                    raise

    @staticmethod
    def _held(ftp: ftplib.FTP, name: str) -> int | None:
        """``name``'s size, None when the server says it has no such file (550)."""
        try:
            return ftp.size(name)
        except ftplib.error_perm as exc:
            if _said(exc).startswith("550"):
                return None
            raise

    def _there(self, name: str) -> bool:
        """Whether ``name`` is still there, for a refused DELE: yes when SIZE cannot tell."""
        try:
            return self.size(name) is not None
        except AirgapError:
            return True

    def refusal(self, name: str) -> AirgapError | None:
        """After an upload's data connection broke: the reply the server sent with the break,
        if one comes within :data:`REFUSAL_WAIT` s (its 552 for a full disk or quota, said on
        the control connection as it closed the data one), as the error it means."""
        ftp = self._ftp
        if ftp is None or interrupted():  # Ctrl-C cut the connection: nothing to wait for
            return None
        timeout, ftp.timeout = ftp.timeout, REFUSAL_WAIT
        try:
            try:
                ftp.voidresp()
            except (ftplib.error_perm, ftplib.error_temp) as said:
                with self._errors(f"uploading {name}"):
                    raise said
            except _UNSAID:
                return None  # no reply, or none that says more than the break itself
        except AirgapError as exc:
            return exc
        finally:
            ftp.timeout = timeout
        return None

    def _finish(self, name: str, what: str) -> None:
        ftp = self._connect()
        with self._errors(f"{what} {name}"):
            ftp.voidresp()


class _DataConnection(io.RawIOBase):
    """One transfer's data connection. Closing it waits for the server's final reply, unless
    the transfer broke: then there is none to wait for (on a dropped control connection that
    meant logging in again to wait a whole timeout for nothing), or the process is being
    interrupted."""

    verb = ""

    def __init__(self, owner: FtpTransport, conn: socket.socket, name: str) -> None:
        self._owner, self._conn, self._name = owner, conn, name
        self._broken = False
        _TRANSFERS.add(conn)
        _no_delay(conn)

    def _failed(self, exc: OSError) -> TransferError:
        self._owner._drop()
        self._broken = True
        return TransferError(f"{self.verb} {self._name}: {exc}")

    def close(self) -> None:
        if not self.closed:
            _close_data(self._conn)
            super().close()
            if interrupted():  # Ctrl-C: no waiting for the reply of a transfer cut short
                self._owner._drop()
            elif not self._broken:
                self._owner._finish(self._name, self.verb)


class _DataReader(_DataConnection):
    verb = "downloading"

    def __init__(
        self, owner: FtpTransport, conn: socket.socket, name: str, *, window: float
    ) -> None:
        super().__init__(owner, conn, name)
        self._error: OSError | None = None  # met after some bytes: raised by the next call
        self._window, self._since, self._counted = window, time.monotonic(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (up to :data:`FILL`) or reach the end: a TLS socket hands out one
        16 KiB record per call, and each call costs the layers above a turn of their own."""
        view = memoryview(buffer)[:FILL]
        filled = 0
        while filled < len(view):
            try:
                if self._error is not None:
                    raise self._error
                got = self._conn.recv_into(view[filled:])
                self._pace(got)
            except OSError as exc:
                if filled:
                    self._error = exc  # the bytes first; the next call reports the error
                    return filled
                raise self._failed(exc) from exc
            if not got:
                break
            filled += got
        return filled

    def _pace(self, got: int) -> None:
        """At least :data:`STALL_BYTES` in every window of one timeout, or a TimeoutError."""
        self._counted += got
        now = time.monotonic()
        if now - self._since >= self._window:
            if self._counted < STALL_BYTES:
                raise TimeoutError(f"under {STALL_BYTES} bytes in {self._window:g} s: stalled")
            self._since, self._counted = now, 0


class _DataWriter(_DataConnection):
    verb = "uploading"
    _first: AirgapError | None = None  # what broke the upload: said again by later writes

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._first is not None:  # the buffer above flushing as it closes, say
            raise self._first
        try:
            self._conn.sendall(data)
        except OSError as exc:
            refused = self._owner.refusal(self._name)
            failed = self._failed(exc)
            self._first = refused or failed
            raise self._first from exc
        return len(data)

    def unsent(self) -> int:
        """Bytes written that the server has not yet received (the socket's send queue: up
        to megabytes, seconds of a slow link): Linux's SIOCOUTQ, 0 once closed."""
        try:
            queue = fcntl.ioctl(self._conn.fileno(), termios.TIOCOUTQ, bytes(4))
        except (OSError, ValueError):
            return 0
        return max(0, int.from_bytes(queue, sys.byteorder, signed=True))


class Refused(TransferError):
    """A 5xx reply: the server's answer stands (FTP's permanent negative completion), and
    asking again, at once or after a backoff, gets it again (found in review: a receiver's
    account sending was refused six times over 31 s, then told to try again)."""

    transient = False


class WrongPlace(Refused):
    """The appliance refused this account or path for what was asked: the same URL meets the
    same refusal, so the way on is another URL, not a resume to this one."""


def _refused(what: str, text: str) -> Refused:
    hint = _refusal_hint(text)
    kind = WrongPlace if hint else Refused
    return kind(f"{what}: refused by the server ({text})", hint=hint)


def _refusal_hint(text: str) -> str | None:
    """What to put right, for the appliance's refusals of a role or a place."""
    if "a receiver may not upload" in text:
        return (
            "this account is a receiver's; a send goes with a sender's account (on the "
            "appliance: airgap user add NAME --role sender)"
        )
    if "may not enter here" in text:
        return (
            "an account's / on the appliance is its own area: give the server as "
            "ftps://USER@HOST:PORT/, with no path"
        )
    return None


class DropBoxFull(TransferError):
    """The drop box's disk or the sender's quota is full (552): trying again at once would
    only meet it again; the upload resumes once there is room."""

    transient = False


class UnknownHost(TransferError):
    """The server's name does not resolve: not retried."""

    transient = False


class Unreachable(TransferError):
    """Nothing answered the first connection to the server: not retried (see ``_dial``)."""

    transient = False


#: connect() failures that say nothing serves at the address (a timeout says so too).
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


#: The data connections open now, for :func:`cut_transfers`.
_TRANSFERS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def cut_transfers() -> None:
    """Shut every open data connection down (on Ctrl-C): a read or write blocked on one, in
    whatever thread, returns at once instead of when the network next moves."""
    for conn in list(_TRANSFERS):
        with contextlib.suppress(OSError):  # the plain socket's: an SSLSocket's would unwrap
            socket.socket.shutdown(conn, socket.SHUT_RDWR)


def _close_data(conn: socket.socket) -> None:
    if isinstance(conn, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):  # a clean TLS close, or servers
            conn = conn.unwrap()  # take the upload for truncated
    conn.close()
