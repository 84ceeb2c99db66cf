"""What goes wrong around a drop box: tampering on the server, impostors, the wrong recipient,
a full spool disk; images through a stock vsftpd. Real appliance, real engine, real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests import vsftpd
from tests.conftest import (
    DockerEngine,
    build_image,
    receiving,
    run_airgap,
    small_disk,
    spawn_airgap,
)
from tests.server.conftest import Server, start_server
from tests.test_remote import _env, _fingerprint, _wait_for

pytestmark = pytest.mark.docker
TAG = "airgap-tamper:1"


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "root", "--tls", "required")  # no --trusted-signer
    yield server
    server.stop()


@pytest.fixture
def image(docker_client: Any) -> Iterator[Any]:
    built = build_image(docker_client, TAG, extra='LABEL tamper="1"\n')
    yield built
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(TAG, force=True)


def _send(server: Server, tmp_path: Path, sign_key: Path, recipient: Path) -> str:
    sent = run_airgap(
        [
            "send",
            TAG,
            "--server",
            f"ftps://sender@127.0.0.1:{server.port}/",
            "--tls-fingerprint",
            _fingerprint(server),
            "-R",
            recipient,
            "--sign-key",
            sign_key,
            "--json",
        ],
        env=_env(tmp_path, server.password("sender")),
    )
    assert sent.returncode == 0, sent.stderr
    bundle_id = str(json.loads(sent.stdout)["id"])
    outgoing = server.root / "pub" / "outgoing"
    _wait_for(lambda: (outgoing / f"{bundle_id}.manifest.json.minisig").exists(), "publish")
    return bundle_id


def _fetch(server: Server, tmp_path: Path, keydir: Path) -> subprocess.CompletedProcess[str]:
    return run_airgap(
        [
            "fetch",
            "--server",
            f"ftps://receiver@127.0.0.1:{server.port}/",
            "--tls-fingerprint",
            _fingerprint(server),
            *receiving(keydir, tmp_path / "state"),
        ],
        env=_env(tmp_path, server.password("receiver")),
    )


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("payload-first", "segment 0 does not match"),
        ("payload-last", "does not match its signed sha256"),
        ("manifest", "signature"),
        ("signature", "signature"),
        ("impostor", "not trusted"),
        ("other-recipient", "no identity"),
    ],
)
def test_tampering_on_the_server_is_refused_and_nothing_is_loaded(
    docker_client: Any,
    image: Any,
    appliance: Server,
    keydir: Path,
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    sign_key, recipient = keydir / "signing.key", keydir / "recipient.txt"
    if case in ("impostor", "other-recipient"):
        other = tmp_path / "other"
        assert run_airgap(["keygen", "--out", other]).returncode == 0
        if case == "impostor":
            sign_key = other / "signing.key"
        else:
            recipient = other / "recipient.txt"
    bundle_id = _send(appliance, tmp_path, sign_key, recipient)
    outgoing = appliance.root / "pub" / "outgoing"
    if case == "payload-first":
        _flip(outgoing / f"{bundle_id}.tar.zst.age", 200)
    elif case == "payload-last":
        _flip(outgoing / f"{bundle_id}.tar.zst.age", -2)
    elif case == "manifest":
        _flip(outgoing / f"{bundle_id}.manifest.json", 40)
    elif case == "signature":
        _flip(outgoing / f"{bundle_id}.manifest.json.minisig", -5)
    docker_client.images.remove(TAG, force=True)
    fetched = _fetch(appliance, tmp_path, keydir)
    assert fetched.returncode == 3, fetched.stderr
    assert message in fetched.stderr.lower() or message in fetched.stderr
    assert "Traceback" not in fetched.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(TAG)


def test_a_full_spool_disk_is_a_clear_error_and_the_next_run_works(
    image: Any, appliance: Server, keydir: Path, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "small-cache", "64k") as cache:
        args = [
            "send",
            TAG,
            "--server",
            f"ftps://sender@127.0.0.1:{appliance.port}/",
            "--tls-fingerprint",
            _fingerprint(appliance),
            "-R",
            keydir / "recipient.txt",
            "--sign-key",
            keydir / "signing.key",
        ]
        env = {**_env(tmp_path, appliance.password("sender")), "XDG_CACHE_HOME": str(cache)}
        full = run_airgap(args, env=env)
        assert full.returncode == 1, full.stderr
        assert "not enough space" in full.stderr and "Traceback" not in full.stderr
    again = run_airgap(args, env=_env(tmp_path, appliance.password("sender")))
    assert again.returncode == 0, again.stderr
    assert len(list((appliance.root / "pub" / "outgoing").glob("*.minisig"))) == 1


@pytest.mark.skipif(vsftpd.available() is not None, reason=str(vsftpd.available()))
def test_image_round_trip_through_a_stock_vsftpd(
    docker_engine: DockerEngine, keydir: Path, tmp_path: Path
) -> None:
    """On every engine of the matrix; vsftpd offers no HASH, so the sender checks nothing more."""
    docker_client = docker_engine.client
    image = build_image(docker_client, TAG, extra='LABEL vsftpd="1"\n')
    try:
        with vsftpd.running(tmp_path / "ftp") as ftp:
            url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
            sent = run_airgap(
                [
                    "send",
                    TAG,
                    "--server",
                    url,
                    "-R",
                    keydir / "recipient.txt",
                    "--sign-key",
                    keydir / "signing.key",
                ],
                env={**_env(tmp_path, ftp.password), **docker_engine.env},
            )
            assert sent.returncode == 0, sent.stderr
            docker_client.images.remove(TAG, force=True)
            fetched = run_airgap(
                [
                    "fetch",
                    "--server",
                    url,
                    "-i",
                    keydir / "identity.txt",
                    "--trust",
                    keydir / "signing.pub",
                    "--state-dir",
                    tmp_path / "state",
                ],
                env={**_env(tmp_path, ftp.password), **docker_engine.env},
            )
            assert fetched.returncode == 0, fetched.stderr
            assert docker_client.images.get(TAG).id == image.id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(TAG, force=True)


@pytest.mark.skipif(vsftpd.available() is not None, reason=str(vsftpd.available()))
def test_fetch_killed_mid_load_loads_nothing_then_resumes(
    docker_client: Any, keydir: Path, tmp_path: Path
) -> None:
    """The engine reads the archive as it is downloaded; killing fetch then leaves no image,
    and the rerun completes from the spool without downloading it all again."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(12 << 20))
    big = build_image(
        docker_client, "airgap-midload:1", extra="COPY blob.bin /blob.bin\n", files=[blob]
    )
    try:
        with vsftpd.running(tmp_path / "ftp", max_rate=3 << 20) as ftp:
            url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
            sent = run_airgap(
                [
                    "send",
                    "airgap-midload:1",
                    "--server",
                    url,
                    "-R",
                    keydir / "recipient.txt",
                    "--sign-key",
                    keydir / "signing.key",
                ],
                env=_env(tmp_path, ftp.password),
            )
            assert sent.returncode == 0, sent.stderr
            docker_client.images.remove("airgap-midload:1", force=True)
            args = [
                "fetch",
                "--server",
                url,
                "-i",
                str(keydir / "identity.txt"),
                "--trust",
                str(keydir / "signing.pub"),
                "--state-dir",
                str(tmp_path / "state"),
            ]
            fetch = spawn_airgap(args, env=_env(tmp_path, ftp.password))
            spools = tmp_path / "cache" / "airgap" / "fetch"
            _wait_for(
                lambda: (
                    sum(p.stat().st_size for p in spools.rglob("*.age")) > 4 << 20
                    if spools.exists()
                    else False
                ),
                "the download and load to be under way",
            )
            fetch.send_signal(signal.SIGKILL)
            fetch.communicate(timeout=30)
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get("airgap-midload:1")
            again = run_airgap(args, env=_env(tmp_path, ftp.password))
            assert again.returncode == 0, again.stderr
            assert docker_client.images.get("airgap-midload:1").id == big.id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove("airgap-midload:1", force=True)
