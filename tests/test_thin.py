"""Thin archives cut from a tar stream (only layer files shown to be omitted are left out),
and spliced back where an engine insists on every file."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.client.engine import Engine
from airgap.client.images import LocalLayers, left_out_size, send_images
from airgap.client.incremental import omitted_layers, thin_plan
from airgap.client.progress import Meter
from airgap.client.saved import LayerFile, SavedArchive
from airgap.client.send import Meters
from airgap.client.sendledger import FarSide
from airgap.client.splice import spliced, spool_layers
from airgap.client.thin import BLOCK, Dropped, ThinPlan, thin_archive
from airgap.client.transport import DirectoryTransport
from airgap.shared import minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import StorageError
from airgap.shared.layers import chain_ids
from airgap.shared.manifest import ImageEntry

OLD, NEW = b"old layer " * 700, b"new layer " * 300
OLD_ID = "sha256:" + hashlib.sha256(OLD).hexdigest()
NEW_ID = "sha256:" + hashlib.sha256(NEW).hexdigest()
V1A, V1B = "a" * 64, "b" * 64  # legacy layer directories


def _tar(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar of files (bytes) and symlinks (str: the link's target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def _cut(
    data: bytes,
    plan: ThinPlan,
    piece: int = 1 << 16,
    spill: Callable[[], IO[bytes]] = tempfile.TemporaryFile,
) -> tuple[bytes, Dropped, int]:
    dropped, spills = Dropped(), []
    make = spill

    def spill() -> IO[bytes]:
        spills.append(1)
        return make()

    chunks: Iterator[bytes] = (data[i : i + piece] for i in range(0, len(data), piece))
    out = b"".join(thin_archive(chunks, plan, spill=spill, dropped=dropped))
    return out, dropped, len(spills)


LEGACY = _tar(
    [
        (f"{V1A}/VERSION", b"1.0"),
        (f"{V1A}/json", b"{}"),
        (f"{V1A}/layer.tar", OLD),
        (f"{V1B}/json", b"{}"),
        (f"{V1B}/layer.tar", NEW),
        ("c" * 64 + ".json", b"{}"),
        ("manifest.json", b"[]"),
    ]
)
OCI = _tar(
    [
        ("blobs/sha256/" + OLD_ID[7:], OLD),
        ("blobs/sha256/" + NEW_ID[7:], NEW),
        ("index.json", b"{}"),
        ("manifest.json", b"[]"),
        ("oci-layout", b"{}"),
    ]
)


@settings(max_examples=40, deadline=None)
@given(piece=st.integers(min_value=1, max_value=20_000))
def test_legacy_layer_files_are_dropped_by_their_hash_in_any_chunking(piece: int) -> None:
    out, dropped, _ = _cut(LEGACY, ThinPlan(frozenset({OLD_ID})), piece)
    assert f"{V1A}/layer.tar" not in _names(out)
    assert set(_names(out)) == set(_names(LEGACY)) - {f"{V1A}/layer.tar"}
    assert dropped.members == {f"{V1A}/layer.tar": OLD_ID}
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:  # the rest is intact
        assert tar.extractfile(f"{V1B}/layer.tar").read() == NEW  # type: ignore[union-attr]


def test_oci_blobs_are_dropped_by_name_without_hashing() -> None:
    out, dropped, spills = _cut(OCI, ThinPlan(frozenset({OLD_ID}), blobs=frozenset({OLD_ID})))
    assert _names(out) == [n for n in _names(OCI) if n != "blobs/sha256/" + OLD_ID[7:]]
    assert dropped.digests() == {OLD_ID} and spills == 0


def test_only_files_of_a_known_size_are_hashed() -> None:
    plan = ThinPlan(frozenset({OLD_ID}), sizes=frozenset({len(OLD)}))
    out, dropped, spills = _cut(LEGACY, plan)
    assert spills == 1 and dropped.digests() == {OLD_ID}
    out, dropped, spills = _cut(LEGACY, ThinPlan(frozenset({OLD_ID}), sizes=frozenset({1})))
    assert out == LEGACY and spills == 0  # a wrong hint costs a layer, never a wrong drop


def test_nothing_to_omit_leaves_the_stream_byte_for_byte() -> None:
    for archive in (LEGACY, OCI):
        out, dropped, _ = _cut(archive, ThinPlan(frozenset({"sha256:" + "0" * 64})), 1000)
        assert out == archive and not dropped.members


@pytest.mark.parametrize("link_first", [True, False])
def test_a_link_to_a_dropped_layer_goes_with_it(link_first: bool) -> None:
    link = (f"{V1A}/layer.tar", f"../{V1B}/layer.tar")  # legacy: a repeated layer links
    target = (f"{V1B}/layer.tar", OLD)
    archive = _tar([link, target] if link_first else [target, link])
    out, _, _ = _cut(archive, ThinPlan(frozenset({OLD_ID})))
    assert _names(out) == []
    out, _, _ = _cut(archive, ThinPlan(frozenset({NEW_ID})))  # kept: the link comes too
    assert sorted(_names(out)) == sorted(_names(archive))


def test_long_names_keep_their_pax_header() -> None:
    long = "d" * 120 + "/file"
    archive = _tar([(long, b"x"), (f"{V1A}/layer.tar", OLD)])
    out, _, _ = _cut(archive, ThinPlan(frozenset({OLD_ID})), 100)
    assert _names(out) == [long]


def test_plan_omits_a_diff_id_only_where_every_use_is_held() -> None:
    base = ImageEntry("sha256:" + "1" * 64, ("b:1",), (OLD_ID,))
    app = ImageEntry("sha256:" + "2" * 64, ("a:1",), (OLD_ID, NEW_ID))
    held = dict.fromkeys(chain_ids(base.layers), "01J0000000000000000000000A")
    plan = thin_plan([app], FarSide(held))
    assert plan.omit == {OLD_ID} and plan.sizes is None
    # NEW_ID as the bottom layer elsewhere is another layer on disk: OLD_ID at the top of
    # an image whose bottom the far side lacks is not held either
    other = ImageEntry("sha256:" + "3" * 64, ("o:1",), (NEW_ID, OLD_ID))
    assert thin_plan([app, other], FarSide(held)).omit == frozenset()
    omitted = omitted_layers([app], {OLD_ID}, FarSide(held))
    assert [(o.chain_id, o.bundle) for o in omitted] == [(OLD_ID, "01J0000000000000000000000A")]


def test_the_layer_map_follows_manifest_json_and_links() -> None:
    config = "c" * 64
    manifest = [{"Config": config + ".json", "Layers": [f"{V1A}/layer.tar", f"{V1B}/layer.tar"]}]
    archive = _tar(
        [
            (f"{V1A}/layer.tar", OLD),
            (f"{V1B}/layer.tar", f"../{V1A}/layer.tar"),
            (config + ".json", b"{}"),
            ("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    saved = SavedArchive({"manifest.json"})
    saved.update(archive)
    image = ImageEntry("sha256:" + config, ("x:1",), (OLD_ID, OLD_ID))
    assert saved.layer_files([image]) == {OLD_ID: LayerFile(len(OLD))}


def _legacy_image(with_old: bool) -> bytes:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [OLD_ID, NEW_ID]}}).encode()
    manifest = [{"Config": "c" * 64 + ".json", "Layers": [f"{V1A}/layer.tar", f"{V1B}/layer.tar"]}]
    members: list[tuple[str, bytes | str]] = [(f"{V1A}/json", b"{}")]
    members += [(f"{V1A}/layer.tar", OLD)] if with_old else []
    members += [(f"{V1B}/layer.tar", NEW), ("c" * 64 + ".json", config)]
    return _tar([*members, ("manifest.json", json.dumps(manifest).encode())])


@pytest.mark.parametrize("piece", [1, 511, 4096, 1 << 20])
def test_splicing_puts_back_what_manifest_json_names_and_the_archive_lacks(piece: int) -> None:
    asked: list[list[str]] = []

    def layer(diff_ids: Sequence[str]) -> dict[str, tuple[int, IO[bytes]]]:
        asked.append(list(diff_ids))
        return {d: (len(OLD), io.BytesIO(OLD)) for d in diff_ids}

    thin = _legacy_image(with_old=False)
    chunks = (thin[i : i + piece] for i in range(0, len(thin), piece))
    out = b"".join(spliced(chunks, layer))
    assert asked == [[OLD_ID]]
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.extractfile(f"{V1A}/layer.tar").read() == OLD  # type: ignore[union-attr]
        assert sorted(tar.getnames()) == sorted(_names(_legacy_image(with_old=True)))
    full = _legacy_image(with_old=True)
    assert b"".join(spliced([full], layer)) == full and asked == [[OLD_ID]]  # nothing lacking
    oci = _tar(
        [("blobs/sha256/" + NEW_ID[7:], NEW), ("manifest.json", b"[]"), ("oci-layout", b"{}")]
    )
    assert b"".join(spliced([oci], layer)) == oci  # a thin OCI layout loads as it is


def test_layers_are_spooled_out_of_one_save_only_when_their_hash_matches() -> None:
    save = _tar([("blobs/sha256/" + OLD_ID[7:], OLD), ("blobs/sha256/" + NEW_ID[7:], OLD)])
    found = spool_layers([save], [OLD_ID, NEW_ID], tempfile.TemporaryFile)
    assert list(found) == [OLD_ID]  # the blob named NEW holds OLD: not taken
    size, held = found[OLD_ID]
    with held:
        held.seek(0)
        assert size == len(OLD) and held.read() == OLD


class _FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_temporary_disk_is_named_not_a_bug() -> None:
    """(A tiny $TMPDIR with a real engine: tests/test_incremental.py.)"""
    with pytest.raises(StorageError, match=r"temporary file for a layer.*No space left") as info:
        _cut(LEGACY, ThinPlan(frozenset({OLD_ID})), spill=_FullDisk)
    assert info.value.hint and "TMPDIR" in info.value.hint
    with pytest.raises(StorageError, match="No space left"):
        spool_layers([OCI], [OLD_ID], _FullDisk)


def _as_go_writes_big_files(archive: bytes, name: str) -> bytes:
    """``archive`` with ``name``'s size only in a pax record, its header's size field 0: how
    Go's tar writer (``docker save``) stores a file of 8 GiB or more."""
    data = bytearray(archive)
    at = 0
    while data[at : at + BLOCK]:
        info = tarfile.TarInfo.frombuf(bytes(data[at : at + BLOCK]), "utf-8", "strict")
        if info.name == name and info.type == tarfile.REGTYPE:
            break
        at += BLOCK + -(-info.size // BLOCK) * BLOCK
    data[at + 124 : at + 136] = b"0" * 11 + b"\0"
    data[at + 148 : at + 156] = b" " * 8
    data[at + 148 : at + 156] = b"%06o\0 " % sum(data[at : at + BLOCK])
    return bytes(data)


def test_a_size_given_only_in_a_pax_record_is_the_size() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((f"{V1A}/layer.tar", OLD), (f"{V1B}/layer.tar", NEW)):
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"size": str(len(data))}
            tar.addfile(info, io.BytesIO(data))
    big = _as_go_writes_big_files(out.getvalue(), f"{V1A}/layer.tar")
    thin, dropped, _ = _cut(big, ThinPlan(frozenset({OLD_ID})), 777)
    assert dropped.members == {f"{V1A}/layer.tar": OLD_ID}
    with tarfile.open(fileobj=io.BytesIO(thin)) as tar:
        assert tar.extractfile(f"{V1B}/layer.tar").read() == NEW  # type: ignore[union-attr]
    saved = SavedArchive({"manifest.json"})
    saved.update(big)
    assert saved.sizes == {f"{V1A}/layer.tar": len(OLD), f"{V1B}/layer.tar": len(NEW)}


