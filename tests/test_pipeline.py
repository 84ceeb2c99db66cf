"""The threaded pipeline: same output as running the stages in line, errors with their type,
and no thread left behind whatever happens."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared.errors import CompressionError, SegmentHashError
from airgap.shared.pipeline import threaded
from airgap.shared.stages import Chain, Sha256, ZstdCompress, run, zstd_decompress


class Boom:
    def __init__(self, after: int) -> None:
        self.after = after

    def update(self, data: bytes) -> bytes:
        self.after -= 1
        if self.after < 0:
            raise SegmentHashError("segment 7 is wrong", segment=7)
        return data

    def finish(self) -> bytes:
        return b""


def _source(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * 100_000


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=1 << 20))
def test_threaded_equals_in_line(n: int, capacity: int) -> None:
    expected = b"".join(run(_source(n), Chain([Sha256(), ZstdCompress(level=1)])))
    got = b"".join(threaded(_source(n), [Sha256(), ZstdCompress(level=1)], capacity=capacity))
    assert got == expected
    round_trip = threaded(iter([got]), [zstd_decompress], capacity=capacity)
    assert b"".join(round_trip) == b"".join(_source(n))


def test_links_bound_bytearrays_too() -> None:
    """A stage may hand on a bytearray of its own (age decryption does): the links count it
    like bytes, so a fast source cannot run ahead of a slow consumer without bound."""
    made = 0

    def source() -> Iterator[bytearray]:
        nonlocal made
        for _ in range(1000):
            made += 1
            yield bytearray(100_000)

    outputs = threaded(source(), [Sha256()], capacity=1 << 20)
    next(outputs)
    time.sleep(0.5)  # ample time for the source to make all 1000 if nothing held it back
    # Two links of 1 MiB hold about ten pieces each, and each thread holds one more.
    assert made <= 30, made
    outputs.close()


def test_errors_keep_their_type_and_no_thread_is_left() -> None:
    before = threading.active_count()
    with pytest.raises(SegmentHashError) as caught:
        for _ in threaded(_source(50), [Sha256(), Boom(after=10), Sha256()]):
            pass
    assert caught.value.segment == 7
    with pytest.raises(CompressionError):  # a failing transform
        list(threaded(iter([b"not zstd"]), [zstd_decompress]))
    packed = b"".join(run([os.urandom(200_000)], ZstdCompress(level=1)))
    pieces = [packed[i : i + 1000] for i in range(0, len(packed), 1000)]
    with pytest.raises(SegmentHashError):  # an upstream failure passes through a transform
        list(threaded(iter(pieces), [Boom(after=2), zstd_decompress]))

    def bad_source() -> Iterator[bytes]:
        yield b"x"
        raise OSError("media error")

    with pytest.raises(OSError, match="media error"):
        list(threaded(bad_source(), [Sha256()]))
    assert threading.active_count() == before


def test_closing_early_stops_every_thread() -> None:
    before = threading.active_count()
    outputs = threaded(_source(10_000), [Sha256(), Sha256()], capacity=1 << 20)
    assert len(next(outputs)) == 100_000
    outputs.close()
    assert threading.active_count() == before
