"""The spool's continued writer: an interrupted upload's bytes are compared, never rewritten."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from airgap.client.spool import Backoff, ContinueMismatch, SpooledTransport, UploadRefused
from airgap.client.transport import DirectoryTransport
from airgap.shared.errors import StorageError, TransferError
from tests.conftest import small_disk

DATA = os.urandom(3 << 20)
SHA256 = hashlib.sha256  # the server's own, out of reach of a test's spy on the client's


def _spooled(tmp_path: Path) -> tuple[SpooledTransport, Path]:
    remote = tmp_path / "remote"
    return SpooledTransport(DirectoryTransport(remote), tmp_path / "spool"), remote


def test_a_continued_write_checks_the_spooled_prefix_and_uploads_the_rest(tmp_path: Path) -> None:
    spooled, remote = _spooled(tmp_path)
    (tmp_path / "spool" / "p.part").write_bytes(DATA[: 2 << 20])  # what the killed send spooled
    remote.mkdir()
    (remote / "p.part").write_bytes(DATA[:12345])  # what reached the server
    with spooled.vouched_writer("p.part", continuing=True) as out:
        for start in range(0, len(DATA), 100_000):
            out.write(DATA[start : start + 100_000])
        out.vouch(SHA256(DATA).hexdigest())
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
    out = spooled.vouched_writer("p.part", continuing=True)
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


class _HashingDirectory(DirectoryTransport):
    """A directory that answers ``HASH`` as the appliance does, and counts the questions."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked: list[str] = []

    def features(self) -> set[str]:
        return {"HASH"}

    def hash(self, name: str) -> str | None:
        self.asked.append(name)
        return SHA256((self.root / name).read_bytes()).hexdigest()


def _hashing(tmp_path: Path) -> tuple[SpooledTransport, _HashingDirectory]:
    remote = _HashingDirectory(tmp_path / "remote")
    return SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(first=0.01)), remote


def test_a_vouched_upload_is_checked_against_the_vouched_sha256_without_hashing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spooled, remote = _hashing(tmp_path)
    hashed: list[int] = []
    monkeypatch.setattr(
        "airgap.client.spool.hashlib.sha256", lambda *a: hashed.append(1) or SHA256(*a)
    )
    with spooled.vouched_writer("p.part") as out:
        out.write(DATA)
        out.vouch(SHA256(DATA).hexdigest())
    assert (remote.root / "p.part").read_bytes() == DATA
    assert remote.asked == ["p.part"]
    assert hashed == []  # the upload took the writer's word, and the server's HASH checked it


def test_a_vouched_upload_whose_server_copy_differs_is_refused_and_removed(tmp_path: Path) -> None:
    spooled, remote = _hashing(tmp_path)
    out = spooled.vouched_writer("p.part")
    out.write(DATA)
    out.vouch(hashlib.sha256(DATA + b"x").hexdigest())  # not what went up
    with pytest.raises(TransferError, match="HASH differs"):
        out.close()
    assert not (remote.root / "p.part").exists()
    assert len(remote.asked) == 2  # uploaded again once, then given up: a third try won't mend it


def test_a_writer_left_by_an_exception_stops_uploading_and_keeps_its_spool(
    tmp_path: Path,
) -> None:
    spooled, remote = _hashing(tmp_path)
    with pytest.raises(KeyboardInterrupt), spooled.vouched_writer("p.part") as out:
        out.write(DATA)
        raise KeyboardInterrupt  # no TransferError in its place, no HASH check, no wait
    assert (tmp_path / "spool" / "p.part").read_bytes() == DATA
    assert remote.asked == []


def test_a_vouched_writer_closed_without_its_sha256_finishes_nothing(tmp_path: Path) -> None:
    spooled, remote = _hashing(tmp_path)
    out = spooled.vouched_writer("p.part")
    out.write(DATA)
    with pytest.raises(UploadRefused, match="before its sha256 was given"):
        out.close()
    assert remote.asked == []


def test_an_unvouched_upload_hashes_what_it_sends_for_the_check(tmp_path: Path) -> None:
    spooled, remote = _hashing(tmp_path)
    with spooled.writer("p.part") as out:
        out.write(DATA)
    assert remote.asked == ["p.part"]
    assert (remote.root / "p.part").read_bytes() == DATA