class _Counting(Meter):
    """A bar nobody sees that counts what it is given (a unit-test stand-in)."""

    def __init__(self) -> None:
        super().__init__("")
        self.count = 0

    @property
    def shown(self) -> bool:
        return True

    def add(self, count: int) -> None:
        self.count += count


class _Engine:
    """An engine holding one image of two legacy layers (a unit-test stand-in)."""

    image = ImageEntry("sha256:" + "c" * 64, ("x:1",), (OLD_ID, NEW_ID))

    def describe(self, refs: Sequence[str]) -> list[ImageEntry]:
        return [self.image]

    def save(self, refs: Sequence[str]) -> Iterator[bytes]:
        yield _legacy_image(with_old=True)


def test_what_a_thin_send_leaves_out_is_counted_as_the_images_size_counts_it() -> None:
    """The room a send needs is the images' size (a layer shared by two images counts twice)
    less what it leaves out: a shared omitted layer comes off twice; one of unknown size, or
    one the far side lacks, not at all."""
    base = ImageEntry("sha256:" + "a" * 64, ("base:1",), (OLD_ID,))
    app = ImageEntry("sha256:" + "b" * 64, ("app:1",), (OLD_ID, NEW_ID))
    debug = ImageEntry("sha256:" + "d" * 64, ("app:debug",), (OLD_ID, NEW_ID, "sha256:" + "e" * 64))
    held = FarSide().knowing([base])
    assert left_out_size([app, debug], held) == 0  # no size known
    sized = FarSide(held.layers, {OLD_ID: LayerFile(1000), NEW_ID: LayerFile(7)})
    assert left_out_size([app, debug], sized) == 2000
    assert left_out_size([app], FarSide(files=sized.files)) == 0  # none held


