"""The appliance's container image, built offline and driven by real clients on loopback.

The image is built as `make images` builds it: from the wheelhouse only, with no network during
the build (``network_mode="none"``), on the official Python base when the engine has it, else on
the debootstrap-made ``airgap-base:bookworm`` (CI has no registry; made once, ~40 s). Docker's
layer cache makes the rebuild a no-op when nothing changed. Containers run with ``--network
host`` on a free loopback port and a named volume, and are removed afterwards with the volume.

Evidence is what a user would see: the book's lftp walk-through round-tripping a real
``docker save`` archive back into the engine, bytes on the volume, ftplib replies for each role,
the uid of the serving process, the health status, and the exit code after ``docker stop``.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import run_airgap

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ROOT / "containers"
TAG = "airgap-server:test"
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "airgap-base:bookworm"
UID = 10001  # the Dockerfile's AIRGAP_UID
BUSYBOX = Path("/bin/busybox")
BOOK_IMAGE = f"airgap-book:{uuid.uuid4().hex[:12]}"  # unique: suites may run side by side


def make(*targets: str) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # pip's warnings come first on stderr; the reason is at the end.
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
    assert done.returncode == 0, f"make {' '.join(targets)} failed, ending with:\n{tail}"


@pytest.fixture(scope="module")
def server_image(docker_client: Any) -> Any:
    base = OFFICIAL_BASE
    try:
        docker_client.images.get(OFFICIAL_BASE)
    except docker.errors.ImageNotFound:
        make("base-image")
        base = LOCAL_BASE
    make("wheelhouse")
    try:
        previous = docker_client.images.get(TAG).id
    except docker.errors.ImageNotFound:
        previous = None
    try:
        image, _ = docker_client.images.build(
            path=str(CONTEXT),
            dockerfile="server/Dockerfile",
            buildargs={"BASE_IMAGE": base},
            tag=TAG,
            network_mode="none",  # proves the build needs nothing but the context
            rm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
        pytest.fail(f"building {TAG} on {base} failed: {exc}\n{log[-3000:]}")
    if previous not in (None, image.id):  # an older build would pile up, untagged, run after run
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(previous)
    return image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_range(count: int = 20) -> str:
    """Ports free now, below the ephemeral range so the kernel does not hand them out meanwhile."""
    for _ in range(50):
        first = random.randrange(20000, 32000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"{first}-{first + count - 1}"
    raise AssertionError("no free passive port range on 127.0.0.1")


@dataclass(frozen=True)
class Appliance:
    container: Any
    port: int
    volume: Path  # the named volume's directory on this host (tests run as root, as CI does)
    passwords: dict[str, str]


def add_user(docker_client: Any, volume: str, name: str, role: str, password: str) -> None:
    """`airgap user add --password-stdin` in a one-off container; the password is never argv."""
    docker_client.containers.run(
        TAG,
        entrypoint=[
            "sh",
            "-c",
            'printf %s "$PW" | airgap user add "$0" --role "$1" '
            "--password-stdin --root /srv/airgap",
            name,
            role,
        ],
        environment={"PW": password},
        volumes={volume: {"bind": "/srv/airgap", "mode": "rw"}},
        network_mode="none",
        remove=True,
    )


def wait_healthy(container: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        if state["Status"] != "running":
            pytest.fail(f"the appliance exited ({state['ExitCode']}):\n{container.logs().decode()}")
        if state.get("Health", {}).get("Status") == "healthy":
            return dict(state["Health"])
        time.sleep(0.5)
    pytest.fail(f"the appliance never became healthy:\n{container.logs().decode()[-3000:]}")


@contextlib.contextmanager
def appliance(docker_client: Any, *serve_args: str, users: bool = False) -> Iterator[Appliance]:
    volume = docker_client.volumes.create(f"airgap-test-{uuid.uuid4().hex[:12]}")
    container = None
    try:
        passwords = {"alice": secrets.token_urlsafe(18), "rita": secrets.token_urlsafe(18)}
        if users:
            add_user(docker_client, volume.name, "alice", "sender", passwords["alice"])
            add_user(docker_client, volume.name, "rita", "receiver", passwords["rita"])
        port = free_port()
        container = docker_client.containers.run(
            TAG,
            [
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--passive-ports",
                free_port_range(),
                *serve_args,
            ],
            network_mode="host",
            volumes={volume.name: {"bind": "/srv/airgap", "mode": "rw"}},
            # The image's own check, polled every second instead of every ten.
            healthcheck={"interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 3},
            detach=True,
        )
        wait_healthy(container)
        yield Appliance(container, port, Path(volume.attrs["Mountpoint"]), passwords)
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        volume.remove(force=True)


@pytest.fixture(scope="module")
def book_appliance(docker_client: Any, server_image: Any) -> Iterator[Appliance]:
    """The ch9_ftpd replacement in the book's mode, with accounts as well."""
    with appliance(
        docker_client, "--tls", "off", "--anonymous", "read-write", users=True
    ) as running:
        yield running


