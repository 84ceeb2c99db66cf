"""A server that does not answer: at a command's first connection it ends the command at once,
with the address it tried; once reached, a server that goes away is waited for. Real appliance,
real CLI; the silent server is a socket that never accepts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap.client.ftp import FtpTarget, FtpTransport, Unreachable
from airgap.client.spool import Backoff, SpooledTransport
from airgap.shared.errors import TransferError
from tests import vsftpd
from tests.conftest import run_airgap
from tests.server.conftest import start_server


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a connect() to it
    waits until its timeout, as one to a host that drops packets does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield port
    finally:
        queued.close()
        listener.close()


def test_a_refused_first_connection_ends_every_command_at_once(
    keydir: Path, tmp_path: Path
) -> None:
    """Found in review: each took 31 s of six attempts, then gave a bare "[Errno 111]"; a send
    encoded the whole payload meanwhile, for a server that was not there."""
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    port = vsftpd.free_port()
    url = f"ftp://someone@127.0.0.1:{port}/"
    env = {"AIRGAP_PASSWORD": "x", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    trust = ["--trust", keydir / "signing.pub"]
    commands = {
        "send": ["send", "--file", tmp_path / "f", "--no-encrypt"],
        "fetch": ["fetch", "-i", keydir / "identity.txt", *trust, "--state-dir", tmp_path / "s"],
        "ls": ["ls", *trust],
        "verify": ["verify", *trust],
    }
    commands["send"] += ["--sign-key", keydir / "signing.key"]
    for name, args in commands.items():
        started = time.monotonic()
        ran = run_airgap([*args, "--server", url], env=env)
        took = time.monotonic() - started
        assert ran.returncode == 4, (name, ran.stderr)
        assert f"nothing answers at 127.0.0.1:{port} (connection refused)" in ran.stderr, name
        assert "hint: check the host and port in the URL" in ran.stderr, name
        assert "trying again" not in ran.stderr and "Errno" not in ran.stderr, name
        assert took < 15, (name, took)  # the six attempts took 31 s
    assert not any((tmp_path / "cache" / "airgap" / "send").glob("*"))  # nothing encoded


def test_a_silent_first_connection_is_unreachable_after_the_timeout(silent_port: int) -> None:
    ftp = FtpTransport(FtpTarget.parse(f"ftp://u@127.0.0.1:{silent_port}/"), "pw", timeout=1)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        SpooledTransport(ftp, Path("/nonexistent"), backoff=Backoff(first=0.01)).list()
    assert f"nothing answers at 127.0.0.1:{silent_port} (no answer in 1 s)" in caught.value.message
    assert not caught.value.transient
    assert time.monotonic() - started < 5  # one attempt, not six


def test_a_server_gone_after_it_was_reached_is_waited_for(tmp_path: Path) -> None:
    server = start_server(tmp_path / "root")
    try:
        url = f"ftp://receiver@127.0.0.1:{server.port}/"
        ftp = FtpTransport(FtpTarget.parse(url), server.password("receiver"), timeout=5)
        told: list[str] = []
        spooled = SpooledTransport(
            ftp, tmp_path / "spool", backoff=Backoff(attempts=3, first=0.01, notify=told.append)
        )
        assert spooled.list() == []
    finally:
        server.stop()
    ftp.close()
    with pytest.raises(TransferError) as caught:
        spooled.list()
    assert not isinstance(caught.value, Unreachable)
    assert "gave up after 3 attempts" in caught.value.message
    assert "nothing answers at 127.0.0.1" in caught.value.message
    assert len(told) == 2 and all("trying again" in line for line in told), told
