"""A tally's digest, promised to the hash cache, in-process: what waits for it, what voids it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from airgap.server import hashing, storage, tally
from airgap.server.hashing import HashCache


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read the cache makes to hash a file, by path."""
    read = hashing._sha256
    seen: list[str] = []

    def counted(handle, start, stop):  # type: ignore[no-untyped-def]
        seen.append(str(Path(f"/proc/self/fd/{handle.fileno()}").readlink()))
        return read(handle, start, stop)

    monkeypatch.setattr(hashing, "_sha256", counted)
    return seen


def upload(path: Path, hashes: HashCache, pieces: list[bytes], offset: int = 0) -> None:
    target = storage.target(str(path))
    assert isinstance(target, storage.Target)
    file = storage.open_for_upload(target, offset, budget=None, min_free=0, hashes=hashes)
    for piece in pieces:
        file.write(piece)
    file.close()


def test_a_fresh_upload_is_known_without_a_read(tmp_path: Path, no_reads: list[str]) -> None:
    hashes, path = HashCache(), tmp_path / "f.bin"
    pieces = [os.urandom(1000), b"", bytearray(os.urandom(300)), os.urandom(70_000)]
    upload(path, hashes, pieces)  # type: ignore[arg-type]
    digest, _, stop = hashes.digest(path)
    assert (digest, stop) == (hashlib.sha256(path.read_bytes()).hexdigest(), 71_300)
    assert no_reads == []


def test_a_resumed_upload_is_read(tmp_path: Path, no_reads: list[str]) -> None:
    hashes, path = HashCache(), tmp_path / "f.bin"
    upload(path, hashes, [b"a" * 5000])
    upload(path, hashes, [b"b" * 5000], offset=3000)
    assert hashes.digest(path)[0] == hashlib.sha256(b"a" * 3000 + b"b" * 5000).hexdigest()
    assert no_reads == [str(path)]


def test_a_tally_short_of_the_file_promises_nothing(tmp_path: Path, no_reads: list[str]) -> None:
    """A write that failed part way put bytes in the file the tally never saw."""
    hashes, path = HashCache(), tmp_path / "f.bin"
    target = storage.target(str(path))
    assert isinstance(target, storage.Target)
    file = storage.open_for_upload(target, 0, budget=None, min_free=0, hashes=hashes)
    file.write(b"seen")
    with path.open("ab") as other:  # stands in for the part of a failed write that landed
        other.write(b"unseen")
    file.close()
    assert hashes.digest(path)[0] == hashlib.sha256(b"seenunseen").hexdigest()
    assert no_reads == [str(path)]


def test_callers_wait_for_a_promise_and_a_cut_meanwhile_voids_it(tmp_path: Path) -> None:
    hashes, path = HashCache(), tmp_path / "f.bin"
    path.write_bytes(b"new content")
    info = path.stat()
    generation = hashes.generation(info)
    key = hashes.promise(info, generation)
    assert key is not None
    assert hashes.promise(info, generation) is None  # promised once only
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(hashes.digest(path)[0]))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "read the file rather than wait for the promised digest"
    hashes.forget(info)  # an upload cut the file meanwhile: the promised digest is not kept
    hashes.keep(key, generation, "0" * 64)
    waiter.join(5)
    assert got == [hashlib.sha256(b"new content").hexdigest()]  # read by the waiter itself


def test_a_promise_for_a_file_cut_since_the_tally_began_is_refused(tmp_path: Path) -> None:
    hashes, path = HashCache(), tmp_path / "f.bin"
    path.write_bytes(b"x")
    info = path.stat()
    generation = hashes.generation(info)
    hashes.forget(info)
    assert hashes.promise(info, generation) is None


def _stat_of(inode: int) -> os.stat_result:
    """A stat of a file that is not there: only device, inode, size and mtime are read."""
    # mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime; then the float and ns times
    return os.stat_result((0o100600, inode, 1, 1, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0))


def test_the_tokens_of_files_cut_long_ago_do_not_pile_up(tmp_path: Path) -> None:
    """One per file ever cut was kept for ever (noted in review); past GENERATIONS, those of
    files neither cached nor being hashed go, and a holder of one then keeps no digest."""
    hashes, path = HashCache(), tmp_path / "kept.bin"
    path.write_bytes(b"kept")
    digest = hashes.digest(path)[0]  # cached: its token stays
    held_info = path.stat()
    for inode in range(10_000_000, 10_000_000 + 3 * hashing.GENERATIONS):
        hashes.forget(_stat_of(inode))
    assert len(hashes._generation) <= hashing.GENERATIONS + 1
    assert hashes.known(held_info) == digest
    stale = hashes.generation(_stat_of(1))  # held across a trim, like a tally's
    for inode in range(20_000_000, 20_000_000 + hashing.GENERATIONS + 1):
        hashes.forget(_stat_of(inode))
    assert 1 not in {node[1] for node in hashes._generation}  # trimmed
    assert hashes.promise(_stat_of(1), stale) is None  # another token now: nothing promised
    fresh = hashes.generation(_stat_of(1))
    assert fresh is not stale
    key = hashes.promise(_stat_of(1), fresh)
    assert key is not None
    hashes.keep(key, stale, "0" * 64)  # kept under the token that was trimmed: not cached
    assert hashes.known(_stat_of(1)) is None


@pytest.mark.parametrize("pieces", [[], [b"some bytes"]])
def test_without_a_thread_to_hash_on_the_file_is_read_and_nobody_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_reads: list[str], pieces: list[bytes]
) -> None:
    """Found in review: a follower that could not start left a promise nobody would keep."""

    def cannot(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    start = threading.Thread.start
    monkeypatch.setattr(tally, "_FOLLOWER", tally._Follower())
    monkeypatch.setattr(threading.Thread, "start", cannot)
    hashes, path = HashCache(), tmp_path / "f.bin"
    upload(path, hashes, pieces)
    got: list[str] = []
    monkeypatch.setattr(threading.Thread, "start", start)  # the waiter's own thread
    waiter = threading.Thread(target=lambda: got.append(hashes.digest(path)[0]), daemon=True)
    waiter.start()
    waiter.join(5)
    assert got == [hashlib.sha256(b"".join(pieces)).hexdigest()]
    assert no_reads == [str(path)]


def test_a_tally_that_cannot_stat_its_file_promises_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_reads: list[str]
) -> None:
    """An fstat failing as the upload closes: the close still closes, and the file is read."""

    def no_more(fd: int) -> os.stat_result:
        raise OSError(5, "Input/output error")

    hashes, path = HashCache(), tmp_path / "f.bin"
    target = storage.target(str(path))
    assert isinstance(target, storage.Target)
    file = storage.open_for_upload(target, 0, budget=None, min_free=0, hashes=hashes)
    file.write(b"pieces")
    fstat = os.fstat
    monkeypatch.setattr(tally.os, "fstat", no_more)
    file.close()
    assert file.closed
    monkeypatch.setattr(tally.os, "fstat", fstat)
    assert hashes.digest(path)[0] == hashlib.sha256(b"pieces").hexdigest()
    assert no_reads == [str(path)]
