"""What the appliance trusts at start, checked as sshd checks its keys: files holding secrets
are the server's alone; the trusted signers and the config file were written by no one else.
Real CLI: each refused start exits 1 and names the file, the reason and the way out."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from airgap.shared.owners import written_by_others
from tests.conftest import run_airgap
from tests.server.conftest import Server, start_server


@pytest.mark.parametrize(
    ("name", "mode", "holds"),
    [
        ("users.json", 0o644, "the accounts and their password hashes"),
        ("credentials.txt", 0o604, "first-start passwords"),
        ("tls/key.pem", 0o660, "the TLS private key"),
    ],
    ids=["users", "credentials", "tls-key"],
)
def test_a_secret_others_may_read_or_write_stops_serve(
    serve: Callable[..., Server], name: str, mode: int, holds: str
) -> None:
    server = serve("--tls", "off")
    assert server.stop() == 0
    secret = server.root / "state" / name
    secret.chmod(mode)
    again = run_airgap(["serve", "--root", server.root, "--listen", "127.0.0.1:0"], timeout=60)
    assert again.returncode == 1, again.stderr
    assert f"{secret} holds {holds}, and others may read or write it (mode {mode:04o})" in (
        again.stderr
    )
    assert f"hint: make it the server user's alone: chmod 600 {secret}" in again.stderr
    assert "serving" not in again.stderr
    secret.chmod(0o600)
    serve("--tls", "off", root=server.root).ftp("sender").quit()  # served again as it was


def test_a_trusted_signer_or_config_others_may_write_stops_serve(
    keydir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone may swap the files in it
    signer = shared / "signing.pub"
    signer.write_text((keydir / "signing.pub").read_text())
    signer.chmod(0o644)
    root = tmp_path / "root"
    args = ["serve", "--root", root, "--listen", "127.0.0.1:0", "--tls", "off"]
    refused = run_airgap([*args, "--trusted-signer", signer], timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert (
        f"trusted signer {signer} decides which bundles are published, and others may write "
        f"its folder {shared} (mode 0777)"
    ) in refused.stderr
    settings = tmp_path / "serve.toml"
    settings.write_text('anonymous = "read-write"\n')
    settings.chmod(0o666)
    refused = run_airgap([*args, "--config", settings], timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert f"{settings} decides whom the drop box lets in and trusts, and others may write it" in (
        refused.stderr
    )
    assert "WARNING" not in refused.stderr  # its anonymous mode was never read


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files to another user, and mounting, need root")


@pytest.mark.usefixtures("as_root")
def test_a_root_or_state_folder_another_user_owns_stops_serve(
    serve: Callable[..., Server],
) -> None:
    """Found in review: the owner of state/ could put another users.json in place while serve
    ran, which reads it again as it changes; only the files' modes were asked."""
    server = serve("--tls", "off")
    assert server.stop() == 0
    for folder in (server.root, server.root / "state"):
        os.chown(folder, 12345, 12345)
        again = run_airgap(["serve", "--root", server.root, "--listen", "127.0.0.1:0"])
        assert again.returncode == 1, again.stderr
        assert f"{folder} holds the appliance's accounts and keys, and it belongs to another " in (
            again.stderr
        )
        assert f"hint: chown -R 0 {server.root}" in again.stderr
        os.chown(folder, 0, 0)
    users = server.root / "state" / "users.json"
    os.chown(users, 12345, 12345)
    again = run_airgap(["serve", "--root", server.root, "--listen", "127.0.0.1:0"])
    assert "it belongs to another user (uid 12345)" in again.stderr
    assert f"chown 0 {users}; chmod 600 {users}" in again.stderr


@pytest.mark.usefixtures("as_root")
def test_a_trusted_signer_of_another_user_is_taken_on_a_read_only_mount_alone(
    keydir: Path, tmp_path: Path
) -> None:
    """In a container the host's operator mounts the key read-only, owned by a user the
    container has not; anywhere else its owner could swap it (found in review)."""
    host = tmp_path / "host"
    host.mkdir()
    signer = host / "signing.pub"
    signer.write_text((keydir / "signing.pub").read_text())
    for path in (signer, host):
        os.chown(path, 12345, 12345)
    assert written_by_others(signer, mounted=True) == "it belongs to another user (uid 12345)"
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    subprocess.run(["mount", "--bind", str(host), str(mounted)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        inside = mounted / "signing.pub"
        assert written_by_others(inside) == "it belongs to another user (uid 12345)"
        assert written_by_others(inside, mounted=True) is None
        server = start_server(tmp_path / "root", "--tls", "off", "--trusted-signer", str(inside))
        try:
            assert "publishing bundles signed by" in server.stderr
        finally:
            assert server.stop() == 0
        signer.chmod(0o646)  # on the host, anyone may write it: read-only here or not
        assert written_by_others(inside, mounted=True) == "others may write it (mode 0646)"
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_an_empty_setting_in_the_environment_stops_serve(tmp_path: Path) -> None:
    """Found in review: AIRGAP_SERVE_ROOT= (set, and empty) served the current folder."""
    here = tmp_path / "here"
    here.mkdir()
    ran = run_airgap(["serve", "--listen", "127.0.0.1:0"], env={"AIRGAP_SERVE_ROOT": ""}, cwd=here)
    assert ran.returncode == 2, ran.stderr
    assert "AIRGAP_SERVE_ROOT is set, and empty" in ran.stderr
    assert not list(here.iterdir())


def test_a_start_that_fails_leaves_no_root_behind(keydir: Path, tmp_path: Path) -> None:
    """Found in a walkthrough: a mistyped signer path, a secret key given for a public one,
    or a port in use failed the start after a new root, with live first-start passwords, had
    been made."""
    import socket

    root = tmp_path / "root"
    base = ["serve", "--root", root, "--tls", "off"]
    missing = run_airgap([*base, "--listen", "127.0.0.1:0", "--trusted-signer", tmp_path / "x"])
    assert missing.returncode == 1 and f"cannot read {tmp_path / 'x'}" in missing.stderr
    secret = keydir / "signing.key"
    wrong = run_airgap([*base, "--listen", "127.0.0.1:0", "--trusted-signer", secret])
    assert wrong.returncode == 1, wrong.stderr
    assert f"trusted signer {secret} is not a minisign public key" in wrong.stderr
    assert "give a sender's signing.pub" in wrong.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_airgap([*base, "--listen", f"127.0.0.1:{port}"])
    assert busy.returncode == 1, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in busy.stderr
    assert "another process may listen there" in busy.stderr
    assert not root.exists()
