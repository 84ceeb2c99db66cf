"""Uploads that end badly: a killed client, a TCP reset, a full disk, a server stopped mid-way.

In each case the partial file must stay, must never be published, and must resume (REST+STOR
from the server's SIZE) into a whole bundle that is then published.
"""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from airgap.client.send import send_files
from airgap.client.transport import DirectoryTransport
from airgap.shared.bundle import EncodeOptions
from airgap.shared.keys import KeySet
from tests.server.conftest import Server, begin_stor, stor, stor_refused, wait_for
from tests.server.test_publish_and_clients import payload_of

MiB = 1024 * 1024
pytestmark = pytest.mark.timeout(60)

# A client in its own process: sends the first HALF bytes of FILE as STOR NAME, says so, then
# waits to be killed with the data connection open.
_STALLED_UPLOAD = """
import ftplib, sys, time
port, password, name, path, half = sys.argv[1:6]
data = open(path, "rb").read()[: int(half)]
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(port), timeout=20)
ftp.login("sender", password)
ftp.voidcmd("TYPE I")
for _ in range(100):  # 450: the bundle check holds the file for a moment
    try:
        conn = ftp.transfercmd("STOR " + name)
        break
    except ftplib.error_temp:
        time.sleep(0.1)
conn.sendall(data)
print("sent", flush=True)
time.sleep(60)
"""


def big_bundle(tmp_path: Path, keys: KeySet, size: int = 3 * MiB) -> tuple[str, dict[str, bytes]]:
    source = tmp_path / "random.bin"
    source.write_bytes(os.urandom(size))  # incompressible: the payload stays about this size
    out = tmp_path / "bundle"
    manifest = send_files(
        [source], DirectoryTransport(out), options=EncodeOptions([]), key=keys.signing
    )
    return manifest.id, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def upload_all_but_payload(server: Server, files: dict[str, bytes]) -> ftplib.FTP:
    client = server.ftp("sender")
    for name, data in files.items():
        if name != payload_of(files):
            stor(client, name, data)
    return client


def resume_and_expect_published(
    server: Server, files: dict[str, bytes], *, checked: bool = True
) -> None:
    """``checked``: the cut upload was handed to the bundle check, which must say "pending"."""
    name = payload_of(files)
    if checked:
        assert wait_for(lambda: ": pending" in server.stderr), "the cut upload was not checked"
    incoming = server.root / "pub/incoming/sender"
    outgoing = server.root / "pub/outgoing"
    assert not any(outgoing.iterdir()), "a partial upload was published"
    assert not any((server.root / "quarantine").iterdir()), "a partial upload was quarantined"
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    offsets: list[int] = []

    def resume() -> bool:
        have = client.size(name)
        try:
            stor(client, name, files[name][have:], rest=have)
        except ftplib.error_temp as exc:  # the cut session may hold the file for a moment
            if str(exc).startswith("450"):
                return False
            raise
        offsets.append(have)
        return True

    assert wait_for(resume, timeout=10)
    assert 0 < offsets[0] < len(files[name])
    assert wait_for(lambda: len(list(outgoing.iterdir())) == len(files))
    for got, data in files.items():
        assert (outgoing / got).read_bytes() == data
    assert not any(incoming.iterdir())
    client.quit()


