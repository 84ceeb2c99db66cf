"""Unpacking into an output directory others can write into, on another file system than its
parent (a shared 1777 tmpfs): nothing airgap writes there follows a link or reuses a name
someone prepared, before or during the run."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import airgap.client.extract as extract
from airgap.client.fetch import Destination, fetch_bundles
from airgap.client.ledger import Ledger
from airgap.client.send import send_files
from airgap.client.transport import DirectoryTransport
from airgap.shared import age, minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import StorageError
from airgap.shared.manifest import MIN_SEGMENT
from tests.conftest import run_airgap, small_disk

IDENTITY = age.X25519Identity.generate()
SIGNER = minisign.SecretKey.generate()
OPTIONS = EncodeOptions([IDENTITY.recipient], level=1, segment_size=MIN_SEGMENT)
CONTENT = os.urandom(MIN_SEGMENT + 1000)
VICTIM = b"the victim's own bytes\n"


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    source = tmp_path / "hello.txt"
    source.write_bytes(CONTENT)
    send_files([source], DirectoryTransport(tmp_path / "drop"), options=OPTIONS, key=SIGNER)
    return tmp_path / "drop"


@pytest.fixture
def shared_out(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at OUT, mode 1777 like /tmp: another file system than OUT's parent,
    where the staging directory goes, and writable by every local user."""
    with small_disk(tmp_path / "out", "8m") as out:
        out.chmod(0o1777)  # the shared directory under test
        assert out.stat().st_dev != tmp_path.stat().st_dev
        yield out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def _plant_links(out: Path, victim: Path) -> list[str]:
    """Symlinks to ``victim`` at the hidden names an unpacker might use for its copy."""
    names = [".hello.txt.airgap-copy", ".hello.txt.tmp", ".hello.txt.part", ".airgap-copy-"]
    for name in names:
        (out / name).symlink_to(victim)
    return names


def _only_hello_and(out: Path, planted: list[str]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(["hello.txt", *planted])
    placed = os.lstat(out / "hello.txt")
    assert stat.S_ISREG(placed.st_mode), "hello.txt must be a regular file, not a link"
    assert placed.st_nlink == 1, "a temporary copy is left behind"
    assert (out / "hello.txt").read_bytes() == CONTENT
    for name in planted:
        assert (out / name).is_symlink()  # someone else's entry: neither used nor removed


def test_cli_fetch_into_a_shared_mount_writes_through_no_planted_link(
    drop: Path, shared_out: Path, victim: Path, tmp_path: Path
) -> None:
    planted = _plant_links(shared_out, victim)
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)  # a secret key others may read is refused
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    result = run_airgap(
        [
            "fetch",
            "--from",
            drop,
            "-i",
            tmp_path / "id.txt",
            "--trust",
            tmp_path / "trusted.pub",
            "--output-dir",
            shared_out,
            "--state-dir",
            tmp_path / "state",
        ]
    )
    assert victim.read_bytes() == VICTIM
    assert result.returncode == 0, result.stderr
    _only_hello_and(shared_out, planted)


def test_a_link_planted_at_the_final_name_during_the_run_is_refused(
    drop: Path, shared_out: Path, victim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted after the clash check (while the bundle streams in): refused, nothing written
    through it, nothing of the bundle left in OUT."""
    unpack = extract._unpack

    def unpack_then_plant(*args: Any, **kwargs: Any) -> None:
        unpack(*args, **kwargs)
        (shared_out / "hello.txt").symlink_to(victim)

    monkeypatch.setattr(extract, "_unpack", unpack_then_plant)
    planted = _plant_links(shared_out, victim)
    outcomes = fetch_bundles(
        DirectoryTransport(drop),
        Destination(shared_out),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "state" / "ledger.jsonl"),
    )
    assert victim.read_bytes() == VICTIM
    assert len(outcomes) == 1 and isinstance(outcomes[0].error, StorageError)
    assert sorted(p.name for p in shared_out.iterdir()) == sorted(["hello.txt", *planted])
    assert (shared_out / "hello.txt").readlink() == victim


def test_a_staging_folder_another_fetch_holds_is_left_alone(tmp_path: Path) -> None:
    """Found in review: two fetches into one directory, each with a ledger of its own (so no
    lock between them): the second removed the first one's staging folder mid-way, as if a
    crash had left it, and the first failed."""
    import fcntl
    import time

    out = tmp_path / "inbox"
    out.mkdir()
    prefix = f"{extract.STAGING_PREFIX}inbox-"
    old = time.time() - 3600
    held, crashed, fresh = (tmp_path / (prefix + n) for n in ("held", "crashed", "fresh"))
    for folder in (held, crashed, fresh):
        folder.mkdir()
        (folder / "part").write_bytes(b"x")
    for folder in (held, crashed):
        os.utime(folder, (old, old))
    other = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(other, fcntl.LOCK_EX)  # another fetch, unpacking there
    try:
        staging, lock = extract._staging(out)
        try:
            assert held.is_dir() and (held / "part").exists()
            assert fresh.is_dir()  # just made: not locked yet, maybe
            assert not crashed.exists()
            assert staging.parent == tmp_path and staging.name.startswith(prefix)
            # This run's folder is held too: another run leaves it be.
            os.utime(staging, (old, old))
            second, second_lock = extract._staging(out)
            assert staging.is_dir()
            os.close(second_lock)
            second.rmdir()
        finally:
            os.close(lock)
            staging.rmdir()
    finally:
        os.close(other)
