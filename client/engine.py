"""The Docker engine: the one module of airgap that talks to the Docker SDK.

It saves images as one tar stream, describes them for the manifest (id, refs, layer diff ids),
loads a tar stream, and reads or moves tags. Timeouts are generous: the SDK's default of 60 s
breaks the save and load of big images. Every docker error becomes an :class:`EngineError`.

Engines name images differently: with a graph driver (Docker 20.10, 26.1) an image id is the
digest of its config, with the containerd image store it is the digest of its manifest (which a
load from another kind of engine makes anew). The config digest is what every engine agrees on;
:class:`~airgap.client.saved.SavedArchive` reads it from the archive as the stream goes by, and
:meth:`Engine.config_digest` asks a containerd-store engine for it the only way 26.1 offers, a
``docker save`` of that one image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from airgap.client.saved import MANIFEST_JSON, SavedArchive
from airgap.shared.errors import EngineError, UsageError
from airgap.shared.layers import all_chain_ids
from airgap.shared.manifest import ImageEntry
from airgap.shared.refs import is_reference, tag_of

TIMEOUT = 3600
_LOADED = re.compile(r"^Loaded image(?: ID)?: (.+)$")


class Engine:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> Engine:
        """The engine DOCKER_HOST, else the current Docker CLI context, points at."""
        import docker  # here, as the SDK's other imports: it takes a tenth of a second to load,
        # and most commands (keygen, ls, verify, --help, fetch --output-dir) never use it

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
            image = self._image(ref)
            if image is None:
                raise UsageError(
                    f"no image {ref!r} in the Docker engine", hint="check `docker images`"
                )
            known = entries[image.id].refs if image.id in entries else ()
            # Only a tag goes with the image: an id, a prefix of one or a digest names it
            # here alone (another engine names it otherwise), so it arrives untagged.
            tags = {tag_of(tag) for tag in image.attrs.get("RepoTags") or []}
            refs = known if ref in known or tag_of(ref) not in tags else (*known, ref)
            entries[image.id] = ImageEntry(image.id, refs, tuple(image.attrs["RootFS"]["Layers"]))
        return list(entries.values())

    def size(self, described: Sequence[ImageEntry]) -> int:
        """An upper bound of what ``docker save`` of the ``described`` images writes (shared
        layers count twice)."""
        total = 0
        for image_id in {entry.id for entry in described}:
            with _errors(f"inspecting {image_id}"):
                total += int(self._client.images.get(image_id).attrs.get("Size") or 0)
        return total

    def save(self, refs: Sequence[str], *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """``docker save REF...`` as a stream; layers shared by several images come once."""
        for ref in refs:
            _named(ref)
        api = self._client.api
        with _errors("docker save"):
            # The SDK's get_image takes one name; the engine's endpoint takes several.
            response = api._get(api._url("/images/get"), params={"names": list(refs)}, stream=True)
            api._raise_for_status(response)
        with _errors("docker save"):
            yield from response.iter_content(chunk_size)

    def load(self, chunks: Iterable[bytes], *, size: int | None = None) -> list[str]:
        """``docker load`` of a stream; what the engine reports it loaded (ids or names).

        With ``size``, the exact byte count of the stream, the body goes out as it comes with
        a Content-Length. Without it the SDK frames each piece for chunked encoding, copying it
        once more: 0.45 CPU-s a 1.3 GB load here, on the two cores that decrypt and decompress.
        ``size`` must be exact: the caller's decode refuses more bytes, and ends in an error
        (which breaks off the upload, so the engine loads nothing) rather than with fewer.
        """
        api = self._client.api
        loaded: list[str] = []
        with _errors("docker load"):
            if size is None:
                messages = api.load_image(chunks)
            else:
                response = api._post(
                    api._url("/images/load"),
                    data=_Sized(chunks, size),
                    headers={"Content-Type": "application/x-tar"},
                    stream=True,
                )
                api._raise_for_status(response)
                messages = api._stream_helper(response, decode=True)
            for message in messages:
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
        image = self._image(ref)
        return None if image is None else str(image.id)

    def _image(self, ref: str) -> Any:
        """The SDK's image ``ref`` names, or None if the engine has none."""
        from docker.errors import ImageNotFound

        with _errors(f"inspecting {_named(ref)}"):
            try:
                return self._client.images.get(ref)
            except ImageNotFound:
                return None

    def layers(self, *, also: Iterable[str] = ()) -> dict[str, list[str]]:
        """Every image of this engine -> its layer diff ids, bottom first; with the images
        ``also`` names, which a listing may leave out: a containerd store does not list an
        image it lacks some blobs of (one a thin bundle loaded over layers built here), and
        such an image runs all the same."""
        api = self._client.api
        with _errors("listing images"):
            ids = {str(summary["Id"]) for summary in api.images(all=True)}
        ids |= {image_id for ref in also if (image_id := self.image_id(ref)) is not None}
        from docker.errors import ImageNotFound

        found = {}
        for image_id in sorted(ids):
            with _errors(f"inspecting {image_id}"), suppress(ImageNotFound):
                rootfs = api.inspect_image(image_id).get("RootFS") or {}
                found[image_id] = [str(layer) for layer in rootfs.get("Layers") or []]
        return found

    def chain_ids(self, *, also: Iterable[str] = ()) -> set[str]:
        """The chain id of every layer an image of this engine (or named by ``also``) stands
        on: the layers a thin archive may leave out when loading here."""
        return all_chain_ids(self.layers(also=also).values())

    def containerd_store(self) -> bool:
        """Whether images live in the containerd image store rather than a graph driver."""
        with _errors("docker info"):
            status = self._client.info().get("DriverStatus") or []
        return ["driver-type", "io.containerd.snapshotter.v1"] in status

    def tag(self, image_id: str, ref: str) -> None:
        _named(image_id)
        repository, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
        with _errors(f"tagging {_named(ref)}"):
            self._client.api.tag(image_id, repository, tag or "latest", force=True)

    def untag(self, ref: str) -> None:
        from docker.errors import ImageNotFound

        with _errors(f"removing tag {_named(ref)}"), suppress(ImageNotFound):
            self._client.api.remove_image(ref, noprune=True)

    def retag(self, before: dict[str, str | None]) -> None:
        """Put each ref back on the image it named before (None: on none)."""
        for ref, old in before.items():
            if old is None:
                self.untag(ref)
            else:
                self.tag(old, ref)


