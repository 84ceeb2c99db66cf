"""A real ``airgap serve`` in a subprocess on 127.0.0.1 port 0, and helpers to drive it."""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import whole_text

START_TIMEOUT = 30
_SERVING = re.compile(r"airgap: serving ftp://127\.0\.0\.1:(\d+)/")
_RUN_CLI = (
    "\nimport runpy\nrunpy.run_module('airgap.client', run_name='__main__', alter_sys=True)\n"
)


@dataclass
class Server:
    root: Path
    port: int
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    clients: list[ftplib.FTP] = field(default_factory=list)

    def password(self, name: str) -> str:
        for line in (self.root / "state" / "credentials.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == name:
                return parts[2]
        raise KeyError(name)

    def ftp(self, user: str | None = None, password: str | None = None) -> ftplib.FTP:
        client = ftplib.FTP()
        self.clients.append(client)
        client.connect("127.0.0.1", self.port, timeout=20)
        if user is not None:
            client.login(user, password if password is not None else self.password(user))
        return client

    def audit(self) -> str:
        """The audit log's whole lines: the server may be appending a record as it is read."""
        return whole_text(self.root / "state" / "audit.jsonl")

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


def start_server(root: Path, *args: str, min_free: int = 0, prelude: str = "") -> Server:
    """``prelude``: Python run in the server process before the CLI (to instrument it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    cli = ["-c", prelude + _RUN_CLI] if prelude else ["-m", "airgap.client"]
    process = subprocess.Popen(
        [
            sys.executable,
            *cli,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--root",
            str(root),
            "--min-free-bytes",
            str(min_free),
            "--login-failure-delay",
            "0.1",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if (match := _SERVING.search(line)) and not found.is_set():
                port.append(int(match.group(1)))
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not found.wait(START_TIMEOUT) or not port:
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(lines))
    return Server(root=root, port=port[0], process=process, lines=lines, reader=reader)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def run(*args: str, root: Path | None = None, min_free: int = 0, prelude: str = "") -> Server:
        server = start_server(root or tmp_path / "root", *args, min_free=min_free, prelude=prelude)
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs, for a disk that fills up (needs root, or CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,mode=0755", "tmpfs", str(mount)],
        check=True,
        timeout=30,
    )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def quarantined(server: Server, area: str = "sender") -> list[Path]:
    """The bundles of ``area`` in quarantine (each a folder with its files and reason.txt)."""
    folder = server.root / "quarantine" / area
    return sorted(folder.iterdir()) if folder.exists() else []


def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def stor(client: ftplib.FTP, name: str, data: bytes, *, rest: int | None = None) -> str:
    return client.storbinary(f"STOR {name}", io.BytesIO(data), rest=rest)


def stor_refused(client: ftplib.FTP, name: str, data: bytes, *, rest: int | None = None) -> str:
    """An upload the server stops mid-way: its final reply, however the data socket ended.

    A server that stops reading and closes may reset the socket while the client still sends,
    so the client sees ECONNRESET or EPIPE before it reads the reply on the control connection.
    """
    try:
        reply = stor(client, name, data, rest=rest)
    except ftplib.all_errors as exc:
        if not isinstance(exc, OSError):
            return str(exc)
        try:
            reply = client.voidresp()
        except ftplib.all_errors as late:
            return str(late)
    raise AssertionError(f"upload was not refused: {reply}")


def retr(client: ftplib.FTP, name: str, *, rest: int | None = None) -> bytes:
    chunks: list[bytes] = []
    client.retrbinary(f"RETR {name}", chunks.append, rest=rest)
    return b"".join(chunks)


def begin_stor(client: ftplib.FTP, name: str) -> socket.socket:
    """Start an upload; 450 means the bundle check holds the file for a moment (the manifest
    and signature just arrived), so try again, as a client would."""
    started: list[socket.socket] = []

    def attempt() -> bool:
        try:
            started.append(client.transfercmd(f"STOR {name}"))
        except ftplib.error_temp as exc:
            if str(exc).startswith("450"):
                return False
            raise
        return True

    assert wait_for(attempt, timeout=10), "the file stayed busy"
    return started[0]
