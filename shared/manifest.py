"""The bundle manifest: what a bundle holds and how to check every byte of it.

The manifest is canonical JSON (sorted keys, two-space indent, UTF-8, final newline), so one
manifest has exactly one byte form and the signature covers that form. :meth:`Manifest.parse`
accepts nothing else: unknown or missing keys, duplicate keys, floats, wrong types, a payload
name that does not follow from the id, or a segment list that does not cover the payload are all
:class:`ManifestError`. It never touches files; callers hand it bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airgap.shared.errors import ManifestError
from airgap.shared.ids import is_bundle_id
from airgap.shared.layers import all_chain_ids
from airgap.shared.refs import is_reference

FORMAT = "airgap-bundle/1"
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
#: The most of a manifest read when no trusted key has vouched for it (``airgap ls`` without
#: --trust, an appliance without --trusted-signer): parsing a hostile 32 MiB of JSON takes
#: seconds and a gigabyte. Real manifests are far smaller: about 190 bytes a file (ten
#: thousand files, 1.9 MB), 72 a 16 MiB segment (100 GiB of payload, 0.5 MB), 80 a layer
#: (twenty images of 127 layers, 0.2 MB).
MAX_UNVERIFIED_MANIFEST = 2 << 20
MIN_SEGMENT = 64 * 1024
MAX_SEGMENT = 64 * 1024 * 1024
DEFAULT_SEGMENT = 16 * 1024 * 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CREATED = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_KEY_ID = re.compile(r"^[0-9A-F]{16}$")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageEntry:
    """An image as the sending engine names it (``id``: the config digest with a graph driver,
    the manifest digest with the containerd image store) and as every engine agrees on it
    (``config``: the digest of its config; None when the archive did not say)."""

    id: str
    refs: tuple[str, ...]
    layers: tuple[str, ...]
    config: str | None = None


@dataclass(frozen=True)
class OmittedLayer:
    """A layer an incremental bundle leaves out: the receiving engine must already hold it.
    ``bundle`` is the earlier bundle that carried it, None when the sender was only told the
    far side has it (``--base``)."""

    chain_id: str
    bundle: str | None


@dataclass(frozen=True)
class Encryption:
    scheme: str  # "age-v1" or "none"
    recipients: tuple[str, ...] = ()
    passphrase: bool = False


@dataclass(frozen=True)
class Payload:
    name: str
    size: int
    sha256: str
    segment_size: int
    segments: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    id: str
    created: str
    tool: str
    signer: str
    plaintext_size: int
    plaintext_sha256: str
    compression_level: int
    encryption: Encryption
    payload: Payload
    files: tuple[FileEntry, ...] = field(default=())
    images: tuple[ImageEntry, ...] = field(default=())
    omitted: tuple[OmittedLayer, ...] = field(default=())

    @property
    def content_type(self) -> str:
        return "images" if self.images else "files"

    def trusted_comment(self) -> str:
        """The signed one-liner that ties a signature to this very bundle."""
        return f"{_comment_start(self.id)}{self.payload.sha256}"

    def to_bytes(self) -> bytes:
        return _dump(self._to_obj())

    def _to_obj(self) -> dict[str, Any]:
        if self.images:
            content: dict[str, Any] = {
                "type": "images",
                "images": [
                    {
                        "id": i.id,
                        "config": i.config,
                        "refs": list(i.refs),
                        "layers": list(i.layers),
                    }
                    for i in self.images
                ],
            }
            if self.omitted:  # absent from full bundles, which keep their earlier byte form
                content["omitted"] = [
                    {"chain_id": o.chain_id, "bundle": o.bundle} for o in self.omitted
                ]
        else:
            content = {
                "type": "files",
                "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            }
        enc: dict[str, Any] = {"scheme": self.encryption.scheme}
        if self.encryption.scheme != "none":
            enc["recipients"] = list(self.encryption.recipients)
            enc["passphrase"] = self.encryption.passphrase
        p = self.payload
        return {
            "format": FORMAT,
            "id": self.id,
            "created": self.created,
            "tool": self.tool,
            "signer": self.signer,
            "content": content,
            "plaintext": {"size": self.plaintext_size, "sha256": self.plaintext_sha256},
            "compression": {"algorithm": "zstd", "level": self.compression_level},
            "encryption": enc,
            "payload": {
                "name": p.name,
                "size": p.size,
                "sha256": p.sha256,
                "segment_size": p.segment_size,
                "segments": list(p.segments),
            },
        }

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("manifest: larger than any manifest airgap writes")
        obj = _load(data)
        # What cannot be written back is not canonical: lone surrogates, giant integers, and
        # nesting that json.loads took but json.dumps cannot write (Python 3.12).
        try:
            canonical = _dump(obj) == data
        except (ValueError, UnicodeError, RecursionError) as exc:
            raise ManifestError("manifest: not in canonical form") from exc
        if not canonical:
            raise ManifestError("manifest: not in canonical form")
        return _from_obj(obj)


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest as the manifest writes image ids, configs and layers."""
    return _DIGEST.fullmatch(text) is not None