def _named(ref: str) -> str:
    """``ref``, if it is an image reference: the SDK puts it into a URL path as it is, where
    ``../volumes/x`` would name another object (found in review: a held tag so named deleted a
    volume)."""
    if not is_reference(ref):
        raise UsageError(
            f"{ref!r} is not an image reference",
            hint="name an image as Docker does: name, name:tag, name@digest, or its id",
        )
    return ref


def _endpoint() -> str:
    """Where the SDK will connect, as the Docker CLI would say it (for messages only)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    from docker.context import ContextAPI
    from docker.errors import DockerException

    try:
        context = ContextAPI.kwargs_from_context()
    except (DockerException, OSError, ValueError):
        context = {}
    return str(context.get("base_url") or "unix:///var/run/docker.sock")


@contextmanager
def _errors(what: str) -> Iterator[None]:
    from docker.errors import DockerException
    from requests import RequestException

    try:
        yield
    except (DockerException, RequestException) as exc:
        answered = getattr(getattr(exc, "response", None), "status_code", None) is not None
        hint = None if answered else "is the Docker engine running? (DOCKER_HOST, docker info)"
        raise EngineError(f"{what}: {exc}", hint=hint) from exc


class _Sized:
    """An iterable body of known length: requests sends it with a Content-Length header and
    hands each piece to the socket untouched."""

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        self._chunks = chunks
        self._size = size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def __len__(self) -> int:
        return self._size