def test_a_continued_write_shorter_than_the_spool_sends_none_of_the_old_tail(
    tmp_path: Path,
) -> None:
    """Found in review: the uploader went on into the old tail, the HASH check failed six
    times over, and a TransferError hid the mismatch the sender acts on."""
    spooled, remote = _hashing(tmp_path)
    (tmp_path / "spool" / "p.part").write_bytes(DATA)  # the interrupted, longer encoding
    shorter = DATA[: 2 << 20]
    with spooled.vouched_writer("p.part", continuing=True) as out:
        out.write(shorter)
        out.vouch(SHA256(shorter).hexdigest())
    assert remote.asked == []  # nothing checked, nothing retried
    held = remote.root / "p.part"
    assert not held.exists() or DATA.startswith(held.read_bytes())
    assert not held.exists() or held.stat().st_size <= len(shorter)


class _ReplyLost(DirectoryTransport):
    """A server that renames, then loses its reply the first time (killed, say)."""

    lost = False

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        if not self.lost:
            self.lost = True
            raise TransferError(f"renaming {src}: Connection reset by peer")


def test_a_rename_whose_reply_was_lost_is_done(tmp_path: Path) -> None:
    """Found by killing the appliance right after it renamed a signature: the retries got
    550 (the partial gone, the bundle published), and the send failed for a bundle that was
    out; its rerun uploaded all of it again."""
    remote = _ReplyLost(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "sig.part").write_bytes(b"s")
    spooled = SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(first=0.0))
    spooled.rename("sig.part", "sig")
    assert remote.lost and sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["sig"]
    with pytest.raises(TransferError):  # never there: not taken as done
        SpooledTransport(
            DirectoryTransport(tmp_path / "remote"), tmp_path / "spool", backoff=Backoff(attempts=1)
        ).rename("never.part", "never")


def _lost_spool(tmp_path: Path, remote: Path, *, spooled: int, uploaded: int) -> None:
    """An interrupted send whose spool lost its tail in a crash: the server holds more."""
    (tmp_path / "spool" / "p.part").write_bytes(DATA[:spooled])
    remote.mkdir(exist_ok=True)
    (remote / "p.part").write_bytes(DATA[:uploaded])


def _continue(spooled: SpooledTransport, data: bytes) -> None:
    out = spooled.vouched_writer("p.part", continuing=True)
    try:
        for start in range(0, len(data), 100_000):
            out.write(data[start : start + 100_000])
        out.vouch(SHA256(data).hexdigest())
        out.close()
    finally:
        with contextlib.suppress(ContinueMismatch):  # what it held back is refused again
            out.close()


@pytest.mark.parametrize("hashing", [True, False], ids=["HASH", "no HASH"])
def test_a_spool_that_lost_bytes_the_server_holds_sends_nothing_more(
    tmp_path: Path, hashing: bool
) -> None:
    """Found in review: bytes the server held beyond the spool were never compared, so the
    same key and nonce could encrypt other bytes there (a changed image), and both reached the
    drop box. A spool that lost what was sent cannot tell: the send starts anew (a new bundle
    under a new key), even when the bytes would have been the same."""
    spooled, remote = _hashing(tmp_path) if hashing else _spooled(tmp_path)
    root = remote.root if isinstance(remote, DirectoryTransport) else remote
    _lost_spool(tmp_path, root, spooled=1000, uploaded=2 << 20)
    with pytest.raises(ContinueMismatch, match=r"the spool lost bytes of p\.part"):
        _continue(spooled, DATA)
    assert spooled.sent == 0
    assert (root / "p.part").read_bytes() == DATA[: 2 << 20]


class _Lying(_HashingDirectory):
    """A server whose HASH never matches (a lie, or a disk that alters what it keeps)."""

    def hash(self, name: str) -> str | None:
        self.asked.append(name)
        return "0" * 64


