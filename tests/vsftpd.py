"""A private vsftpd on loopback for tests: a local user with write access, optionally FTPS.

Needs root (it adds a system user and runs vsftpd) and Debian's vsftpd; callers skip
otherwise. It never touches /etc/vsftpd.conf or the system service.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from airgap.server.tlscert import ensure_certificate, fingerprints

USER = "airgap-vsftpd-test"
VSFTPD = "/usr/sbin/vsftpd"


@dataclass(frozen=True)
class Vsftpd:
    port: int
    user: str
    password: str
    home: Path
    fingerprint: str | None


def available() -> str | None:
    """Why vsftpd tests cannot run here, or None."""
    if not Path(VSFTPD).exists():
        return "vsftpd is not installed"
    if os.geteuid() != 0:
        return "vsftpd tests need root (a system user)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_user(home: Path) -> str:
    password = secrets.token_urlsafe(16)
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/bin/bash", USER],
            check=True,
            capture_output=True,
        )
    subprocess.run(["usermod", "--home", str(home), USER], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
    shutil.chown(home, USER, USER)
    return password


def _certificate(directory: Path) -> tuple[Path, str]:
    """A self-signed pair made as the appliance makes its own, in one PEM file for vsftpd."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    ensure_certificate(cert, key, addresses=["127.0.0.1"])
    pem = directory / "vsftpd.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    pem.chmod(0o600)
    return pem, fingerprints(cert).certificate


@contextmanager
def running(work: Path, *, tls: bool = False, max_rate: int = 0) -> Iterator[Vsftpd]:
    # The FTP user must reach its home: pytest's own temp folders are private to root.
    home = Path(tempfile.mkdtemp(prefix="airgap-vsftpd-"))
    home.chmod(0o755)
    work.mkdir(parents=True, exist_ok=True)
    password = _ensure_user(home)
    port, pasv = free_port(), free_port()
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    lines = [
        "listen=YES",
        "listen_ipv6=NO",
        "listen_address=127.0.0.1",
        f"listen_port={port}",
        "background=NO",
        "anonymous_enable=NO",
        "local_enable=YES",
        "write_enable=YES",
        "local_umask=022",
        "pasv_enable=YES",
        "pasv_address=127.0.0.1",
        f"pasv_min_port={pasv}",
        f"pasv_max_port={pasv + 20}",
        "seccomp_sandbox=NO",
        "pam_service_name=vsftpd",
        "secure_chroot_dir=/var/run/vsftpd/empty",
        f"vsftpd_log_file={work / 'vsftpd.log'}",
        "log_ftp_protocol=YES",
        f"local_max_rate={max_rate}",
        "xferlog_enable=YES",
        "connect_from_port_20=NO",
    ]
    fingerprint = None
    if tls:
        pem, fingerprint = _certificate(work)
        lines += [
            "ssl_enable=YES",
            f"rsa_cert_file={pem}",
            "force_local_logins_ssl=YES",
            "force_local_data_ssl=YES",
            "require_ssl_reuse=YES",
        ]
    config = work / "vsftpd.conf"
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([VSFTPD, str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    raise RuntimeError(f"vsftpd did not start: {out}") from None
                time.sleep(0.05)
        yield Vsftpd(port, USER, password, home, fingerprint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        _end_sessions()
        shutil.rmtree(home, ignore_errors=True)


def _end_sessions() -> None:
    """vsftpd serves each connection in processes of its own, which the listener's end
    leaves running: a throttled one whose client went away (Ctrl-C) only notices at its next
    write. The next test's usermod refuses a user with processes."""
    deadline = time.monotonic() + 10
    while subprocess.run(["pkill", "-KILL", "-u", USER], check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {USER} outlive SIGKILL")
        time.sleep(0.05)
