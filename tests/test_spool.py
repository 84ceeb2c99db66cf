"""The spool's continued writer: an interrupted upload's bytes are compared, never rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airgap.client.spool import ContinueMismatch, SpooledTransport
from airgap.client.transport import DirectoryTransport

DATA = os.urandom(3 << 20)


def _spooled(tmp_path: Path) -> tuple[SpooledTransport, Path]:
    remote = tmp_path / "remote"
    return SpooledTransport(DirectoryTransport(remote), tmp_path / "spool"), remote


def test_a_continued_write_checks_the_spooled_prefix_and_uploads_the_rest(tmp_path: Path) -> None:
    spooled, remote = _spooled(tmp_path)
    (tmp_path / "spool" / "p.part").write_bytes(DATA[: 2 << 20])  # what the killed send spooled
    remote.mkdir()
    (remote / "p.part").write_bytes(DATA[:12345])  # what reached the server
    with spooled.continued_writer("p.part") as out:
        for start in range(0, len(DATA), 100_000):
            out.write(DATA[start : start + 100_000])
    assert (tmp_path / "spool" / "p.part").read_bytes() == DATA
    assert (remote / "p.part").read_bytes() == DATA
    assert spooled.sent == len(DATA) - 12345  # only what the server lacked


def test_a_continued_write_that_differs_is_refused_and_nothing_more_goes_up(
    tmp_path: Path,
) -> None:
    spooled, remote = _spooled(tmp_path)
    (tmp_path / "spool" / "p.part").write_bytes(DATA[: 2 << 20])
    remote.mkdir()
    (remote / "p.part").write_bytes(DATA[:1000])
    changed = bytearray(DATA)
    changed[1 << 20] ^= 1
    out = spooled.continued_writer("p.part")
    with pytest.raises(ContinueMismatch, match=f"at byte {1 << 20}:"):
        out.write(bytes(changed))
        out.flush()
    out.close()
    assert spooled.sent == 0  # the spool's old bytes were never compared, so never sent
    assert (remote / "p.part").stat().st_size == 1000


def test_spool_folders_are_private_all_the_way_down(tmp_path: Path) -> None:
    SpooledTransport(DirectoryTransport(tmp_path / "remote"), tmp_path / "a" / "b" / "spool")
    for folder in ("a", "a/b", "a/b/spool"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700, folder