def test_a_continued_upload_whose_server_copy_differs_is_never_uploaded_over(
    tmp_path: Path,
) -> None:
    """Found in review: the HASH mismatch deleted the partial and uploaded the new encoding
    from byte 0, over the range where the server had held the old one under the same key."""
    remote = _Lying(tmp_path / "remote")
    spooled = SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(first=0.01))
    _lost_spool(tmp_path, remote.root, spooled=2 << 20, uploaded=1 << 20)
    with pytest.raises(ContinueMismatch, match="HASH differs"):
        _continue(spooled, DATA)
    assert spooled.sent == len(DATA) - (1 << 20)  # the rest once, never the start again
    assert remote.asked == ["p.part"]


def test_a_resumed_payload_whose_server_copy_differs_is_never_uploaded_over(
    tmp_path: Path,
) -> None:
    """The same for ``--resume`` of a wholly encoded payload: an earlier run may have put
    another encoding under its key on the server."""
    remote = _Lying(tmp_path / "remote")
    spooled = SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(first=0.01))
    local = tmp_path / "spool" / "p"
    local.write_bytes(DATA)
    remote.root.mkdir()
    (remote.root / "p.part").write_bytes(DATA[: 1 << 20])
    with pytest.raises(ContinueMismatch, match="HASH differs"):
        spooled.upload_file("p", local, keyed=True)
    assert spooled.sent == len(DATA) - (1 << 20)
    assert not (remote.root / "p").exists()
    (remote.root / "p.part").write_bytes(DATA + b"more")  # longer than the payload
    with pytest.raises(ContinueMismatch, match="holds more of p than was encoded"):
        spooled.upload_file("p", local, keyed=True)


class _Breaking(_HashingDirectory):
    """A server whose first upload breaks at byte ``at``, mid-chunk (a dropped connection)."""

    def __init__(self, root: Path, at: int) -> None:
        super().__init__(root)
        self.at, self.broke = at, False

    def writer(self, name: str, *, offset: int = 0) -> Any:
        inner = super().writer(name, offset=offset)
        owner, held = self, [offset]

        class _Writer(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                left = owner.at - held[0]
                if not owner.broke and 0 <= left < len(data):
                    inner.write(bytes(data[:left]))
                    inner.flush()
                    owner.broke = True
                    raise TransferError("uploading: connection reset by peer")
                held[0] += len(data)
                return int(inner.write(data))

            def flush(self) -> None:
                inner.flush()

            def close(self) -> None:
                if not self.closed:
                    super().close()  # flushes first
                    inner.close()

        return _Writer()


def test_a_continued_upload_cut_mid_chunk_goes_on(tmp_path: Path) -> None:
    """Found in review: bytes of a chunk cut short on the wire counted as bytes the spool had
    lost, so a dropped connection abandoned the whole send."""
    remote = _Breaking(tmp_path / "remote", at=(2 << 20) + 1234)  # past the spool
    spooled = SpooledTransport(remote, tmp_path / "spool", backoff=Backoff(first=0.01))
    _lost_spool(tmp_path, remote.root, spooled=1 << 20, uploaded=1000)
    _continue(spooled, DATA)
    assert remote.broke
    assert (remote.root / "p.part").read_bytes() == DATA


def test_a_small_payload_read_whole_counts_as_received(tmp_path: Path) -> None:
    """Found in review: a payload under the spool's threshold, read whole, was not counted,
    and `fetch --json` said 0 bytes on the wire for a thin bundle it had downloaded."""
    spooled, remote = _spooled(tmp_path)
    remote.mkdir()
    (remote / "small.bin").write_bytes(b"s" * 5000)
    with spooled.reader("small.bin", size=5000) as handle:
        assert handle.read() == b"s" * 5000
    assert spooled.received == 5000


def test_a_spool_disk_filling_up_is_told_as_such_to_the_end(tmp_path: Path) -> None:
    """Found in review: the write's error said "spool ...: No space left on device" with a
    hint, then closing the file flushed again and its bare OSError went up instead, shown as
    "writing the output: No space left on device" (the output: stdout?)."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        spooled = SpooledTransport(DirectoryTransport(tmp_path / "remote"), disk / "spool")
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:  # the disk full before the spool writes: a manifest's few bytes fail
                filler.write(b"f" * 4096)
                filler.flush()
        refusal = pytest.raises(StorageError, match="No space left on device")
        with refusal as refused, spooled.writer("small.part") as out:
            out.write(b"m" * 1000)
        assert refused.value.hint is not None and "free some space" in refused.value.hint
