"""Clients that send ahead: lines pipelined behind a login or HASH wait their turn, a few at
most, and a client that never reads its replies is let go instead of filling memory."""

from __future__ import annotations

import json
import socket
import time

from tests.server.conftest import Server, stor, wait_for


def _records(server: Server, event: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, server.audit().splitlines()) if r.get("event") == event]


def _replies(raw: socket.socket, count: int) -> list[bytes]:
    """The first ``count`` reply lines (single-line replies only)."""
    data = b""
    while data.count(b"\r\n") < count:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[:count]


def test_lines_sent_behind_a_login_run_after_it_in_order(serve) -> None:
    server = serve("--tls", "off")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(1024).startswith(b"220")
        password = server.password("sender")
        raw.sendall(f"USER sender\r\nPASS {password}\r\nTYPE I\r\nNOOP\r\n".encode())
        codes = [line[:3] for line in _replies(raw, 4)]
    assert codes == [b"331", b"230", b"200", b"200"]


def test_an_overlong_or_failing_line_behind_a_check_is_answered_in_its_turn(serve) -> None:
    """Found in review: a line too long to keep was answered at once, before the login's
    reply; a held line whose command failed (a name too long for the file system) lost the
    lines after it and left the session hanging."""
    server = serve("--tls", "off")
    stor(server.ftp("sender"), "x.part", b"x" * 1000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(1024).startswith(b"220")
        password = server.password("sender")
        lines = f"USER sender\r\nPASS {password}\r\nNOOP\r\n{'X' * 3000}\r\nNOOP\r\n"
        raw.sendall(lines.encode())
        assert [line[:3] for line in _replies(raw, 5)] == [b"331", b"230", b"200", b"500", b"200"]
        raw.sendall(f"HASH x.part\r\nSIZE {'a' * 300}\r\nNOOP\r\nPWD\r\n".encode())
        assert [line[:3] for line in _replies(raw, 4)] == [b"213", b"550", b"200", b"257"]
    assert "Traceback" not in server.stderr


def test_a_client_gone_before_its_check_costs_no_check(serve) -> None:
    server = serve("--tls", "off", "--max-login-failures", "100")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
            assert raw.recv(1024).startswith(b"220")
            raw.sendall(b"USER sender\r\nPASS wrong\r\n")
    time.sleep(2)
    assert len(_records(server, "login-failed")) < 5


def test_lines_sent_behind_a_hash_wait_for_its_answer(serve) -> None:
    server = serve("--tls", "off")
    stor(server.ftp("sender"), "x.part", b"x" * 100_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(1024).startswith(b"220")
        password = server.password("sender")
        raw.sendall(f"USER sender\r\nPASS {password}\r\n".encode())
        assert [line[:3] for line in _replies(raw, 2)] == [b"331", b"230"]
        raw.sendall(b"HASH x.part\r\nRANG 0 9\r\nHASH x.part\r\nNOOP\r\n")
        codes = [line[:3] for line in _replies(raw, 4)]
    assert codes == [b"213", b"350", b"213", b"200"]


def test_a_packet_of_logins_costs_one_check_not_thousands(serve) -> None:
    """2,000 USER/PASS pairs in one write: each PASS used to queue a password check on the
    shared workers, and real logins waited minutes behind them."""
    server = serve("--tls", "off")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(1024).startswith(b"220")
        raw.sendall(b"USER nobody\r\nPASS wrong\r\n" * 2000)
        time.sleep(0.5)
    started = time.monotonic()
    client = server.ftp("receiver")  # ftplib's timeout is 20 s
    client.voidcmd("NOOP")
    assert time.monotonic() - started < 20
    assert len(_records(server, "login-failed")) <= 1
    refused = _records(server, "refused")
    assert [r["reason"] for r in refused] == ["commands sent ahead of a check"]


def test_a_client_that_reads_no_replies_is_disconnected(serve) -> None:
    server = serve("--tls", "off")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", server.port))
    sent, deadline = 0, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # about 2 MB at most before the server has had enough
            raw.sendall(b"HELP\r\n" * 1000)
            sent += 6000
    except OSError:  # reset or timed out: the server stopped reading, or closed
        pass
    finally:
        raw.close()
    for _ in range(100):
        if _records(server, "refused"):
            break
        time.sleep(0.1)
    assert [r["reason"] for r in _records(server, "refused")] == ["replies not read"], sent
    assert "Traceback" not in server.stderr and "unhandled" not in server.stderr
    server.ftp("receiver").voidcmd("NOOP")


SLOW_HASHES = """
import time
from airgap.server.hashing import HashCache
_digest = HashCache.digest
def _slow(self, *args, **kwargs):
    time.sleep(6)
    return _digest(self, *args, **kwargs)
HashCache.digest = _slow
"""


def test_a_login_never_waits_behind_hashing(serve) -> None:
    """Found in review: logins shared the two worker threads with HASH and publishing, so two
    long HASH commands (any sender may ask them of its own big files) held every login up."""
    server = serve("--tls", "off", prelude=SLOW_HASHES)
    busy = []
    for number in range(2):  # as many as there are workers
        client = server.ftp("sender")
        stor(client, f"big{number}.part", b"x" * 4096)
        client.putcmd(f"HASH big{number}.part")  # its reply waits the 6 s
        busy.append(client)
    time.sleep(0.5)  # both hashes are running
    started = time.monotonic()
    server.ftp("receiver")  # logs in
    waited = time.monotonic() - started
    assert waited < 3, f"{waited:.1f} s: the login waited for the hashes"
    for client in busy:
        assert client.getresp().startswith("213")


def test_a_loop_of_sessions_dropped_before_login_ends_in_a_ban(serve) -> None:
    """Found in review: each such session wrote an audit record and counted no failed login
    (its password check found the client gone), so a loop of them filled the disk unbanned."""
    server = serve("--tls", "off")
    flood = b"USER sender\r\nPASS wrong-guess\r\n" + b"NOOP\r\n" * 17
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
            if raw.recv(1024).startswith(b"421"):
                continue
            raw.sendall(flood)
            time.sleep(0.05)
    assert wait_for(lambda: _records(server, "ban"), timeout=10)
    dropped = [r for r in _records(server, "refused") if r["reason"] != "banned"]
    assert len(dropped) == 5, dropped  # --max-login-failures, default 5
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(1024).startswith(b"421")
