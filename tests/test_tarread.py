"""The streaming tar reader: what tar and tarfile write reads back; anything odd is refused."""

from __future__ import annotations

import io
import itertools
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared.archive import Member, tar_stream
from airgap.shared.errors import UnsafeArchiveError
from airgap.shared.manifest import FileEntry
from airgap.shared.tarread import read_tar


def _read(data: bytes, piece: int = 1000) -> list[tuple[str, bytes]]:
    members: list[tuple[str, bytes]] = []
    chunks = (data[i : i + piece] for i in range(0, len(data), piece))
    for item in read_tar(chunks):
        if isinstance(item, tarfile.TarInfo):
            members.append((item.name, b""))
        else:
            name, body = members[-1]
            members[-1] = (name, body + bytes(item))
    return members


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=4), st.integers(min_value=1, max_value=5000))
def test_reads_back_what_tar_stream_writes(bodies: list[bytes], piece: int) -> None:
    members = [Member(f"f{i}", len(b), 0, [b]) for i, b in enumerate(bodies)]
    entries: list[FileEntry] = []
    data = b"".join(tar_stream(members, entries))
    assert _read(data, piece) == [(f"f{i}", b) for i, b in enumerate(bodies)]


def _tarfile(*infos: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, body in infos:
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_pax_long_names_are_applied() -> None:
    name = "n" * 200 + "\u00e9"
    assert _read(_tarfile((tarfile.TarInfo(name), b"abc"))) == [(name, b"abc")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_tarfile((tarfile.TarInfo("x" * 200), b"a"), fmt=tarfile.GNU_FORMAT), "GNU long name"),
        (b"\0" * 1024 + b"junk" + b"\0" * 508, "after the end"),
        (_tarfile((tarfile.TarInfo("x"), b"a"))[:700], "ends"),
        (_tarfile((tarfile.TarInfo("x"), b"a"))[:1024], "end-of-archive"),
        (b"x" * 512 + b"\0" * 1024, "malformed header"),
    ],
)
def test_odd_archives_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=message):
        _read(data)


def test_global_pax_and_bad_pax_sizes_are_refused() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"a": "b"}):
        pass
    with pytest.raises(UnsafeArchiveError, match="global pax"):
        _read(out.getvalue())
    info = tarfile.TarInfo("x")
    info.pax_headers = {"size": "\u00b2"}  # a digit to str.isdigit, not to int()
    with pytest.raises(UnsafeArchiveError, match="pax"):
        _read(_tarfile((info, b"a")))
    info = tarfile.TarInfo("x")
    info.pax_headers = {"GNU.sparse.map": "0,1"}
    with pytest.raises(UnsafeArchiveError, match="not supported"):
        _read(_tarfile((info, b"a")))


def test_a_flipped_header_byte_is_caught_by_the_checksum() -> None:
    data = bytearray(_tarfile((tarfile.TarInfo("x"), os.urandom(10))))
    data[0] ^= 1  # the name; the header checksum no longer matches
    with pytest.raises(UnsafeArchiveError, match="malformed header"):
        _read(bytes(data))


def test_the_largest_record_tar_writes_is_read_and_more_zeros_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``tar -b 2048`` pads its end to 1 MiB; a signed plaintext of GiBs of zeros after the
    end (a few KiB compressed) would keep a fetch busy for hours."""
    import subprocess

    (tmp_path / "a").write_bytes(b"abc")
    data = subprocess.run(
        ["tar", "-b", "2048", "-C", str(tmp_path), "-cf", "-", "a"], capture_output=True, check=True
    ).stdout
    assert len(data) == 1 << 20
    assert _read(data, piece=1 << 16) == [("a", b"abc")]
    with pytest.raises(UnsafeArchiveError, match="more zeros than a tar record"):
        _read(data + b"\0" * (1 << 20), piece=1 << 16)
    endless = itertools.chain([data], itertools.repeat(b"\0" * (1 << 20)))
    with pytest.raises(UnsafeArchiveError, match="more zeros"):
        for _ in read_tar(endless):
            pass


def _block(name: str, kind: bytes, size: int, *, raw_size: bytes | None = None) -> bytes:
    """One ustar header block, ``raw_size`` in place of its size field if given."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    if raw_size is not None:
        block[124:136] = raw_size
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pax_member(data: bytes) -> bytes:
    return _block("pax", tarfile.XHDTYPE, len(data)) + data + bytes(-len(data) % 512)


_MEMBER = _block("x", tarfile.REGTYPE, 1) + b"a" + bytes(511)
_END = bytes(1024)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_pax_member(b"12 path=abc\n") * 2 + _MEMBER + _END, "repeated pax"),
        (_pax_member(b"12 path=abc\n" + b"x" * (64 * 1024)) + _MEMBER + _END, "oversized"),
        (_pax_member(b"12 path=abc\n12 path=abd\n") + _MEMBER + _END, "malformed pax"),
        (_pax_member(b"11 path=abc") + _MEMBER + _END, "malformed pax"),
        (_block("x", tarfile.REGTYPE, 0, raw_size=b"\xff" * 12) + _END, "negative"),
        (_block("x", tarfile.GNUTYPE_SPARSE, 0) + _END, "not supported"),
        (_block("x", tarfile.GNUTYPE_LONGLINK, 0) + _END, "not supported"),
        (_MEMBER + bytes((1 << 20) + 1024), "more zeros"),
    ],
)
def test_what_the_reader_promises_to_refuse_is_refused(data: bytes, message: str) -> None:
    """Mutation testing found each of these refusals held by no test."""
    with pytest.raises(UnsafeArchiveError, match=message):
        _read(data)


def test_an_end_padded_to_a_whole_large_record_is_read() -> None:
    assert _read(_MEMBER + bytes((1 << 20) + 512)) == [("x", b"a")]
