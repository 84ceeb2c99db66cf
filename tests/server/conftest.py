"""A real ``airgap serve`` in a subprocess on 127.0.0.1 port 0, and helpers to drive it."""

from __future__ import annotations

import ftplib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 30
_SERVING = re.compile(r"airgap: serving ftp://127\.0\.0\.1:(\d+)/")


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
        return (self.root / "state" / "audit.jsonl").read_text()

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


def start_server(root: Path, *args: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airgap.client",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--root",
            str(root),
            "--min-free-bytes",
            "0",
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

    def run(*args: str) -> Server:
        server = start_server(tmp_path / "root", *args)
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def stor(client: ftplib.FTP, name: str, data: bytes, *, rest: int | None = None) -> str:
    import io

    return client.storbinary(f"STOR {name}", io.BytesIO(data), rest=rest)


def retr(client: ftplib.FTP, name: str, *, rest: int | None = None) -> bytes:
    chunks: list[bytes] = []
    client.retrbinary(f"RETR {name}", chunks.append, rest=rest)
    return b"".join(chunks)
