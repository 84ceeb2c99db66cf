"""The Docker engine: the one module of airgap that talks to the Docker SDK.

It saves images as one tar stream, describes them for the manifest (id, refs, layer diff ids),
loads a tar stream, and reads or moves tags. Timeouts are generous: the SDK's default of 60 s
breaks the save and load of big images. Every docker error becomes an :class:`EngineError`.

Engines name images differently: with a graph driver (Docker 20.10, 26.1) an image id is the
digest of its config, with the containerd image store it is the digest of its manifest (which a
load from another kind of engine makes anew). The config digest is what every engine agrees on;
:class:`SavedArchive` reads it from the archive as the stream goes by, and
:meth:`Engine.config_digest` asks a containerd-store engine for it the only way 26.1 offers, a
``docker save`` of that one image.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import docker
import docker.errors
import requests
from docker.context import ContextAPI

from airgap.shared.errors import EngineError, UsageError
from airgap.shared.manifest import ImageEntry

TIMEOUT = 3600
MANIFEST_JSON = "manifest.json"
_PAX = "\0pax"  # a pax header is kept under this name, which no member can have
_LOADED = re.compile(r"^Loaded image(?: ID)?: (.+)$")


class Engine:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> Engine:
        """The engine DOCKER_HOST, else the current Docker CLI context, points at."""
        with _errors(f"connecting to the Docker engine at {_endpoint()}"):
            client = docker.from_env(timeout=TIMEOUT)
            client.ping()
        return cls(client)

    def close(self) -> None:
        self._client.close()

    def describe(self, refs: Sequence[str]) -> list[ImageEntry]:
        """The manifest entries of ``refs``; an unknown image is a usage error."""
        entries: dict[str, ImageEntry] = {}
        for ref in refs:
            try:
                image = self._client.images.get(ref)
            except docker.errors.ImageNotFound as exc:
                raise UsageError(
                    f"no image {ref!r} in the Docker engine", hint="check `docker images`"
                ) from exc
            except (docker.errors.DockerException, requests.RequestException) as exc:
                raise EngineError(f"inspecting {ref}: {exc}") from exc
            known = entries[image.id].refs if image.id in entries else ()
            refs = known if ref in known else (*known, ref)
            entries[image.id] = ImageEntry(image.id, refs, tuple(image.attrs["RootFS"]["Layers"]))
        return list(entries.values())

    def size(self, refs: Sequence[str]) -> int:
        """An upper bound of what ``docker save`` of ``refs`` writes (shared layers count twice)."""
        total = 0
        for image_id in {entry.id for entry in self.describe(refs)}:
            with _errors(f"inspecting {image_id}"):
                total += int(self._client.images.get(image_id).attrs.get("Size") or 0)
        return total

    def save(self, refs: Sequence[str], *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """``docker save REF...`` as a stream; layers shared by several images come once."""
        api = self._client.api
        with _errors("docker save"):
            # The SDK's get_image takes one name; the engine's endpoint takes several.
            response = api._get(api._url("/images/get"), params={"names": list(refs)}, stream=True)
            api._raise_for_status(response)
        with _errors("docker save"):
            yield from response.iter_content(chunk_size)

    def load(self, chunks: Iterable[bytes]) -> list[str]:
        """``docker load`` of a stream; what the engine reports it loaded (ids or names)."""
        loaded: list[str] = []
        with _errors("docker load"):
            for message in self._client.api.load_image(chunks):
                if "errorDetail" in message:
                    raise EngineError(f"docker load: {message['errorDetail'].get('message')}")
                match = _LOADED.match(str(message.get("stream", "")).strip())
                if match:
                    loaded.append(match.group(1))
        return loaded

    def config_digest(self, ref: str) -> str | None:
        """The digest of the config of the image ``ref`` names, read from its own archive."""
        archive = SavedArchive({MANIFEST_JSON})
        for chunk in self.save([ref]):
            archive.update(chunk)
        configs = archive.configs()
        return configs[0] if len(configs) == 1 else None

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self._client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"inspecting {ref}: {exc}") from exc

    def tag(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
        with _errors(f"tagging {ref}"):
            self._client.api.tag(image_id, repository, tag or "latest", force=True)

    def untag(self, ref: str) -> None:
        with _errors(f"removing tag {ref}"), suppress(docker.errors.ImageNotFound):
            self._client.api.remove_image(ref, noprune=True)


class SavedArchive:
    """What a ``docker save`` archive says about its images, learnt as its tar stream goes by.

    A stage fed with :meth:`update`: the members named in ``wanted`` are kept (when at most
    ``limit`` bytes), every other byte is only counted, so memory stays small whatever the
    image. Reads both archive layouts: legacy (``ID.json`` configs) and OCI (``blobs/sha256/``).
    """

    def __init__(self, wanted: Collection[str], *, limit: int = 1 << 20) -> None:
        self.members: dict[str, bytes] = {}
        self._wanted, self._limit = set(wanted), limit
        self._pending = bytearray()  # the header being read, or the kept member's data
        self._need = tarfile.BLOCKSIZE  # bytes still to come in the current part
        self._header = True
        self._keep: str | None = None
        self._size = 0
        self._pax_path: str | None = None
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

    def config_of(self, image_id: str) -> str | None:
        """The config digest of the image the engine calls ``image_id``, if the archive says."""
        blob = self.members.get("blobs/sha256/" + image_id.removeprefix("sha256:"))
        if blob is not None:  # the id is a manifest digest: the manifest names the config
            with suppress(ValueError, TypeError, KeyError):
                digest = json.loads(blob)["config"]["digest"]
                return digest if isinstance(digest, str) else None
        return image_id if image_id in self.configs() else None

    def configs(self) -> list[str]:
        """The config digests manifest.json lists, in its order."""
        try:
            entries = json.loads(self.members[MANIFEST_JSON])
            names = [str(entry["Config"]).rsplit("/", 1)[-1] for entry in entries]
        except (KeyError, ValueError, TypeError) as exc:
            raise EngineError("docker save: the archive has no readable manifest.json") from exc
        return ["sha256:" + name.removesuffix(".json") for name in names]

    def _next_part(self) -> None:
        if not self._header:  # a member's data (and padding) is done
            if self._keep is not None:
                data = bytes(self._pending[: self._size])
                if self._keep == _PAX:
                    self._pax_path = _pax_path(data)
                else:
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
        name, self._pax_path = self._pax_path or info.name, None
        if info.type == tarfile.XHDTYPE and info.size <= self._limit:
            self._keep = _PAX
        elif name in self._wanted and info.size <= self._limit:
            self._keep = name
        self._size = info.size
        self._need = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self._header = False
        if self._need == 0:
            self._next_part()


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records are ``LEN key=value\\n``)."""
    while data:
        length, _, rest = data.partition(b" ")
        if not length.isdigit() or int(length) <= len(length):
            return None
        record, data = rest[: int(length) - len(length) - 1], data[int(length) :]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def _endpoint() -> str:
    """Where the SDK will connect, as the Docker CLI would say it (for messages only)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    try:
        context = ContextAPI.kwargs_from_context()
    except (docker.errors.DockerException, OSError, ValueError):
        context = {}
    return str(context.get("base_url") or "unix:///var/run/docker.sock")


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(
            f"{what}: {exc}", hint="is the Docker engine running? (DOCKER_HOST, docker info)"
        ) from exc
