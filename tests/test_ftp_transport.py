"""The FTP transport against a real vsftpd: the operations, resume, TLS with a pinned
certificate, and a whole bundle sent and fetched through it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap.client.fetch import Destination, fetch_bundles
from airgap.client.ftp import FtpTarget, FtpTransport
from airgap.client.ledger import Ledger
from airgap.client.send import send_files
from airgap.shared import age, minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import TransferError, UsageError
from tests import vsftpd

pytestmark = pytest.mark.skipif(vsftpd.available() is not None, reason=str(vsftpd.available()))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[vsftpd.Vsftpd]:
    with vsftpd.running(tmp_path / "ftp") as running:
        yield running


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[vsftpd.Vsftpd]:
    with vsftpd.running(tmp_path / "ftps", tls=True) as running:
        yield running


def _transport(server: vsftpd.Vsftpd, scheme: str = "ftp", pin: str | None = None) -> FtpTransport:
    target = FtpTarget.parse(f"{scheme}://{server.user}@127.0.0.1:{server.port}/{server.home}")
    return FtpTransport(target, server.password, pin=pin, timeout=20)


def test_operations_and_resume(server: vsftpd.Vsftpd) -> None:
    ftp = _transport(server)
    data = os.urandom(3 * 1024 * 1024 + 17)
    with ftp.writer("x.part") as out:
        out.write(data[:1_000_000])
    assert ftp.size("x.part") == 1_000_000
    with ftp.writer("x.part", offset=1_000_000) as out:  # REST + STOR from the server's size
        out.write(data[1_000_000:])
    assert ftp.size("x.part") == len(data)
    ftp.rename("x.part", "x")
    assert ftp.list() == ["x"]
    with ftp.reader("x") as handle:
        assert handle.read() == data
    with ftp.reader("x", offset=2_000_000) as handle:
        assert handle.read() == data[2_000_000:]
    assert ftp.hash("x") is None  # vsftpd offers no HASH
    assert ftp.size("missing") is None
    ftp.delete("x")
    assert ftp.list() == []
    ftp.close()
    assert (server.home / "x").exists() is False


def test_wrong_password_is_a_transfer_error(server: vsftpd.Vsftpd) -> None:
    target = FtpTarget.parse(f"ftp://{server.user}@127.0.0.1:{server.port}/")
    with pytest.raises(TransferError, match="login refused"):
        FtpTransport(target, "wrong-password", timeout=20).list()


def test_server_down_is_a_transfer_error() -> None:
    port = vsftpd.free_port()
    target = FtpTarget.parse(f"ftp://someone@127.0.0.1:{port}/")
    with pytest.raises(TransferError, match="connecting"):
        FtpTransport(target, "x", timeout=5).list()


def test_urls_never_carry_passwords() -> None:
    with pytest.raises(UsageError, match="process list"):
        FtpTarget.parse("ftp://user:secret@host/")
    with pytest.raises(UsageError, match="fingerprint"):
        FtpTransport(FtpTarget.parse("ftps://user@host/"), "x")


def test_ftps_with_pinned_certificate(tls_server: vsftpd.Vsftpd) -> None:
    assert tls_server.fingerprint is not None
    ftp = _transport(tls_server, "ftps", tls_server.fingerprint)
    with ftp.writer("secret") as out:
        out.write(b"over TLS" * 10_000)
    with ftp.reader("secret") as handle:
        assert handle.read() == b"over TLS" * 10_000
    ftp.close()
    wrong = _transport(tls_server, "ftps", "sha256:" + "0" * 64)
    with pytest.raises(TransferError, match="pinned fingerprint"):
        wrong.list()
    plain = _transport(tls_server)  # vsftpd forces TLS for logins
    with pytest.raises(TransferError):
        plain.list()


def test_bundle_through_vsftpd(server: vsftpd.Vsftpd, tmp_path: Path) -> None:
    identity, signer = age.X25519Identity.generate(), minisign.SecretKey.generate()
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(200_000))
    options = EncodeOptions([identity.recipient], segment_size=64 * 1024)
    sender, receiver = _transport(server), _transport(server)
    sent = send_files([source], sender, options=options, key=signer)
    outcomes = fetch_bundles(
        receiver,
        Destination(tmp_path / "out"),
        identities=[identity],
        trusted=[signer.public_key],
        ledger=Ledger(tmp_path / "ledger.jsonl"),
    )
    sender.close()
    receiver.close()
    assert [(o.bundle_id, o.error) for o in outcomes] == [(sent.id, None)]
    assert (tmp_path / "out" / "payload.bin").read_bytes() == source.read_bytes()
