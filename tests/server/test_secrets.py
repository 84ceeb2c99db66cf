"""What the appliance trusts at start, checked as sshd checks its keys: files holding secrets
are the server's alone; the trusted signers and the config file were written by no one else.
Real CLI: each refused start exits 1 and names the file, the reason and the way out."""

from __future__ import annotations

import os
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


def test_a_trusted_signer_mounted_from_the_host_may_belong_to_another_user(
    keydir: Path, tmp_path: Path
) -> None:
    """In a container the host's operator mounts the key, owned by a user the container has
    not: only whether others may write it is asked there."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    signer = mounted / "signing.pub"
    signer.write_text((keydir / "signing.pub").read_text())
    for path in (signer, mounted):
        os.chown(path, 12345, 12345)
    assert written_by_others(signer) == "it belongs to another user (uid 12345)"
    assert written_by_others(signer, owners=False) is None
    server = start_server(tmp_path / "root", "--tls", "off", "--trusted-signer", str(signer))
    try:
        assert "publishing bundles signed by" in server.stderr
    finally:
        assert server.stop() == 0
    signer.chmod(0o646)
    assert written_by_others(signer, owners=False) == "others may write it (mode 0646)"
