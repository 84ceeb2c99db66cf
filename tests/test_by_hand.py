"""The README's by-hand recovery, run exactly as written, with the real minisign, age and zstd."""

from __future__ import annotations

import hashlib
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


def _send(tmp_path: Path, keydir: Path, payload: Path) -> tuple[Path, str]:
    drop = tmp_path / "drop"
    drop.mkdir()
    args: list[str | Path] = [
        "send",
        "--file",
        payload,
        "--to",
        drop,
        "-R",
        keydir / "recipient.txt",
    ]
    sent = run_airgap([*args, "--sign-key", keydir / "signing.key", "--json"])
    assert sent.returncode == 0, sent.stderr
    bundle_id = re.search(r'"id": "(\w+)"', sent.stdout).group(1)  # type: ignore[union-attr]
    for name in ("signing.pub", "identity.txt"):
        shutil.copy(keydir / name, drop / name)
    return drop, bundle_id


def _by_hand(drop: Path, bundle_id: str) -> subprocess.CompletedProcess[str]:
    script = re.sub(r"^ID=\S+", f"ID={bundle_id}", _readme_block(), flags=re.M)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=drop,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"
)


@needs_tools
def test_readme_by_hand_recovery_works_as_written(tmp_path: Path, keydir: Path) -> None:
    payload = tmp_path / "data.bin"
    payload.write_bytes(bytes(range(256)) * 5000)
    drop, bundle_id = _send(tmp_path, keydir, payload)
    done = _by_hand(drop, bundle_id)
    assert done.returncode == 0, done.stderr
    assert (drop / "trusted-comment.txt").read_text().startswith(f"airgap-bundle/1 id={bundle_id} ")
    assert f"{bundle_id}.tar.zst.age: OK" in done.stdout
    assert (drop / "unpacked" / "data.bin").read_bytes() == payload.read_bytes()


@needs_tools
def test_by_hand_takes_the_payload_hash_from_the_signed_comment_only(
    tmp_path: Path, keydir: Path
) -> None:
    """Found in review: minisign reads four lines of a .minisig and ignores the rest, so a
    line appended there naming a swapped payload's hash fooled a grep over the whole file."""
    payload = tmp_path / "data.bin"
    payload.write_bytes(b"the sender's own bytes\n")
    drop, bundle_id = _send(tmp_path, keydir, payload)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "evil.txt").write_text("not from the sender\n")
    swapped = drop / f"{bundle_id}.tar.zst.age"
    pack = 'tar -C "$1" -c evil.txt | zstd -q | age -R "$2" > "$3"'
    subprocess.run(["bash", "-c", pack, "-", evil, keydir / "recipient.txt", swapped], check=True)
    digest = hashlib.sha256(swapped.read_bytes()).hexdigest()
    with (drop / f"{bundle_id}.manifest.json.minisig").open("a") as signature:
        signature.write(f"payload-sha256={digest}\n")
    done = _by_hand(drop, bundle_id)
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr
    assert not (drop / "unpacked" / "evil.txt").exists()


@pytest.mark.skipif(shutil.which("minisign") is None, reason="needs minisign")
def test_by_hand_check_refuses_a_modified_manifest(tmp_path: Path, keydir: Path) -> None:
    (tmp_path / "f").write_text("x")
    drop = tmp_path / "drop"
    drop.mkdir()
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
