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

import contextlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from airgap.client.engine import Engine
from airgap.client.incremental import omitted_layers, thin_plan
from airgap.client.progress import UNSEEN, counted
from airgap.client.saved import MANIFEST_JSON, LayerFile, SavedArchive, blob_name, landed_as
from airgap.client.send import UNWATCHED, Meters, Resuming, send_stream
from airgap.client.sendledger import FarSide
from airgap.client.splice import no_copy, spliced, spool_layers
from airgap.client.thin import Dropped, thin_archive
from airgap.client.transport import Transport
from airgap.shared import minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import EngineError, VerificationError
from airgap.shared.manifest import ImageEntry, Manifest, OmittedLayer
from airgap.shared.pipeline import threaded
from airgap.shared.refs import tag_of


@dataclass(frozen=True)
class SentImages:
    manifest: Manifest
    files: dict[str, LayerFile]  # how each layer's file looked in the save, for the ledger
    unindexed: tuple[ImageEntry, ...] = ()  # see :func:`unindexed`


def send_images(
    refs: Sequence[str],
    transport: Transport,
    *,
    engine: Engine,
    options: EncodeOptions,
    key: minisign.SecretKey,
    far: FarSide | None = None,
    resuming: Resuming | None = None,
    meters: Meters = UNWATCHED,
) -> SentImages:
    """One bundle of ``refs``, without the layers ``far`` says the receiver holds."""
    far = far or FarSide()
    described = engine.describe(refs)
    entries: list[ImageEntry] = []  # send_stream reads them once the archive has gone by
    omitted: list[OmittedLayer] = []
    files: dict[str, LayerFile] = {}
    archive = SavedArchive({MANIFEST_JSON, INDEX_JSON, *(blob_name(e.id) for e in described)})
    plan = thin_plan(described, far)
    dropped = Dropped()

    def observed() -> Iterator[bytes]:
        # The save is what the encoding bar follows (the images' size is its total), layers
        # left out of a thin archive included: they pass through, to be hashed and cut.
        for chunk in counted(engine.save(refs), meters.encoded):
            archive.update(chunk)
            yield chunk
        for entry in described:  # a tag moved between the describe and the save
            if not archive.holds(entry.id):
                raise EngineError(
                    f"{', '.join(entry.refs)} changed while the engine saved it: the archive "
                    f"does not hold image {entry.id}",
                    hint="send again",
                )
        entries.extend(replace(e, config=archive.config_of(e.id, e.refs)) for e in described)
        files.update(archive.layer_files(entries))
        for entry in entries:  # signed as carried, or recorded as sent: none may be missing
            if lacking := [layer for layer in entry.layers if layer not in files]:
                raise EngineError(
                    f"the engine's save of {', '.join(entry.refs) or entry.id} lacks "
                    f"{len(lacking)} of its {len(entry.layers)} layers ({lacking[0]})",
                    hint="the engine cannot export this image whole (a containerd image store "
                    "keeps only what a thin load gave it): send it from an engine that holds "
                    "every layer",
                )

    def thin() -> Iterator[bytes]:
        yield from thin_archive(observed(), plan, spill=tempfile.TemporaryFile, dropped=dropped)
        omitted.extend(omitted_layers(entries, dropped.digests(), far))

    manifest = send_stream(
        thin() if plan else observed(),
        transport,
        options=options,
        key=key,
        images=entries,
        omitted=omitted,
        resuming=resuming,
        meters=replace(meters, encoded=UNSEEN),
    )
    return SentImages(manifest, files, tuple(unindexed(archive, entries)))


def unindexed(archive: SavedArchive, images: Sequence[ImageEntry]) -> list[ImageEntry]:
    """The untagged ``images`` an OCI archive's index.json may have left out (all of them, when
    it lists fewer images without a name than there are: the index names no config).

    Docker 26.1's save leaves an untagged image out of index.json at random when a tagged one
    goes beside it (one save in two here), though manifest.json and the blobs hold it. An
    engine with the containerd image store loads what index.json lists, so it would refuse
    such a bundle (the image never loads); the other engines read manifest.json."""
    untagged = [image for image in images if not image.refs]
    try:
        listed = json.loads(archive.members[INDEX_JSON])["manifests"]
        bare = {
            str(entry["digest"])
            for entry in listed
            if not (entry.get("annotations") or {}).get(IMAGE_NAME)
        }
    except (KeyError, ValueError, TypeError, AttributeError):
        return []  # no OCI index (a legacy archive), or one too large to keep: nothing to say
    return untagged if len(bare) < len(untagged) else []


