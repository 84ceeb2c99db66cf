"""The README's by-hand recovery, run exactly as written, with the real minisign, age and zstd."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_airgap

TOOLS = ("minisign", "age", "zstd", "sha256sum", "tar")


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- by-hand:start -->\n```sh\n(.*?)```\n<!-- by-hand:end -->", text, re.S)
    assert match, "README lost its by-hand block"
    return match.group(1)


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}")
def test_readme_by_hand_recovery_works_as_written(tmp_path: Path, keydir: Path) -> None:
    payload = tmp_path / "data.bin"
    payload.write_bytes(bytes(range(256)) * 5000)
    drop = tmp_path / "drop"
    sent = run_airgap(
        [
            "send",
            "--file",
            payload,
            "--to",
            drop,
            "-R",
            keydir / "recipient.txt",
            "--sign-key",
            keydir / "signing.key",
            "--json",
        ]
    )
    assert sent.returncode == 0, sent.stderr
    bundle_id = re.search(r'"id": "(\w+)"', sent.stdout).group(1)  # type: ignore[union-attr]
    for name in ("signing.pub", "identity.txt"):
        shutil.copy(keydir / name, drop / name)
    script = re.sub(r"^ID=\S+", f"ID={bundle_id}", _readme_block(), flags=re.M)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=drop,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Signature and comment signature verified" in done.stderr + done.stdout
    assert f"{bundle_id}.tar.zst.age: OK" in done.stdout
    assert (drop / "unpacked" / "data.bin").read_bytes() == payload.read_bytes()


@pytest.mark.skipif(shutil.which("minisign") is None, reason="needs minisign")
def test_by_hand_check_refuses_a_modified_manifest(tmp_path: Path, keydir: Path) -> None:
    (tmp_path / "f").write_text("x")
    drop = tmp_path / "drop"
    sent = run_airgap(
        [
            "send",
            "--file",
            tmp_path / "f",
            "--to",
            drop,
            "--no-encrypt",
            "--sign-key",
            keydir / "signing.key",
        ]
    )
    assert sent.returncode == 0, sent.stderr
    manifest = next(drop.glob("*.manifest.json"))
    manifest.write_bytes(manifest.read_bytes().replace(b'"size": 1', b'"size": 2', 1))
    check = subprocess.run(
        ["minisign", "-Vm", str(manifest), "-p", str(keydir / "signing.pub")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode != 0
