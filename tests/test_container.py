"""The appliance's and the client's container images, built offline, driven on loopback.

The images are built as `make images` builds them: from the wheelhouse only, with no network during
the build (``network_mode="none"``), on the official Python base when the engine has it, else on
the debootstrap-made ``airgap-base:bookworm`` (CI has no registry; made once, ~40 s). Docker's
layer cache makes the rebuild a no-op when nothing changed. Containers run with ``--network
host`` on a free loopback port and a named volume, and are removed afterwards with the volume.

Evidence is what a user would see: the book's lftp walk-through round-tripping a real
``docker save`` archive back into the engine, bytes on the volume, ftplib replies for each role,
the uid of the serving process, the health status, and the exit code after ``docker stop``;
for the client image, an image sent and fetched back through the engine's socket, by its id.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import json
import os
import random
import re
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

from tests.conftest import build_image, run_airgap, whole_text
from tests.server.conftest import start_server
from tests.server.test_limits import ReusingTLS

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ROOT / "containers"
TAG = "airgap-server:test"
CLIENT_TAG = "airgap-client:test"
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


def build_side(docker_client: Any, side: str, tag: str) -> Any:
    """containers/SIDE/Dockerfile built as `make images` builds it, tagged ``tag``."""
    base = OFFICIAL_BASE
    try:
        docker_client.images.get(OFFICIAL_BASE)
    except docker.errors.ImageNotFound:
        make("base-image")
        base = LOCAL_BASE
    make("wheelhouse")
    try:
        previous = docker_client.images.get(tag).id
    except docker.errors.ImageNotFound:
        previous = None
    try:
        image, _ = docker_client.images.build(
            path=str(CONTEXT),
            dockerfile=f"{side}/Dockerfile",
            buildargs={"BASE_IMAGE": base},
            tag=tag,
            network_mode="none",  # proves the build needs nothing but the context
            rm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
        pytest.fail(f"building {tag} on {base} failed: {exc}\n{log[-3000:]}")
    if previous not in (None, image.id):  # an older build would pile up, untagged, run after run
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(previous)
    remove_old_install_stages(docker_client)
    return image


def remove_old_install_stages(docker_client: Any) -> None:
    """As `make images` does: the install stage of every build with a new wheel stays behind,
    untagged; all but the newest (the cache of the next build) go."""
    stages = docker_client.images.list(filters={"dangling": True, "label": "airgap.stage=install"})
    stages.sort(key=lambda image: str(image.attrs["Created"]), reverse=True)
    for stage in stages[1:]:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(stage.id)


@pytest.fixture(scope="module")
def server_image(docker_client: Any) -> Any:
    return build_side(docker_client, "server", TAG)


@pytest.fixture(scope="module")
def client_image(docker_client: Any) -> Any:
    return build_side(docker_client, "client", CLIENT_TAG)


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
        lines = whole_text(running.volume / "state/audit.jsonl").splitlines()
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
    (tmp_path / "bundle").mkdir()
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
        ftps = ReusingTLS(context=tls, timeout=30)  # the appliance requires TLS reuse
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


HOST_UID = 4242  # an ordinary user of the host: neither root nor the image's own uid


def client_run(config: Path, password: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The client image as containers/client/Dockerfile shows it, run by the owner of
    ``config`` (``--user "$(id -u):$(id -g)"``); the password through the environment."""
    socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    socket_path = socket_path.removeprefix("unix://")  # the engine docker_client talks to
    socket_gid = str(Path(socket_path).stat().st_gid)
    command = ["docker", "run", "--rm", "--network", "host", "--user", f"{HOST_UID}:{HOST_UID}"]
    command += ["-v", f"{socket_path}:/var/run/docker.sock", "--group-add", socket_gid]
    command += ["-v", f"{config}:/home/airgap/.config/airgap", "-e", "AIRGAP_PASSWORD"]
    command += [CLIENT_TAG, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    return subprocess.run(
        command,
        env={**env, "AIRGAP_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_client_image_sends_and_fetches_an_image_through_the_engine_socket(
    docker_client: Any, server_image: Any, client_image: Any, tmp_path: Path
) -> None:
    """README, "The same job, safely": each side set up with `airgap init` on its host, then
    plain `send IMAGE` and `fetch` from the airgap-client image with the Docker socket and the
    config directory mounted, through the appliance's container."""
    tag = f"airgap-client-job:{uuid.uuid4().hex[:12]}"
    image = build_image(docker_client, tag)
    try:
        with appliance(docker_client, users=True) as running:
            logs = running.container.logs().decode(errors="replace")
            pin = re.search(r"certificate (sha256:[0-9a-f]{64})", logs)
            assert pin, logs
            url = f"ftps://{{}}@127.0.0.1:{running.port}/"
            sender, receiver = tmp_path / "sender", tmp_path / "receiver"
            for config, role, user in ((sender, "sender", "alice"), (receiver, "receiver", "rita")):
                init = ["init", "--role", role, "--dir", str(config), "--server", url.format(user)]
                made = run_airgap([*init, "--tls-fingerprint", pin.group(1)])
                assert made.returncode == 0, made.stderr
            with (sender / "recipients.txt").open("a") as recipients:
                recipients.write((receiver / "keys" / "recipient.txt").read_text())
            shutil.copy(sender / "keys" / "signing.pub", receiver / "trusted" / "sender.pub")
            for config in (sender, receiver):  # the host user's files, keys/ 0700 as init made
                for path in [config, *config.rglob("*")]:
                    os.chown(path, HOST_UID, HOST_UID)

            sent = client_run(sender, running.passwords["alice"], "send", tag)
            assert sent.returncode == 0, sent.stderr
            assert "sent bundle" in sent.stderr
            outgoing = running.volume / "pub" / "outgoing"
            deadline = time.monotonic() + 60
            while not list(outgoing.glob("*.minisig")) and time.monotonic() < deadline:
                time.sleep(0.2)  # the appliance checks the bundle before publishing it
            assert list(outgoing.glob("*.minisig")), "the bundle was never published"

            docker_client.images.remove(tag, force=True)
            fetched = client_run(receiver, running.passwords["rita"], "fetch")
            assert fetched.returncode == 0, fetched.stderr
            assert tag in fetched.stderr
        assert docker_client.images.get(tag).id == image.id
        output = docker_client.containers.run(tag, remove=True, network_mode="host")
        assert output.strip() == b"hi"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def test_docker_stop_ends_a_send_in_the_client_image_at_once_and_it_resumes(
    client_image: Any, keydir: Path, tmp_path: Path
) -> None:
    """airgap is the client container's PID 1, which the kernel spares every signal it has no
    handler for: `docker stop` used to wait its 10 s and then kill. It now ends the send as
    Ctrl-C does (exit 130, the hint to continue), and the same send then completes."""
    server = start_server(tmp_path / "root", "--tls", "off", "--max-rate", "1000000")
    name = f"airgap-stop-{uuid.uuid4().hex[:10]}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(8 << 20))  # 8 s at the appliance's 1 MB/s
    for key in ("recipient.txt", "signing.key"):
        shutil.copy(keydir / key, work / key)
    for path in [work, *work.iterdir()]:
        os.chown(path, HOST_UID, HOST_UID)
    url = f"ftp://sender@127.0.0.1:{server.port}/"
    send = ["send", "--file", "/work/big.bin", "--server", url, "-R", "/work/recipient.txt"]
    send += ["--sign-key", "/work/signing.key"]
    command = ["docker", "run", "--network", "host", "--user", f"{HOST_UID}:{HOST_UID}"]
    command += ["-v", f"{work}:/work", "-e", "AIRGAP_PASSWORD", "-e", "XDG_CACHE_HOME=/work/c"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    env["AIRGAP_PASSWORD"] = server.password("sender")
    try:
        subprocess.run([*command, "-d", "--name", name, CLIENT_TAG, *send], env=env, check=True)
        area = server.root / "pub" / "incoming" / "sender"
        deadline = time.monotonic() + 60
        while sum(p.stat().st_size for p in area.glob("*.part")) < 1 << 20:
            assert time.monotonic() < deadline, "the upload never got going"
            time.sleep(0.1)
        started = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "10", name], check=True, capture_output=True)
        stopped = time.monotonic() - started
        state = json.loads(
            subprocess.run(
                ["docker", "inspect", name], check=True, capture_output=True, text=True
            ).stdout
        )[0]["State"]
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
        assert state["ExitCode"] == 130, logs
        assert stopped < 5, f"{stopped:.1f} s: docker stop had to kill it"
        assert "airgap: error: interrupted" in logs and "run the same command again" in logs
        again = subprocess.run(
            [*command, "--rm", CLIENT_TAG, *send], env=env, capture_output=True, text=True
        )
        assert again.returncode == 0, again.stderr
        assert "continuing the interrupted send" in again.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        server.stop()