def left_out_size(described: Sequence[ImageEntry], far: FarSide) -> int:
    """What a thin archive of the ``described`` images leaves out of :meth:`Engine.size`, as far
    as the ledger knows it: the size each omitted layer's file had in the save that carried it,
    once for every image that holds it, as that size counts it (a layer whose size is unknown
    counts nothing). File sizes include tar headers (a compressed blob's, less than the layer), so a
    check of room made with this may pass where the archive, uncompressed, would not fit; the
    payload is compressed, and a disk that fills up all the same stops the send clearly."""
    omit = thin_plan(described, far).omit
    held = [d for image in described for d in image.layers if d in omit and d in far.files]
    return sum(far.files[diff_id].size for diff_id in held)


def learn_layer_files(engine: Engine, refs: Sequence[str], far: FarSide) -> FarSide:
    """``far`` with hints about the layer files of ``refs`` it lacks, read from a save of them
    that goes nowhere: without them, compressed blobs (containerd store) cannot be told apart
    and every legacy layer file would be hashed through a spill file."""
    described = engine.describe(refs)
    if all(d in far.files for image in described for d in image.layers):
        return far
    archive = SavedArchive({MANIFEST_JSON, *(blob_name(e.id) for e in described)})
    for chunk in engine.save(refs):
        archive.update(chunk)
    learnt = archive.layer_files(described)
    return FarSide(far.layers, {**learnt, **far.files})