def lftp(port: int, script: str, *, cwd: Path) -> str:
    """The book's command line, `lftp -e '...; exit' HOST`, with -p for our port.

    HOME points at an rc file that bounds lftp's retries (it otherwise retries for ever) and
    makes a failed command fail the run; the command line itself stays the book's.
    """
    (cwd / ".lftprc").write_text(
        "set cmd:fail-exit yes\nset net:max-retries 2\nset net:timeout 15\n"
        "set net:reconnect-interval-base 1\n"
    )
    done = subprocess.run(
        ["lftp", "-e", script, "-p", str(port), "127.0.0.1"],
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"lftp -e {script!r}: {done.returncode}\n{done.stderr}"
    return done.stdout


def audited(running: Appliance, event: str, file: str, timeout: float = 15) -> str | None:
    """The sha256 (or "" if none) of the first `event` on `file` in the volume's audit log.

    Uploads are hashed off the IO loop, so their entry may trail the 226 by a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        lines = (running.volume / "state/audit.jsonl").read_text().splitlines()
        for entry in map(json.loads, lines):
            if entry["event"] == event and entry.get("file") == file:
                return str(entry.get("sha256", ""))
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def test_the_book_walk_through_round_trips_an_image(
    docker_client: Any, book_appliance: Appliance, tmp_path: Path
) -> None:
    if not BUSYBOX.exists():
        pytest.fail("busybox-static is not installed (/bin/busybox); .ci/run installs it")
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(BUSYBOX, Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox", "echo", "book"]\n'
        )
        image, _ = docker_client.images.build(path=context, tag=BOOK_IMAGE, rm=True)
    sender, receiver = tmp_path / "sender", tmp_path / "receiver"
    sender.mkdir()
    receiver.mkdir()
    archive = sender / "registry.2.tar"
    with archive.open("wb") as out:  # docker save -o registry.2.tar
        for chunk in image.save(named=True):
            out.write(chunk)
    docker_client.images.remove(BOOK_IMAGE, force=True)

    lftp(book_appliance.port, "cd pub/incoming; put registry.2.tar; exit", cwd=sender)
    listing = lftp(book_appliance.port, "cd pub/incoming; ls; exit", cwd=receiver)
    lftp(book_appliance.port, "cd pub/incoming; get registry.2.tar; exit", cwd=receiver)

    assert "registry.2.tar" in listing
    fetched = receiver / "registry.2.tar"
    assert fetched.read_bytes() == archive.read_bytes()
    assert (book_appliance.volume / "pub/incoming/registry.2.tar").read_bytes() == (
        archive.read_bytes()
    )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert audited(book_appliance, "upload-completed", "pub/incoming/registry.2.tar") == digest
    downloaded = audited(book_appliance, "download", "pub/incoming/registry.2.tar")
    logs = book_appliance.container.logs().decode(errors="replace")
    assert "Traceback" not in logs, logs[-4000:]
    assert downloaded is not None, "the download is missing from the audit log"
    try:
        loaded = docker_client.images.load(fetched.read_bytes())  # docker load -i registry.2.tar
        assert [i.id for i in loaded] == [image.id]
        output = docker_client.containers.run(BOOK_IMAGE, remove=True, network_mode="host")
        assert output.strip() == b"book"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(BOOK_IMAGE, force=True)


def login(port: int, user: str = "anonymous", password: str = "") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=30)  # plain FTP: this appliance runs with --tls off
    try:
        ftp.connect("127.0.0.1", port)
        ftp.login(user, password)
    except BaseException:
        ftp.close()
        raise
    return ftp


def test_a_bundle_sent_through_the_container_is_published_and_fetched(
    book_appliance: Appliance, keydir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(secrets.token_bytes(300_000))
    made = run_airgap(
        [
            "send",
            "--file",
            report,
            "--to",
            tmp_path / "bundle",
            "-R",
            keydir / "recipient.txt",
            "--sign-key",
            keydir / "signing.key",
        ]
    )
    assert made.returncode == 0, made.stderr
    files = sorted((tmp_path / "bundle").iterdir(), key=lambda f: f.name.endswith(".minisig"))

    sender = login(book_appliance.port, "alice", book_appliance.passwords["alice"])
    try:
        for file in files:  # the signature last, as airgap send does
            with file.open("rb") as data:
                sender.storbinary(f"STOR {file.name}", data)
        sender.storbinary("STOR notes.bin", io.BytesIO(b"not a bundle"))
        with pytest.raises(ftplib.error_perm):  # a completed file is immutable
            sender.storbinary("STOR notes.bin", io.BytesIO(b"overwritten"))
    finally:
        sender.close()
    assert (book_appliance.volume / "pub/incoming/alice/notes.bin").read_bytes() == b"not a bundle"

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    receiver = login(book_appliance.port, "rita", book_appliance.passwords["rita"])
    try:
        wanted = {f.name for f in files}
        deadline = time.monotonic() + 60
        while not wanted <= set(receiver.nlst()) and time.monotonic() < deadline:
            time.sleep(0.5)  # the server checks the payload's sha256 before publishing
        assert wanted <= set(receiver.nlst()), "the bundle was never published"
        assert "notes.bin" not in receiver.nlst()
        for name in wanted:
            with (inbox / name).open("wb") as out:
                receiver.retrbinary(f"RETR {name}", out.write)
        with pytest.raises(ftplib.error_perm):  # receivers do not upload
            receiver.storbinary("STOR upload.bin", io.BytesIO(b"no"))
    finally:
        receiver.close()
    with pytest.raises(ftplib.error_perm):
        login(book_appliance.port, "alice", "not-the-password")

    fetched = run_airgap(
        [
            "fetch",
            "--from",
            inbox,
            "--identity",
            keydir / "identity.txt",
            "--trust",
            keydir / "signing.pub",
            "--output-dir",
            tmp_path / "out",
            "--state-dir",
            tmp_path / "state",
        ]
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "report.bin").read_bytes() == report.read_bytes()


def test_the_server_runs_as_the_image_user_not_root(book_appliance: Appliance) -> None:
    book_appliance.container.reload()
    pid = book_appliance.container.attrs["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(UID)] * 4
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline
    users_file = book_appliance.volume / "state/users.json"
    assert users_file.stat().st_uid == UID
    assert users_file.stat().st_mode & 0o077 == 0


def test_the_healthcheck_reads_the_greeting_and_fails_without_a_server(
    docker_client: Any, book_appliance: Appliance
) -> None:
    health = wait_healthy(book_appliance.container)
    assert health["Log"][-1]["ExitCode"] == 0
    assert health["Log"][-1]["Output"].startswith(f"healthy: 127.0.0.1:{book_appliance.port} 220")

    closed = free_port()  # nothing listens there: the same check must say unhealthy
    with pytest.raises(docker.errors.ContainerError) as refused:
        docker_client.containers.run(
            TAG,
            ["/opt/airgap/healthcheck.py"],
            entrypoint="python3",
            environment={"AIRGAP_SERVE_LISTEN": f"127.0.0.1:{closed}"},
            network_mode="host",
            tmpfs={"/srv/airgap": ""},  # else the image's VOLUME leaves an anonymous volume
            remove=True,
        )
    assert refused.value.exit_status == 1


def test_first_start_with_defaults_then_ftps_and_a_clean_stop(
    docker_client: Any, server_image: Any
) -> None:
    with appliance(docker_client) as running:
        credentials = running.volume / "state/credentials.txt"
        assert credentials.stat().st_uid == UID
        assert credentials.stat().st_mode & 0o777 == 0o600
        accounts = {
            fields[0]: fields[2]
            for line in credentials.read_text().splitlines()
            if len(fields := line.split()) == 3 and not line.startswith("#")
        }
        # The certificate made on first start, trusted as the pinned one a client is given.
        tls = ssl.create_default_context(cafile=running.volume / "state/tls/cert.pem")
        ftps = ftplib.FTP_TLS(context=tls, timeout=30)
        try:
            ftps.connect("127.0.0.1", running.port)
            ftps.login("sender", accounts["sender"])  # AUTH TLS first, then USER/PASS
            ftps.prot_p()
            ftps.storbinary("STOR over-tls.bin", io.BytesIO(b"sealed in transit"))
            ftps.quit()
        finally:
            ftps.close()
        stored = running.volume / "pub/incoming/sender/over-tls.bin"
        assert stored.read_bytes() == b"sealed in transit"
        running.container.stop(timeout=20)
        running.container.reload()
        logs = running.container.logs().decode(errors="replace")
        # 0, not 143 (SIGTERM unhandled) nor 137 (killed after the 20 s grace period).
        assert running.container.attrs["State"]["ExitCode"] == 0, logs[-3000:]
        assert "Traceback" not in logs
