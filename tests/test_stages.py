"""The streaming stages with bytes alone, and zstd against the real zstd CLI."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared.errors import CompressionError, PlaintextHashError
from airgap.shared.stages import (
    ZSTD_PIECE,
    Chain,
    Limit,
    Segments,
    Sha256,
    ZstdCompress,
    run,
    views,
    zstd_decompress,
)


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300_000), st.lists(st.integers(min_value=0), max_size=6))
def test_zstd_round_trip_any_split(data: bytes, cuts: list[int]) -> None:
    compressed = b"".join(run(_splits(data, cuts), ZstdCompress(level=1)))
    assert b"".join(zstd_decompress(iter([compressed]))) == data


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 1 << 20])
def test_segments_cover_the_stream(size: int) -> None:
    data = os.urandom(size)
    segments = Segments(65536)
    assert b"".join(run(_splits(data, [7, 65536, 99999]), segments)) == data
    expected = [hashlib.sha256(data[i : i + 65536]).hexdigest() for i in range(0, size, 65536)]
    assert segments.digests == expected


def test_chain_drains_every_stage_in_order() -> None:
    plain, packed = Sha256(), Sha256()
    chain = Chain([plain, ZstdCompress(level=1), packed])
    out = b"".join(run([b"a" * 100_000, b"b" * 100_000], chain))
    assert plain.size == 200_000 and packed.size == len(out)
    assert packed.hexdigest() == hashlib.sha256(out).hexdigest()


@pytest.mark.parametrize("threads", [0, 2])
def test_zstd_pieces_are_whole_and_the_same_whatever_the_split(threads: int) -> None:
    # A resumed send encodes the plaintext again and must repeat the payload byte for byte.
    data = os.urandom(3 * ZSTD_PIECE + 12345)  # incompressible: several output pieces
    splits = ([], [1, ZSTD_PIECE, 2 * ZSTD_PIECE + 7], [65536 * k for k in range(50)])
    outputs = [list(run(_splits(data, cuts), ZstdCompress(threads=threads))) for cuts in splits]
    assert all(b"".join(out) == b"".join(outputs[0]) for out in outputs)
    for out in outputs:
        assert all(len(piece) % ZSTD_PIECE == 0 for piece in out[:-1])
    assert b"".join(zstd_decompress(iter(outputs[0]))) == data


def test_zstd_truncation_and_trailing_data_are_refused() -> None:
    compressed = b"".join(run([os.urandom(5000)], ZstdCompress(level=1)))
    # Truncation gives a short output (the bundle's plaintext size check refuses it).
    assert len(b"".join(zstd_decompress(iter([compressed[:-20]])))) < 5000
    with pytest.raises(CompressionError):
        b"".join(zstd_decompress(iter([compressed + b"x"])))
    with pytest.raises(CompressionError):
        b"".join(zstd_decompress(iter([b"not zstd at all"])))
    flipped = bytearray(compressed)
    flipped[-2] ^= 1  # in the frame's checksum
    with pytest.raises(CompressionError, match="checksum"):
        b"".join(zstd_decompress(iter([bytes(flipped)])))


def test_zstd_leaves_a_second_frame_and_a_cut_checksum_to_the_callers_checks() -> None:
    """What the docstring owns to: neither is an error here; the bundle's signed plaintext
    size and sha256 are (a second frame makes the plaintext longer than signed)."""
    data = os.urandom(5000)
    compressed = b"".join(run([data], ZstdCompress(level=1)))
    assert b"".join(zstd_decompress(iter([compressed + compressed]))) == data + data
    assert b"".join(zstd_decompress(iter([compressed[:-4]]))) == data


def test_zstd_output_is_bounded_whatever_the_ratio() -> None:
    zeros = b"".join(run([b"\0" * (1 << 20)] * 256, ZstdCompress(level=1)))
    assert len(zeros) < 64 * 1024  # 256 MiB of zeros compress to almost nothing
    sizes = [len(piece) for piece in zstd_decompress(iter([zeros]), piece=1 << 20)]
    assert sum(sizes) == 256 << 20 and max(sizes) <= 1 << 20


def test_views_slice_without_copying() -> None:
    buffer = bytearray(b"abcdefgh")
    pieces = list(views([b"xyz", memoryview(buffer), b""], 3))
    assert [bytes(p) for p in pieces] == [b"xyz", b"abc", b"def", b"gh"]
    buffer[0:1] = b"A"  # a view, not a copy: it shows what its buffer holds now
    assert bytes(pieces[1]) == b"Abc"


def test_limit_refuses_growth() -> None:
    limit = Limit(10, PlaintextHashError, "plaintext")
    assert limit.update(b"x" * 10) == b"x" * 10
    with pytest.raises(PlaintextHashError, match="longer"):
        limit.update(b"x")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
@pytest.mark.parametrize("threads", [0, 2])
def test_real_zstd_reads_our_stream_and_we_read_its(threads: int) -> None:
    data = b"".join(os.urandom(64) * 300 for _ in range(200))
    ours = b"".join(run([data], ZstdCompress(level=3, threads=threads)))
    back = subprocess.run(["zstd", "-d", "-c"], input=ours, capture_output=True, check=True)
    assert back.stdout == data
    theirs = subprocess.run(["zstd", "-c", "-3"], input=data, capture_output=True, check=True)
    assert b"".join(zstd_decompress(iter([theirs.stdout]))) == data
