"""Thin archives: a ``docker save`` stream without the layer files the far side already holds.

Both Docker load paths look a layer up by chain id before they open its file, so an archive may
leave out the files of layers the receiving engine has, as long as everything else stays:
``manifest.json``, the configs, ``index.json`` and ``oci-layout``. Layer files are found two ways:

- an OCI-layout blob, ``blobs/sha256/HEX``, is named by its digest: dropped by name when the
  digest is in :attr:`ThinPlan.blobs` (a diff id, or the compressed blob of one);
- a legacy ``V1ID/layer.tar`` says nothing of its content, so it is hashed on its way through a
  spill file and dropped when the hash is an omitted diff id. Only files whose size is one an
  omitted layer had before are spilled (:attr:`ThinPlan.sizes`; None: every one).

A link to a dropped file is dropped with it; a link met before its target waits for the end of
the archive, where the loaders do not mind it. Nothing is ever dropped on a guess: a file that
cannot be shown to be an omitted layer is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from airgap.client.saved import blob_digest, pax_records, with_pax
from airgap.shared.errors import EngineError, StorageError

BLOCK = tarfile.BLOCKSIZE
_LEGACY_LAYER = re.compile(r"^[0-9a-f]{64}/layer\.tar$")
EXTENSIONS = {tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_MAX_EXTENSION = 1 << 20
_PIECE = 1 << 20


@dataclass(frozen=True)
class ThinPlan:
    omit: frozenset[str]  # diff ids of the layers to leave out
    blobs: frozenset[str] = frozenset()  # blob digests (sha256:...) to leave out by name
    sizes: frozenset[int] | None = None  # legacy layer file sizes worth hashing; None: all

    def __bool__(self) -> bool:
        return bool(self.omit or self.blobs)


@dataclass
class Dropped:
    """What a thin stream left out: member name -> the digest that showed it was omitted."""

    members: dict[str, str] = field(default_factory=dict)

    def digests(self) -> set[str]:
        return set(self.members.values())


def thin_archive(
    chunks: Iterable[bytes],
    plan: ThinPlan,
    *,
    spill: Callable[[], IO[bytes]],
    dropped: Dropped,
) -> Iterator[bytes]:
    """The tar stream ``chunks`` without the layer files ``plan`` omits (recorded in
    ``dropped``); ``spill`` makes a temporary file for a legacy layer being hashed."""
    reader = ChunkReader(chunks)
    extension = bytearray()  # pax or GNU headers that belong to the next member
    records: dict[str, str] = {}  # what they say of it
    seen: set[str] = set()
    waiting: list[tuple[str, bytes]] = []  # (target, header bytes) of links met too early
    while True:
        header = reader.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK):  # the end (or a torn archive)
            for target, held in waiting:
                if target not in dropped.members:
                    yield held
            yield bytes(extension) + header
            yield from reader.rest()
            return
        info = header_of(header)
        if info.type in EXTENSIONS:
            if info.size > _MAX_EXTENSION:
                raise EngineError("docker save: an extended tar header is too large")
            data = reader.read(-(-info.size // BLOCK) * BLOCK)
            extension += header + data
            records.update(extended(info, data[: info.size]))
            continue
        info, records = with_pax(info, records), {}
        name, padded = info.name, -(-info.size // BLOCK) * BLOCK
        head, extension = bytes(extension) + header, bytearray()
        seen.add(name)
        if info.isreg() and (blob := blob_digest(name)) in plan.blobs:
            dropped.members[name] = blob or ""
            reader.skip(padded)
        elif info.isreg() and _worth_hashing(name, info.size, plan):
            yield from _hashed(reader, head, name, info.size, padded, plan, spill, dropped)
        elif info.issym() or info.islnk():
            target = _target(name, info)
            if target in dropped.members:
                dropped.members[name] = dropped.members[target]
            elif target not in seen and (_LEGACY_LAYER.match(target) or blob_digest(target)):
                waiting.append((target, head))
            else:
                yield head
        else:
            yield head
            yield from reader.pieces(padded)


def header_of(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise EngineError(f"docker save: not a tar archive airgap can read ({exc})") from exc


def extended(info: tarfile.TarInfo, data: bytes) -> dict[str, str]:
    """What a pax or GNU extension header says of the member after it."""
    if info.type == tarfile.XHDTYPE:
        return pax_records(data)
    text = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
    return {"path" if info.type == tarfile.GNUTYPE_LONGNAME else "linkpath": text}


def _worth_hashing(name: str, size: int, plan: ThinPlan) -> bool:
    if not plan.omit or not _LEGACY_LAYER.match(name):
        return False
    return plan.sizes is None or size in plan.sizes


def _target(name: str, info: tarfile.TarInfo) -> str:
    if info.islnk():  # a hard link names a member of the archive
        return posixpath.normpath(info.linkname)
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))


def _hashed(
    reader: ChunkReader,
    head: bytes,
    name: str,
    size: int,
    padded: int,
    plan: ThinPlan,
    spill: Callable[[], IO[bytes]],
    dropped: Dropped,
) -> Iterator[bytes]:
    """A legacy layer file: hashed into a spill file, then dropped or sent from there."""
    digest = hashlib.sha256()
    with spilling(), spill() as held:
        for piece in reader.pieces(size):
            digest.update(piece)
            held.write(piece)
        padding = reader.read(padded - size)
        diff_id = "sha256:" + digest.hexdigest()
        if diff_id in plan.omit:
            dropped.members[name] = diff_id
            return
        yield head
        held.seek(0)
        while piece := held.read(_PIECE):
            yield piece
        yield padding


@contextlib.contextmanager
def spilling() -> Iterator[None]:
    """Around the temporary files that layers pass through ($TMPDIR): a full or unwritable
    disk there is for the user to fix, and the error says where."""
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"a temporary file for a layer, in {tempfile.gettempdir()}: {exc.strerror or exc}",
            hint="free space there, or set TMPDIR to a disk with room for the largest layer",
        ) from exc


class ChunkReader:
    """Exact reads over a stream of chunks, copying only where a read spans chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._chunk = b""
        self._at = 0

    def _fill(self) -> bool:
        while self._at >= len(self._chunk):
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._chunk, self._at = bytes(chunk), 0
        return True

    def pieces(self, count: int) -> Iterator[bytes]:
        """The next ``count`` bytes, in pieces as they come (fewer at the end of the stream)."""
        while count > 0 and self._fill():
            take = min(count, len(self._chunk) - self._at)
            if self._at == 0 and take == len(self._chunk):
                piece = self._chunk
            else:
                piece = self._chunk[self._at : self._at + take]
            self._at += take
            count -= take
            yield piece

    def read(self, count: int) -> bytes:
        return b"".join(self.pieces(count))

    def skip(self, count: int) -> None:
        for _ in self.pieces(count):
            pass

    def rest(self) -> Iterator[bytes]:
        while self._fill():
            piece = self._chunk[self._at :] if self._at else self._chunk
            self._at = len(self._chunk)
            yield piece
