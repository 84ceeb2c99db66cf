"""Image bundles: ``docker save`` into a bundle, and a verified bundle into ``docker load``.

Loading streams the plaintext into the engine while it is decrypted, but withholds the last
piece (which holds the end of the archive) until every check of the bundle has passed, so the
engine can never complete the load of an archive that failed verification. After the load, each
image's id must equal the manifest's and every ref must point at it; otherwise the refs are put
back where they pointed before and the bundle is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from airgap.client.engine import Engine
from airgap.client.send import Resuming, Watch, send_stream
from airgap.client.transport import Transport
from airgap.shared import minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import VerificationError
from airgap.shared.manifest import Manifest


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
    entries = engine.describe(refs)
    return send_stream(
        engine.save(refs),
        transport,
        options=options,
        key=key,
        images=entries,
        resuming=resuming,
        watch=watch,
    )


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
    refs = [(ref, image.id) for image in manifest.images for ref in image.refs]
    before = {ref: engine.image_id(ref) for ref, _ in refs}
    engine.load(withhold_last(plaintext))
    wrong = [(ref, want, got) for ref, want in refs if (got := engine.image_id(ref)) != want]
    if wrong:
        _restore(engine, before)
        ref, want, got = wrong[0]
        raise VerificationError(
            f"docker load: {ref} is {got or 'missing'} after the load, the manifest says {want}"
        )
    return [ref for ref, _ in refs]


def _restore(engine: Engine, before: dict[str, str | None]) -> None:
    for ref, old in before.items():
        if old is None:
            engine.untag(ref)
        else:
            engine.tag(old, ref)