def is_plain_name(name: str) -> bool:
    """A file name with no directory part, nothing a path could be built from."""
    return name not in ("", ".", "..") and not any(ch in name for ch in "/\0\\\r\n")


def payload_name(bundle_id: str, *, encrypted: bool) -> str:
    return f"{bundle_id}.tar.zst.age" if encrypted else f"{bundle_id}.tar.zst"


def segment_count(size: int, segment_size: int) -> int:
    return -(-size // segment_size)


def names_bundle(comment: str, bundle_id: str) -> bool:
    """Whether ``comment`` is the trusted comment of a manifest of bundle ``bundle_id``."""
    return comment.startswith(_comment_start(bundle_id))


def _comment_start(bundle_id: str) -> str:
    return f"{FORMAT} id={bundle_id} payload-sha256="


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _load(data: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ManifestError("manifest: duplicate key")
        return dict(pairs)

    def refuse(text: str) -> Any:
        raise ManifestError(f"manifest: number {text!r} is not an integer")

    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_float=refuse,
            parse_constant=refuse,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeError, huge ints
        raise ManifestError("manifest: not valid UTF-8 JSON") from exc


def _obj(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ManifestError(f"manifest: {where} must have exactly the keys {sorted(keys)}")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"manifest: {where} must be a non-negative integer")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ManifestError(f"manifest: {where} is malformed")
    return value


def _created(value: Any) -> str:
    """A UTC time in seconds, as ``2026-11-27T23:13:01Z``, and one the calendar has."""
    text = _str(value, "created", _CREATED)
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ManifestError("manifest: created is no such time") from None
    return text


def _strs(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"manifest: {where} must be a list")
    return tuple(_str(v, where, pattern) for v in value)


def _from_obj(obj: Any) -> Manifest:
    keys = {"format", "id", "created", "tool", "signer", "content", "plaintext"}
    top = _obj(obj, keys | {"compression", "encryption", "payload"}, "the top level")
    if top["format"] != FORMAT:
        raise ManifestError(f"manifest: format {top['format']!r} is not {FORMAT!r}")
    bundle_id = _str(top["id"], "id")
    if not is_bundle_id(bundle_id):
        raise ManifestError("manifest: id is malformed")
    plain = _obj(top["plaintext"], {"size", "sha256"}, "plaintext")
    comp = _obj(top["compression"], {"algorithm", "level"}, "compression")
    level = comp["level"]
    if comp["algorithm"] != "zstd" or not isinstance(level, int) or isinstance(level, bool):
        raise ManifestError("manifest: compression must be zstd with an integer level")
    encryption = _encryption(top["encryption"])
    files, images, omitted = _content(top["content"])
    return Manifest(
        id=bundle_id,
        created=_created(top["created"]),
        tool=_str(top["tool"], "tool"),
        signer=_str(top["signer"], "signer", _KEY_ID),
        plaintext_size=_int(plain["size"], "plaintext size"),
        plaintext_sha256=_str(plain["sha256"], "plaintext sha256", _HEX64),
        compression_level=comp["level"],
        encryption=encryption,
        payload=_payload(top["payload"], bundle_id, encrypted=encryption.scheme != "none"),
        files=files,
        images=images,
        omitted=omitted,
    )


def _encryption(value: Any) -> Encryption:
    if isinstance(value, dict) and value.get("scheme") == "none":
        _obj(value, {"scheme"}, "encryption")
        return Encryption("none")
    enc = _obj(value, {"scheme", "recipients", "passphrase"}, "encryption")
    if enc["scheme"] != "age-v1" or not isinstance(enc["passphrase"], bool):
        raise ManifestError("manifest: encryption scheme must be age-v1 or none")
    return Encryption("age-v1", _strs(enc["recipients"], "recipients"), enc["passphrase"])


def _payload(value: Any, bundle_id: str, *, encrypted: bool) -> Payload:
    p = _obj(value, {"name", "size", "sha256", "segment_size", "segments"}, "payload")
    payload = Payload(
        name=_str(p["name"], "payload name"),
        size=_int(p["size"], "payload size"),
        sha256=_str(p["sha256"], "payload sha256", _HEX64),
        segment_size=_int(p["segment_size"], "segment size"),
        segments=_strs(p["segments"], "segment hash", _HEX64),
    )
    if payload.name != payload_name(bundle_id, encrypted=encrypted):
        raise ManifestError("manifest: payload name does not match the bundle id")
    if not MIN_SEGMENT <= payload.segment_size <= MAX_SEGMENT:
        raise ManifestError("manifest: segment size out of range")
    if len(payload.segments) != segment_count(payload.size, payload.segment_size):
        raise ManifestError("manifest: segment hashes do not cover the payload")
    return payload


_Content = tuple[tuple[FileEntry, ...], tuple[ImageEntry, ...], tuple[OmittedLayer, ...]]


def _content(value: Any) -> _Content:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "files":
        content = _obj(value, {"type", "files"}, "content")
        if not isinstance(content["files"], list):
            raise ManifestError("manifest: files must be a list")
        files = tuple(_file(f) for f in content["files"])
        if len({f.name for f in files}) != len(files):
            raise ManifestError("manifest: a file name appears twice")
        return files, (), ()
    if kind == "images":
        keys = {"type", "images"} | ({"omitted"} if "omitted" in value else set())
        content = _obj(value, keys, "content")
        if not isinstance(content["images"], list) or not content["images"]:
            raise ManifestError("manifest: images must be a non-empty list")
        images = tuple(_image(i) for i in content["images"])
        if len({i.id for i in images}) != len(images):  # a sender lists an image once
            raise ManifestError("manifest: an image appears twice")
        refs = [ref for i in images for ref in i.refs]
        if len(set(refs)) != len(refs):  # which image would it tag?
            raise ManifestError("manifest: an image ref appears twice")
        if "omitted" in content and content["omitted"] is None:  # absent has one form only
            raise ManifestError("manifest: omitted must be a non-empty list")
        return (), images, _omitted(content.get("omitted"), images)
    raise ManifestError("manifest: content type must be files or images")


def _omitted(value: Any, images: tuple[ImageEntry, ...]) -> tuple[OmittedLayer, ...]:
    """Absent, or a non-empty list of distinct chain ids, each a layer of the bundle's images."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ManifestError("manifest: omitted must be a non-empty list")
    found = []
    for item in value:
        o = _obj(item, {"chain_id", "bundle"}, "an omitted layer")
        bundle = o["bundle"]
        if bundle is not None and not (isinstance(bundle, str) and is_bundle_id(bundle)):
            raise ManifestError("manifest: the bundle of an omitted layer is malformed")
        found.append(OmittedLayer(_str(o["chain_id"], "omitted chain id", _DIGEST), bundle))
    if len({o.chain_id for o in found}) != len(found):
        raise ManifestError("manifest: an omitted layer appears twice")
    if not {o.chain_id for o in found} <= all_chain_ids(i.layers for i in images):
        raise ManifestError("manifest: an omitted layer is no layer of the bundle's images")
    return tuple(found)


def _file(value: Any) -> FileEntry:
    f = _obj(value, {"name", "size", "sha256"}, "a file entry")
    if not isinstance(f["name"], str) or not is_plain_name(f["name"]):
        raise ManifestError("manifest: a file name is not a plain file name")
    return FileEntry(
        name=_str(f["name"], "file name"),
        size=_int(f["size"], "file size"),
        sha256=_str(f["sha256"], "file sha256", _HEX64),
    )


def _image(value: Any) -> ImageEntry:
    i = _obj(value, {"id", "config", "refs", "layers"}, "an image entry")
    refs = _strs(i["refs"], "image ref")
    if not all(map(is_reference, refs)):  # it reaches the engine's API, in a URL path
        raise ManifestError("manifest: an image ref is not a Docker image reference")
    return ImageEntry(
        id=_str(i["id"], "image id", _DIGEST),
        refs=refs,
        layers=_strs(i["layers"], "layer diff id", _DIGEST),
        config=None if i["config"] is None else _str(i["config"], "image config", _DIGEST),
    )
