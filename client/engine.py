"""The Docker engine: the one module of airgap that talks to the Docker SDK.

It saves images as one tar stream, describes them for the manifest (id, refs, layer diff ids),
loads a tar stream, and reads or moves tags. Timeouts are generous: the SDK's default of 60 s
breaks the save and load of big images. Every docker error becomes an :class:`EngineError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import docker
import docker.errors
import requests

from airgap.shared.errors import EngineError, UsageError
from airgap.shared.manifest import ImageEntry

TIMEOUT = 3600
_LOADED = re.compile(r"^Loaded image(?: ID)?: (.+)$")


class Engine:
    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> Engine:
        """The engine DOCKER_HOST (or the default socket) points at."""
        with _errors("connecting to the Docker engine"):
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


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(
            f"{what}: {exc}", hint="is the Docker engine running? (DOCKER_HOST, docker info)"
        ) from exc