def withhold_last(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield every chunk but the last, and the last only once the source ended cleanly."""
    held: bytes | None = None
    for chunk in chunks:
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


INDEX_JSON = "index.json"
IMAGE_NAME = "io.containerd.image.name"  # an OCI index entry's annotation: the image's name
REPOSITORIES = "repositories"
_NAMES = {MANIFEST_JSON, INDEX_JSON, REPOSITORIES}
#: What :func:`archive_refs` gives for names it cannot read: no manifest names it.
UNREADABLE_NAMES = "(names airgap cannot read)"


def named_only(chunks: Iterable[bytes], manifest: Manifest) -> Iterator[bytes]:
    """The archive's chunks, untouched; at its end, an error if it names an image other than
    the manifest does. ``docker load`` applies every name an archive carries (manifest.json's
    RepoTags, the OCI index's image names, legacy ``repositories``), so a signed archive could
    otherwise move a tag the manifest never mentions. Raised before the last piece goes (see
    :func:`withhold_last`), the error leaves the engine with nothing loaded."""
    archive = SavedArchive(_NAMES)
    for chunk in chunks:
        try:
            archive.update(chunk)
        except EngineError as exc:  # what SavedArchive says of a save, said of a bundle
            raise VerificationError("the bundle's archive is not a tar archive") from exc
        yield chunk
    named = {tag_of(ref) for image in manifest.images for ref in image.refs}
    found = (r if r == UNREADABLE_NAMES else tag_of(r) for r in archive_refs(archive))
    if unnamed := sorted(r for r in found if r not in named):
        raise VerificationError(
            f"docker save archive: it would also tag {', '.join(unnamed)}, "
            "which the signed manifest does not name"
        )
    as_signed(archive, manifest.images)


def as_signed(archive: SavedArchive, images: Sequence[ImageEntry]) -> None:
    """Raise unless the archive holds every image a signed manifest names (``images``) by the
    config digest it signs, and names none of its tags for another image: in manifest.json,
    which a graph driver loads, and in index.json, which a containerd store loads. The engine
    would load another image whole before the check after the load could refuse it, and that
    image would stay. An image signed without a config digest, and a name whose manifest the
    archive does not hold, are left to that check."""
    signed = {tag_of(r): i.config for i in images if i.config for r in i.refs}
    held: dict[str, list[str]] | None = None  # manifest.json's: config -> tags
    if MANIFEST_JSON in archive.members:
        try:
            held = archive.tags()
        except EngineError as exc:
            raise VerificationError("the bundle's archive has no readable manifest.json") from exc
    named = [(tag, {config}) for config, tags in (held or {}).items() for tag in tags]
    for name, configs in named + _indexed(archive):  # each name, the configs of what it names
        wanted = signed.get(tag_of(name))
        if wanted is not None and configs and wanted not in configs:
            raise VerificationError(
                f"docker save archive: it tags {name} as image {', '.join(sorted(configs))}, "
                f"the signed manifest says {wanted}"
            )
    for image in images:
        if held is not None and image.config is not None and image.config not in held:
            raise VerificationError(
                f"docker save archive: it does not hold image {image.config}, which the signed "
                "manifest names"
            )


def _indexed(archive: SavedArchive) -> list[tuple[str, set[str]]]:
    """Each name index.json gives (as :func:`archive_refs` reads them), with the config digests
    of what it names: a manifest's config, or an image index's manifests' (none, where the
    archive does not hold them)."""
    if INDEX_JSON not in archive.members:
        return []
    found: list[tuple[str, set[str]]] = []
    known: dict[str, set[str]] = {}  # by digest: many entries may name one index
    try:
        for entry in json.loads(archive.members[INDEX_JSON]).get("manifests") or []:
            if names := _index_names(entry):
                digest = str(entry.get("digest"))
                if digest not in known:
                    known[digest] = _configs(archive, digest)
                found += [(name, known[digest]) for name in names]
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise VerificationError("the bundle's archive has no readable index.json") from exc
    return found


def _index_names(entry: dict[str, Any]) -> set[str]:
    """The image names an index.json entry gives: its containerd name, and its OCI ref name
    when that is a whole reference, not a tag alone."""
    notes = entry.get("annotations") or {}
    ref = notes.get("org.opencontainers.image.ref.name") or ""
    names = {notes.get(IMAGE_NAME) or "", ref if "/" in ref or ":" in ref else ""}
    return {name for name in names if isinstance(name, str) and name}


def _configs(archive: SavedArchive, digest: str) -> set[str]:
    """The config digest of manifest ``digest``, or of each manifest of image index
    ``digest``, that the archive holds."""
    document = _blob(archive, digest)
    try:
        if "config" in document:
            return {str(document["config"]["digest"])}
        children = [_blob(archive, str(c["digest"])) for c in document.get("manifests") or []]
        return {str(inner["config"]["digest"]) for inner in children if "config" in inner}
    except (KeyError, TypeError):  # not a manifest: the check after the load judges
        return set()


def _blob(archive: SavedArchive, digest: str) -> dict[str, Any]:
    """The JSON object the archive holds as blob ``digest``; empty when it holds none (an index
    in an index is not read: not what a save writes)."""
    try:
        document = json.loads(archive.members[blob_name(digest)])
    except (KeyError, ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


def archive_refs(archive: SavedArchive) -> set[str]:
    """Every image name in an archive's manifest.json, index.json and repositories. One of
    those files the archive holds in another form (``./manifest.json``, a link, too large to
    keep, twice) or that does not parse counts as a name no manifest gives."""
    members = archive.members
    found: set[str] = set()
    held = [*archive.sizes, *archive.links]
    if (
        archive.unreadable
        or archive.repeated & _NAMES
        or any(landed_as(n) in _NAMES and n not in members for n in held)
    ):
        found.add(UNREADABLE_NAMES)
    try:
        if MANIFEST_JSON in members:
            for entry in json.loads(members[MANIFEST_JSON]):
                found.update(entry.get("RepoTags") or [])
        if INDEX_JSON in members:
            for entry in json.loads(members[INDEX_JSON]).get("manifests") or []:
                found.update(_index_names(entry))
        if REPOSITORIES in members:
            for repo, tags in json.loads(members[REPOSITORIES]).items():
                found.update(f"{repo}:{tag}" for tag in tags)
    except (ValueError, TypeError, AttributeError, RecursionError):
        found.add(UNREADABLE_NAMES)
    return {ref for ref in found if isinstance(ref, str) and ref}


def load_images(plaintext: Iterable[bytes], manifest: Manifest, engine: Engine) -> list[str]:
    """Load a verified image bundle; return the refs now pointing at its images."""
    refs = [(ref, image) for image in manifest.images for ref in image.refs]
    before = {ref: engine.image_id(ref) for ref, _ in refs}
    with LocalLayers(engine) as layers:
        size: int | None = manifest.plaintext_size
        if manifest.omitted and engine.containerd_store():
            plaintext, size = spliced(plaintext, layers), None
        # The decode runs on threads of its own, so the socket to the engine, which takes the
        # bytes at its own pace, never holds up the hashing and decompressing meanwhile. If the
        # engine fails first, closing stops those threads before the decode is closed.
        with contextlib.closing(threaded(plaintext, [])) as decoded:
            loaded = engine.load(withhold_last(named_only(decoded, manifest)), size=size)
    configs: dict[str, str | None] = {}  # the config digest of each image the report names
    for image in manifest.images:
        if not image.refs and not _is_loaded(engine, loaded, image, configs):
            engine.retag(before)
            raise VerificationError(
                f"docker load: image {image.id}, sent without a tag, is not among what the "
                f"engine loaded ({', '.join(loaded) or 'nothing'})"
            )
    for ref, image in refs:
        got = engine.image_id(ref)
        if not is_image(engine, ref, got, image):
            engine.retag(before)
            raise VerificationError(
                f"docker load: {ref} is {got or 'missing'} after the load, "
                f"the manifest says {image.id}"
            )
    return [ref for ref, _ in refs]


class LocalLayers:
    """This engine's layer files by diff id, for :func:`spliced`: one save of each image that
    holds some of them (the one holding most first), all wanted layers taken in that pass."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held = contextlib.ExitStack()

    def __call__(self, diff_ids: Sequence[str]) -> dict[str, tuple[int, IO[bytes]]]:
        images = self._engine.layers()
        found: dict[str, tuple[int, IO[bytes]]] = {}
        while missing := set(diff_ids) - found.keys():
            holder = max(images, key=lambda i: len(missing & set(images[i])), default=None)
            if holder is None or not missing & set(images[holder]):
                raise no_copy(missing)
            # None there, maybe: an image built or pulled into a containerd store keeps its
            # layers compressed, where another image of the engine may hold the same ones whole.
            found.update(spool_layers(self._engine.save([holder]), missing, self._spill))
            del images[holder]
        return found

    def _spill(self) -> IO[bytes]:
        return self._held.enter_context(tempfile.TemporaryFile())

    def __enter__(self) -> LocalLayers:
        return self

    def __exit__(self, *_: object) -> None:
        self._held.close()


def _is_loaded(
    engine: Engine, loaded: Sequence[str], image: ImageEntry, configs: dict[str, str | None]
) -> bool:
    """Whether the untagged ``image`` (sent by id or digest) is in the engine after a load that
    reported ``loaded``. A graph driver names it by its config digest, and reports ids only when
    the archive's last image has no tag: it is looked up. A containerd store names it by a
    manifest of its own, and reports it: each id reported is saved once for its config."""
    found = engine.image_id(image.config or image.id)
    if found is not None and found in (image.id, image.config):
        return True
    for name in (n for n in loaded if n.startswith("sha256:")):
        if name in (image.id, image.config):
            return True
        if name not in configs:
            configs[name] = engine.config_digest(name)
        if image.config is not None and configs[name] == image.config:
            return True
    return False


def is_image(engine: Engine, ref: str, got: str | None, image: ImageEntry) -> bool:
    """Whether ``ref``, now ``got`` in this engine, is the manifest's ``image``."""
    if got is None:
        return False
    if got in (image.id, image.config):  # the same kind of engine, or a graph driver
        return True
    # A containerd image store names the image by a manifest of its own: ask for its config.
    return image.config is not None and engine.config_digest(ref) == image.config
