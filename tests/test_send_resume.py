"""Continuing an interrupted passphrase send through a stock vsftpd: only with the passphrase
it was encrypted to, and never into a new bundle under a passphrase nobody chose."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import vsftpd
from tests.conftest import run_airgap
from tests.test_remote import _env, needs_vsftpd

pytestmark = needs_vsftpd


def _send(
    ftp: vsftpd.Vsftpd, keydir: Path, tmp_path: Path, *extra: str | Path, password: str = ""
) -> subprocess.CompletedProcess[str]:
    url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
    args = ["send", "--file", tmp_path / "report.txt", "--server", url, "--passphrase"]
    env = _env(tmp_path, password or ftp.password, AIRGAP_RETRIES="1")
    env["AIRGAP_PASSPHRASE"] = "the right passphrase"
    return run_airgap([*args, "--sign-key", keydir / "signing.key", "--json", *extra], env=env)


def _interrupted(tmp_path: Path) -> str:
    (spool,) = (tmp_path / "cache" / "airgap" / "send").iterdir()
    return spool.name


def test_a_passphrase_send_continues_only_with_its_passphrase(keydir: Path, tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_bytes(os.urandom(300_000))
    with vsftpd.running(tmp_path / "ftp") as ftp:
        refused = _send(ftp, keydir, tmp_path, password="not the password")
        assert refused.returncode == 4, refused.stderr
        bundle_id = _interrupted(tmp_path)

        env = _env(tmp_path, ftp.password)
        url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
        other = run_airgap(
            [
                "send",
                "--file",
                tmp_path / "report.txt",
                "--server",
                url,
                "--passphrase",
                "--sign-key",
                keydir / "signing.key",
            ],
            env={**env, "AIRGAP_PASSPHRASE": "another passphrase"},
        )
        assert other.returncode == 2 and "another passphrase" in other.stderr, other.stderr

        again = _send(ftp, keydir, tmp_path)
        assert again.returncode == 0, again.stderr
        assert f"continuing the interrupted send of bundle {bundle_id}" in again.stderr


def test_a_resume_that_cannot_repeat_its_bytes_never_invents_a_passphrase(
    keydir: Path, tmp_path: Path
) -> None:
    (tmp_path / "report.txt").write_bytes(os.urandom(300_000))
    with vsftpd.running(tmp_path / "ftp") as ftp:
        assert _send(ftp, keydir, tmp_path, password="not the password").returncode == 4
        bundle_id = _interrupted(tmp_path)
        spool = tmp_path / "cache" / "airgap" / "send" / bundle_id
        for made in spool.glob(f"{bundle_id}.*"):  # as if killed before the payload was whole
            made.unlink()
        (spool / f"{bundle_id}.tar.zst.age.part").write_bytes(b"not what it encodes to")

        url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
        resumed = run_airgap(
            ["send", "--resume", bundle_id, "--server", url, "--sign-key", keydir / "signing.key"],
            env=_env(tmp_path, ftp.password),
        )
        assert resumed.returncode == 2, resumed.stderr
        assert "its passphrase is not known here" in resumed.stderr
        published = [p.name for p in ftp.home.iterdir() if p.name.endswith(".minisig")]
        assert published == []


@pytest.mark.parametrize("value", ["../../etc", "x"])
def test_resume_takes_only_a_bundle_id(value: str, keydir: Path, tmp_path: Path) -> None:
    bad = run_airgap(["send", "--resume", value, "--server", "ftp://u@127.0.0.1:1/"])
    assert bad.returncode == 2 and "is not a bundle id" in bad.stderr