def test_the_encoding_bar_follows_the_whole_save_of_a_thin_send(tmp_path: Path) -> None:
    """Its total is the images' size: counting only the thin archive, it ended far short."""
    encoded = _Counting()
    held = {chain_ids([OLD_ID])[0]: "01J0000000000000000000000A"}
    sent = send_images(
        ["x:1"],
        DirectoryTransport(tmp_path),
        engine=cast(Engine, _Engine()),
        options=EncodeOptions([]),
        key=minisign.SecretKey.generate(),
        far=FarSide(held),
        meters=Meters(encoded),
    )
    assert [o.chain_id for o in sent.manifest.omitted] == [OLD_ID]  # a thin send
    assert encoded.count == len(_legacy_image(with_old=True))


def test_local_layers_go_on_to_an_image_that_holds_them_whole() -> None:
    """Found in review: the first image holding a layer was saved, and its copy being a
    compressed blob (built in a containerd store), there was "no uncompressed copy", though
    another image of the engine had one."""
    layer = b"x" * 2048
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    blob = b"compressed-bytes"
    built, loaded = "sha256:" + "0" * 64, "sha256:" + "f" * 64

    def archive(name: str, data: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    class TwoHolders:
        def layers(self) -> dict[str, list[str]]:
            return {built: [diff_id], loaded: [diff_id]}

        def save(self, refs: Sequence[str]) -> Iterator[bytes]:
            if list(refs) == [built]:
                yield archive(f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
            else:
                yield archive(f"blobs/sha256/{diff_id.removeprefix('sha256:')}", layer)

    with LocalLayers(cast(Engine, TwoHolders())) as local:
        (size, copy) = local([diff_id])[diff_id]
        copy.seek(0)
        assert size == len(layer) and copy.read() == layer
