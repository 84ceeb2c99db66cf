"""What a ``docker save`` archive says about its images, learnt as its tar stream goes by.

:class:`SavedArchive` keeps the few small members it is asked for (``manifest.json``, an OCI
manifest) and the size of every file, and counts every other byte without keeping it, so memory
stays small whatever the image. It reads both archive layouts: legacy (``ID.json`` configs,
``V1ID/layer.tar``) and OCI (``blobs/sha256/``). It never talks to an engine.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass

from airgap.shared.errors import EngineError
from airgap.shared.manifest import ImageEntry
from airgap.shared.refs import tag_of

MANIFEST_JSON = "manifest.json"
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_PAX = "\0pax"  # a pax header is kept under this name, which no member can have
_GNU = {tarfile.GNUTYPE_LONGNAME: "\0gnu-path", tarfile.GNUTYPE_LONGLINK: "\0gnu-linkpath"}


@dataclass(frozen=True)
class LayerFile:
    """How one layer appeared in a save: its file's size and, in an OCI layout, the digest
    that names its blob (the diff id, or a compressed blob's own digest)."""

    size: int
    blob: str | None = None


class SavedArchive:
    """A stage fed with :meth:`update`: the members named in ``wanted`` are kept (when at most
    ``limit`` bytes), every other byte is only counted."""

    def __init__(self, wanted: Collection[str], *, limit: int = 1 << 20) -> None:
        self.members: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}  # every regular file's size
        self.links: dict[str, str] = {}  # every link: name -> the member it points at
        self._wanted, self._limit = set(wanted), limit
        self._pending = bytearray()  # the header being read, or the kept member's data
        self._need = tarfile.BLOCKSIZE  # bytes still to come in the current part
        self._header = True
        self._keep: str | None = None
        self._size = 0
        self._pax: dict[str, str] = {}  # the records of a pax header, for the next member
        self.unreadable = False  # a name went unread: an extended header too large, or chained
        self.repeated: set[str] = set()  # wanted names that more than one member lands on
        self._landed: set[str] = set()
        self._ended = False

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self._ended:
            take = min(self._need, len(view))
            if self._header or self._keep is not None:
                self._pending += view[:take]
            view, self._need = view[take:], self._need - take
            if self._need == 0:
                self._next_part()

    def config_of(self, image_id: str, refs: Collection[str] = ()) -> str | None:
        """The config digest of the image the engine calls ``image_id`` (tagged ``refs``), if
        the archive says. A containerd store names an image by its manifest, or by an image
        index (what a pull of a multi-platform image leaves): then by a manifest of the index
        that the archive holds, whose config manifest.json lists; the one it lists under the
        image's tags, if any (the platform the engine prefers, which need not come first)."""
        blob = self.members.get(blob_name(image_id))
        listed = self.configs()
        if blob is None or image_id in listed:  # a graph driver names it by its config
            return image_id if image_id in listed else None
        found: list[str] = []
        with suppress(ValueError, TypeError, KeyError, AttributeError, RecursionError):
            document = json.loads(blob)
            if "config" in document:  # a manifest names the config
                digest = document["config"]["digest"]
                return digest if isinstance(digest, str) else None
            for child in document["manifests"]:
                with suppress(ValueError, TypeError, KeyError, AttributeError, RecursionError):
                    inner = self.members.get(blob_name(str(child["digest"])))
                    digest = json.loads(inner or b"{}")["config"]["digest"]
                    if digest in listed:  # another platform's, or an attestation: not listed
                        found.append(str(digest))
        if len(found) > 1 and refs:  # which of them manifest.json lists under its tags
            wanted, held = {tag_of(ref) for ref in refs}, self.tags()
            found = [c for c in found if wanted & {tag_of(t) for t in held.get(c, ())}] or found
        return next(iter(found), None)

    def holds(self, image_id: str) -> bool:
        """Whether the archive holds the image the engine calls ``image_id``: its manifest (or
        index) blob, or its config among manifest.json's."""
        return blob_name(image_id) in self.members or image_id in self.configs()

    def configs(self) -> list[str]:
        """The config digests manifest.json lists, in its order."""
        return list(self._entries())

    def layer_files(self, images: Collection[ImageEntry]) -> dict[str, LayerFile]:
        """diff id -> how that layer's file appeared, for the ``images`` this archive holds."""
        entries = self._entries()
        found: dict[str, LayerFile] = {}
        for image in images:
            paths = entries.get(self.config_of(image.id, image.refs) or "")
            if paths is None or len(paths) != len(image.layers):
                continue
            for diff_id, path in zip(image.layers, paths, strict=True):
                path = self.links.get(path, path)
                if path in self.sizes:
                    found[diff_id] = LayerFile(self.sizes[path], blob_digest(path))
        return found

    def tags(self) -> dict[str, list[str]]:
        """config digest -> the tags manifest.json gives that image (in every entry of it: a
        containerd store lists one per manifest, and two manifests may share a config)."""
        held: dict[str, list[str]] = {}
        for config, _, tags in self._listed():
            held.setdefault(config, []).extend(tags)
        return held

    def _entries(self) -> dict[str, list[str]]:
        """config digest -> its layer paths, from manifest.json."""
        return {config: paths for config, paths, _ in self._listed()}

    def _listed(self) -> list[tuple[str, list[str], list[str]]]:
        """manifest.json's entries: config digest, layer paths, tags."""
        try:
            entries = json.loads(self.members[MANIFEST_JSON])
            listed = [
                (
                    "sha256:" + str(e["Config"]).rsplit("/", 1)[-1].removesuffix(".json"),
                    [str(p) for p in e.get("Layers") or []],
                    [str(t) for t in e.get("RepoTags") or []],
                )
                for e in entries
            ]
        except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise EngineError("docker save: the archive has no readable manifest.json") from exc
        return listed

    def _next_part(self) -> None:
        if not self._header:  # a member's data (and padding) is done
            if self._keep is not None:
                data = bytes(self._pending[: self._size])
                if self._keep == _PAX:
                    self._pax = pax_records(data)
                elif self._keep in _GNU.values():  # a GNU long name, for the next member
                    key = self._keep.removeprefix("\0gnu-")
                    self._pax = {key: data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
                elif self._keep in self._wanted or data[:1] == b"{":  # a blob: JSON only
                    self.members[self._keep] = data
            self._pending.clear()
            self._header, self._keep, self._need = True, None, tarfile.BLOCKSIZE
            return
        block = bytes(self._pending)
        self._pending.clear()
        if block == bytes(tarfile.BLOCKSIZE):
            self._ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise EngineError(f"docker save: not a tar archive airgap can read ({exc})") from exc
        extended = info.type == tarfile.XHDTYPE or info.type in _GNU
        if extended and self._pax:  # a GNU long name and a pax path: readers disagree on which
            self.unreadable = True
        info, self._pax = with_pax(info, self._pax), {}
        name = info.name
        # Of several members that land on one name, the last is the one an untar leaves.
        if not extended and (landing := landed_as(name)) in self._wanted:
            if landing in self._landed:
                self.repeated.add(landing)
            self._landed.add(landing)
        if extended:
            if info.size > self._limit:  # the next member's name is not known here
                self.unreadable = True
            else:
                self._keep = _PAX if info.type == tarfile.XHDTYPE else _GNU[info.type]
        elif (name in self._wanted and info.size <= self._limit) or (
            name.startswith(_BLOBS) and info.size <= SMALL_BLOB  # an index's manifests
        ):
            self._keep = name
        if info.isreg():
            self.sizes[name] = info.size
        elif info.issym():
            self.links[name] = posixpath.normpath(
                posixpath.join(posixpath.dirname(name), info.linkname)
            )
        elif info.islnk():
            self.links[name] = posixpath.normpath(info.linkname)
        self._size = info.size
        self._need = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self._header = False
        if self._need == 0:
            self._next_part()


_BLOBS = "blobs/sha256/"
#: Blobs as small as this are kept when they are JSON: manifests (an index names them).
SMALL_BLOB = 64 * 1024


def landed_as(name: str) -> str:
    """Where an untar puts member ``name``: "/manifest.json" lands on manifest.json too."""
    return posixpath.normpath(name.lstrip("/"))


def blob_name(digest: str) -> str:
    """Where an OCI-layout archive holds the blob of ``digest``."""
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def blob_digest(name: str) -> str | None:
    """The digest an OCI-layout member ``blobs/sha256/HEX`` is named by, or None."""
    match = _BLOB.match(name)
    return "sha256:" + match.group(1) if match else None


def pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (``LEN key=value\n`` each)."""
    records: dict[str, str] = {}
    while data:
        length, _, rest = data.partition(b" ")
        if not length.isdigit() or int(length) <= len(length):
            break
        record, data = rest[: int(length) - len(length) - 1], data[int(length) :]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return records


def with_pax(info: tarfile.TarInfo, records: dict[str, str]) -> tarfile.TarInfo:
    """``info`` as its pax records correct it: Go's tar writer (``docker save``) puts a name
    too long for the header, and the size of a file of 8 GiB or more, only there."""
    if "path" in records:
        info.name = records["path"]
    if "linkpath" in records:
        info.linkname = records["linkpath"]
    if records.get("size", "").isdigit():
        info.size = int(records["size"])
    return info
