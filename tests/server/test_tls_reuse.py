"""``--tls-reuse required`` (the default): a TLS data connection must resume the TLS session of
its own control connection, or it is refused before it carries a byte (vsftpd's
``require_ssl_reuse``); lftp, curl and airgap's client do so, the standard library's FTP_TLS
does not."""

from __future__ import annotations

import contextlib
import ftplib
import os
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest

from tests.server.conftest import Server, stor, wait_for
from tests.server.test_limits import ReusingTLS, tls_client

pytestmark = pytest.mark.timeout(90)
REFUSED = "522 Data connection refused: it must resume the control connection's TLS session"


def logged_in(server: Server, *, reuse: bool = True) -> ftplib.FTP_TLS:
    client = tls_client(server, reuse=reuse)
    client.login("sender", server.password("sender"))
    client.prot_p()
    return client


def refused_upload(client: ftplib.FTP_TLS, name: str) -> None:
    """STOR ``name`` whose data connection the server refuses: the 522 is the STOR's reply."""
    with contextlib.suppress(OSError):  # ssl.SSLError too: the server closes it at once
        conn = client.transfercmd(f"STOR {name}")  # 150, then the TLS handshake
        with contextlib.suppress(OSError):
            conn.sendall(b"planted" * 10_000)
        conn.close()
    with pytest.raises(ftplib.error_perm, match=REFUSED):
        client.getresp()


def test_a_data_connection_that_starts_a_new_session_is_refused(serve):
    server = serve("--tls", "required")
    client = logged_in(server, reuse=False)
    refused_upload(client, "fresh.bin")
    with pytest.raises((EOFError, OSError, ftplib.Error)):
        client.voidcmd("NOOP")  # and the session with it
    path = server.root / "pub/incoming/sender/fresh.bin"
    assert not path.exists() or path.stat().st_size == 0
    assert wait_for(lambda: "without its control connection's session refused" in server.stderr)


def test_a_data_connection_cannot_borrow_another_control_connections_session(serve):
    """The attack the rule is for: someone who reaches a passive port first (from the same
    address, behind one NAT) with a session of their own from this server."""
    server = serve("--tls", "required")
    owner = logged_in(server)  # its control connection's session is the one to borrow
    thief = ReusingTLS(context=owner.context)  # Python offers a session to its context only
    server.clients.append(thief)
    thief.connect("127.0.0.1", server.port, timeout=20)
    thief.login("sender", server.password("sender"))
    thief.prot_p()
    thief.session = owner.sock.session  # type: ignore[attr-defined]
    refused_upload(thief, "stolen.bin")
    path = server.root / "pub/incoming/sender/stolen.bin"
    assert not path.exists() or path.stat().st_size == 0
    stor(owner, "own.bin", b"still served")  # the owner goes on
    assert (server.root / "pub/incoming/sender/own.bin").read_bytes() == b"still served"


def test_with_reuse_off_a_new_session_is_accepted(serve):
    server = serve("--tls", "required", "--tls-reuse", "off")
    client = logged_in(server, reuse=False)
    stor(client, "fresh.bin", b"y" * 100_000)
    assert (server.root / "pub/incoming/sender/fresh.bin").read_bytes() == b"y" * 100_000


@pytest.mark.skipif(not shutil.which("lftp"), reason="needs lftp (Debian's lftp package)")
def test_lftp_uploads_and_lists_over_tls_with_reuse_required(serve, tmp_path: Path):
    server = serve("--tls", "required")
    (tmp_path / "up.bin").write_bytes(os.urandom(300_000))
    script = tmp_path / "script.lftp"
    # TLS 1.2: over TLS 1.3 lftp (GnuTLS) closes a data connection without reading the
    # session tickets sent after the handshake, so the kernel resets it and the appliance may
    # lose the upload's last bytes (426; 5 of 12 uploads here, with reuse required or not).
    script.write_text(
        "set ftp:ssl-force true\nset ftp:ssl-protect-data true\n"
        "set ssl:verify-certificate no\nset net:max-retries 1\n"
        "set ssl:priority NORMAL:-VERS-TLS1.3\n"
        f"open -u sender,{server.password('sender')} ftp://127.0.0.1:{server.port}\n"
        f"put {tmp_path / 'up.bin'} -o lftp.bin\ncls -1\nexit\n"
    )
    ran = subprocess.run(
        ["lftp", "-f", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert "lftp.bin" in ran.stdout
    landed = server.root / "pub/incoming/sender/lftp.bin"
    assert landed.read_bytes() == (tmp_path / "up.bin").read_bytes()
    assert "refused" not in server.stderr


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_curl_uploads_and_downloads_over_tls_with_reuse_required(serve, tmp_path: Path):
    server = serve("--tls", "required")
    (tmp_path / "up.bin").write_bytes(os.urandom(300_000))
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login sender password {server.password('sender')}\n")
    netrc.chmod(0o600)
    url = f"ftp://127.0.0.1:{server.port}/curl.bin"
    base = ["curl", "-sS", "--ssl-reqd", "-k", "--netrc-file", str(netrc)]
    up = subprocess.run(
        [*base, "-T", str(tmp_path / "up.bin"), url], capture_output=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    listed = subprocess.run(
        [*base, "-l", f"ftp://127.0.0.1:{server.port}/"], capture_output=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert b"curl.bin" in listed.stdout
    landed = server.root / "pub/incoming/sender/curl.bin"
    assert landed.read_bytes() == (tmp_path / "up.bin").read_bytes()
    with contextlib.suppress(FileNotFoundError):
        assert "refused" not in server.stderr


def test_a_tls12_session_id_client_resumes_after_a_reset_upload(serve):
    """A client resuming by session id (TLS 1.2 without tickets, as curl does) keeps its session
    across an upload cut by a reset: the resume the 426 asks for is not refused. (OpenSSL drops
    a session whose connection closed without a TLS shutdown; the reset path here still shuts
    down, and the data connection's close marks the session shut down on every path.)"""
    server = serve("--tls", "required")
    context = ssl.create_default_context(cafile=str(server.root / "state/tls/cert.pem"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET
    client = ReusingTLS(context=context)
    server.clients.append(client)
    client.connect("127.0.0.1", server.port, timeout=20)
    client.login("sender", server.password("sender"))
    client.prot_p()
    client.voidcmd("TYPE I")
    data = os.urandom(400_000)
    conn = client.transfercmd("STOR cut.bin")
    assert isinstance(conn, ssl.SSLSocket) and conn.session_reused
    conn.sendall(data[:200_000])
    target = server.root / "pub/incoming/sender/cut.bin"
    assert wait_for(lambda: target.exists() and target.stat().st_size == 200_000)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a reset, no TLS shutdown
    with pytest.raises(ftplib.error_temp, match="426"):
        client.voidresp()
    stor(client, "cut.bin", data[200_000:], rest=200_000)  # the resume the 426 asked for
    assert target.read_bytes() == data
    assert "refused" not in server.stderr