def test_upload_killed_with_sigkill_is_never_published_and_resumes(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    _, files = big_bundle(tmp_path, keyset)
    upload_all_but_payload(server, files).quit()
    name = payload_of(files)
    (tmp_path / "payload").write_bytes(files[name])
    half = len(files[name]) // 2
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STALLED_UPLOAD,
            str(server.port),
            server.password("sender"),
            name,
            str(tmp_path / "payload"),
            str(half),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "sent"
        target = server.root / "pub/incoming/sender" / name
        assert wait_for(lambda: target.exists() and target.stat().st_size == half)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert wait_for(lambda: '"event": "upload-' in server.audit().split("upload-started")[-1])
    resume_and_expect_published(server, files)


def test_upload_cut_by_a_tcp_reset_is_never_published_and_resumes(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    _, files = big_bundle(tmp_path, keyset)
    client = upload_all_but_payload(server, files)
    name = payload_of(files)
    client.voidcmd("TYPE I")
    conn = begin_stor(client, name)
    conn.sendall(files[name][: len(files[name]) // 2])
    target = server.root / "pub/incoming/sender" / name
    assert wait_for(lambda: target.exists() and target.stat().st_size > 0)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # an RST, not a FIN
    with pytest.raises(ftplib.error_temp, match="426"):
        client.voidresp()
    assert '"event": "upload-incomplete"' in _eventually(server, "upload-incomplete")
    resume_and_expect_published(server, files)


def _eventually(server: Server, event: str) -> str:
    wait_for(lambda: f'"event": "{event}"' in server.audit())
    return server.audit()


def test_disk_full_gives_552_keeps_serving_and_the_partial_resumes(serve, small_disk):
    root = small_disk / "root"
    server = serve("--tls", "off", root=root)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (12 * MiB))
    data = os.urandom(12 * MiB)  # more than the ~8 MiB left
    client = server.ftp("sender")
    assert stor_refused(client, "big.bin.part", data).startswith("552")
    partial = root / "pub/incoming/sender/big.bin.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    assert partial.read_bytes() == data[:kept]
    assert client.nlst() == ["big.bin.part"]
    audit = root / "state/audit.jsonl"
    for _ in range(60):  # log in until even the audit log has no room left; still served
        before = audit.stat().st_size
        other = server.ftp("receiver")
        assert other.nlst() == []
        other.quit()
        if audit.stat().st_size == before:
            break
    else:
        raise AssertionError("the disk never filled up")
    assert wait_for(lambda: "audit log" in server.stderr)
    filler.unlink()
    client.voidcmd("TYPE I")
    have = client.size("big.bin.part")
    assert have == kept
    stor(client, "big.bin.part", data[have:], rest=have)
    assert partial.read_bytes() == data
    server.ftp("receiver").quit()
    assert wait_for(lambda: audit.read_text().endswith('"user": "receiver"}\n'))
    assert all(line.endswith("}") for line in audit.read_text().splitlines())  # none cut off


def test_free_disk_watermark_gives_552_and_the_partial_resumes(serve, small_disk):
    root = small_disk / "root"
    server = serve("--tls", "off", root=root, min_free=6 * MiB)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (8 * MiB))
    data = os.urandom(10 * MiB)  # would leave ~2 MiB free: crosses the 6 MiB watermark
    client = server.ftp("sender")
    assert stor_refused(client, "w.bin", data).startswith("552")
    partial = root / "pub/incoming/sender/w.bin"
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    assert partial.read_bytes() == data[:kept]
    with pytest.raises(ftplib.error_perm, match="552"):  # below the watermark: refused at once
        stor(client, "new.bin", b"x")
    assert not (root / "pub/incoming/sender/new.bin").exists()
    # Said to the operator too (walkthrough: a disk under the watermark refused every upload
    # without a word on the server's side).
    assert wait_for(lambda: "new.bin refused: 552 Not enough disk space" in server.stderr)
    filler.unlink()
    stor(client, "w.bin", data[kept:], rest=kept)
    assert partial.read_bytes() == data
    assert server.stop() == 0
    under = serve("--tls", "off", root=root, min_free=64 * MiB)  # more than the disk holds
    assert "every upload is refused (552) until there is more" in under.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_during_an_upload_leaves_it_resumable(serve, tmp_path, keyset, signum):
    server = serve("--tls", "off")
    _, files = big_bundle(tmp_path, keyset)
    client = upload_all_but_payload(server, files)
    name = payload_of(files)
    half = len(files[name]) // 2
    client.voidcmd("TYPE I")
    conn = begin_stor(client, name)
    conn.sendall(files[name][:half])
    target = server.root / "pub/incoming/sender" / name
    assert wait_for(lambda: target.exists() and target.stat().st_size == half)
    server.process.send_signal(signum)
    assert server.process.wait(timeout=30) == 0
    conn.close()
    assert target.stat().st_size == half
    assert wait_for(lambda: "airgap: stopped" in server.stderr)
    assert '"event": "upload-incomplete"' in server.audit()
    restarted = serve("--tls", "off")
    resume_and_expect_published(restarted, files, checked=False)
