"""Image bundles: ``docker save`` into a bundle, and a verified bundle into ``docker load``.

Loading streams the plaintext into the engine while it is decrypted, but withholds the last
piece (which holds the end of the archive) until every check of the bundle has passed, so the
engine can never complete the load of an archive that failed verification. After the load, every
ref must point at the image the manifest names: by the sending engine's id, or, when the engines
name images differently (graph driver and containerd image store), by the config digest every
engine agrees on. Otherwise the refs are put back where they pointed before and the bundle is
refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from airgap.client.engine import MANIFEST_JSON, Engine, SavedArchive
from airgap.client.send import Resuming, Watch, send_stream
from airgap.client.transport import Transport
from airgap.shared import minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import VerificationError
from airgap.shared.manifest import ImageEntry, Manifest


def send_images(
    refs: Sequence[str],
    transport: Transport,
    *,
    engine: Engine,
    options: EncodeOptions,
    key: minisign.SecretKey,
    resuming: Resuming | None = None,
    watch: Watch | None = None,
) -> Manifest:
    described = engine.describe(refs)
    entries: list[ImageEntry] = []  # send_stream reads them once the archive has gone by
    archive = SavedArchive({MANIFEST_JSON, *(_blob(e.id) for e in described)})

    def observed() -> Iterator[bytes]:
        for chunk in engine.save(refs):
            archive.update(chunk)
            yield chunk
        entries.extend(replace(e, config=archive.config_of(e.id)) for e in described)

    return send_stream(
        observed(),
        transport,
        options=options,
        key=key,
        images=entries,
        resuming=resuming,
        watch=watch,
    )


def _blob(image_id: str) -> str:
    """Where an OCI-layout archive holds the manifest of an image whose id is its digest."""
    return "blobs/sha256/" + image_id.removeprefix("sha256:")


def withhold_last(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield every chunk but the last, and the last only once the source ended cleanly."""
    held: bytes | None = None
    for chunk in chunks:
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


def load_images(plaintext: Iterable[bytes], manifest: Manifest, engine: Engine) -> list[str]:
    """Load a verified image bundle; return the refs now pointing at its images."""
    refs = [(ref, image) for image in manifest.images for ref in image.refs]
    before = {ref: engine.image_id(ref) for ref, _ in refs}
    engine.load(withhold_last(plaintext))
    for ref, image in refs:
        got = engine.image_id(ref)
        if not _is(engine, ref, got, image):
            _restore(engine, before)
            raise VerificationError(
                f"docker load: {ref} is {got or 'missing'} after the load, "
                f"the manifest says {image.id}"
            )
    return [ref for ref, _ in refs]


def _is(engine: Engine, ref: str, got: str | None, image: ImageEntry) -> bool:
    """Whether ``ref``, now ``got`` in this engine, is the manifest's ``image``."""
    if got is None:
        return False
    if got in (image.id, image.config):  # the same kind of engine, or a graph driver
        return True
    # A containerd image store names the image by a manifest of its own: ask for its config.
    return image.config is not None and engine.config_digest(ref) == image.config


def _restore(engine: Engine, before: dict[str, str | None]) -> None:
    for ref, old in before.items():
        if old is None:
            engine.untag(ref)
        else:
            engine.tag(old, ref)
