"""Splicing: putting the layer files a thin legacy archive left out back in, from this engine.

The containerd image store refuses a legacy (``V1ID/layer.tar``) archive with a missing layer
file even when it holds that layer ("failed to resolve layers"); it accepts a thin OCI layout.
For that one case :func:`spliced` passes the archive through unchanged and, at its end, adds
each layer file that ``manifest.json`` names but the archive lacks, read from the engine
(``layer(diff_id)``). The receiver checked before loading that the engine holds them all.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import IO

from airgap.client.saved import MANIFEST_JSON, with_pax
from airgap.client.thin import BLOCK, EXTENSIONS, ChunkReader, extended, header_of, spilling
from airgap.shared.errors import EngineError

_KEEP = 1 << 20  # configs and manifest.json are kept up to this size
OCI_LAYOUT = "oci-layout"
#: Layers' uncompressed tars by diff id, asked for all at once: each one's size and a file
#: positioned at its start.
LayerSource = Callable[[Sequence[str]], Mapping[str, tuple[int, IO[bytes]]]]


def spliced(chunks: Iterable[bytes], layer: LayerSource) -> Iterator[bytes]:
    reader = ChunkReader(chunks)
    seen: set[str] = set()
    kept: dict[str, bytes] = {}
    pending = b""  # extension headers of the next member
    records: dict[str, str] = {}  # what they say of it
    while True:
        header = reader.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK):
            if len(header) == BLOCK and OCI_LAYOUT not in seen:
                yield from _missing_files(kept, seen, layer)
            yield pending + header
            yield from reader.rest()
            return
        info = header_of(header)
        if info.type in EXTENSIONS:
            data = reader.read(-(-info.size // BLOCK) * BLOCK)
            pending += header + data
            records.update(extended(info, data[: info.size]))
            continue
        info, records = with_pax(info, records), {}
        name, padded = info.name, -(-info.size // BLOCK) * BLOCK
        seen.add(name)
        yield pending + header
        pending = b""
        if info.isreg() and name.endswith(".json") and "/" not in name and info.size <= _KEEP:
            data = reader.read(padded)
            kept[name] = data[: info.size]
            yield data
        else:
            yield from reader.pieces(padded)


def _missing_files(kept: dict[str, bytes], seen: set[str], layer: LayerSource) -> Iterator[bytes]:
    missing = {path: d for path, d in _layer_paths(kept).items() if path not in seen}
    found = layer(sorted(set(missing.values()))) if missing else {}
    for path, diff_id in missing.items():
        size, source = found[diff_id]
        source.seek(0)
        info = tarfile.TarInfo(path)
        info.size, info.mode = size, 0o644
        yield info.tobuf(tarfile.USTAR_FORMAT)
        while piece := source.read(1 << 20):
            yield piece
        yield bytes(-size % BLOCK)
        seen.add(path)


def _layer_paths(kept: dict[str, bytes]) -> dict[str, str]:
    """Each layer path manifest.json names -> the diff id its config gives that position."""
    try:
        entries = json.loads(kept[MANIFEST_JSON])
        found: dict[str, str] = {}
        for entry in entries:
            config = json.loads(kept[str(entry["Config"])])
            diff_ids = config["rootfs"]["diff_ids"]
            for path, diff_id in zip(entry["Layers"], diff_ids, strict=True):
                found[str(path)] = str(diff_id)
    except (KeyError, ValueError, TypeError) as exc:
        raise EngineError("docker load: the archive's manifest.json and configs disagree") from exc
    return found


def spool_layers(
    chunks: Iterable[bytes], wanted: Collection[str], spill: Callable[[], IO[bytes]]
) -> dict[str, tuple[int, IO[bytes]]]:
    """Copy the uncompressed blobs of the ``wanted`` diff ids out of one ``docker save`` stream
    of this engine, each into a ``spill`` file, checked by hash; those it held. The containerd
    store keeps a layer that came by ``docker load`` uncompressed, named by its diff id; one it
    pulled or built may be compressed, and then there is nothing to splice from."""
    names = {"blobs/sha256/" + d.removeprefix("sha256:"): d for d in wanted}
    reader, records, found = ChunkReader(chunks), dict[str, str](), {}
    while len(header := reader.read(BLOCK)) == BLOCK and header != bytes(BLOCK):
        info = header_of(header)
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in EXTENSIONS:
            records.update(extended(info, reader.read(padded)[: info.size]))
            continue
        info, records = with_pax(info, records), {}
        padded = -(-info.size // BLOCK) * BLOCK
        diff_id = names.get(info.name)
        if diff_id is None or not info.isreg() or diff_id in found:
            reader.skip(padded)
            continue
        with spilling():
            digest, held = hashlib.sha256(), spill()
            for piece in reader.pieces(info.size):
                digest.update(piece)
                held.write(piece)
        reader.skip(padded - info.size)
        if "sha256:" + digest.hexdigest() == diff_id:
            found[diff_id] = (info.size, held)
        else:
            held.close()
    return found


def no_copy(diff_ids: Collection[str]) -> EngineError:
    return EngineError(
        f"cannot put layers back into the archive ({', '.join(sorted(diff_ids))}): "
        "this engine keeps no uncompressed copy of them",
        hint="have the sender send again with --full",
    )
