"""``airgap fetch`` and ``airgap verify`` for files bundles: check everything, then unpack.

For each published bundle not in the ledger: read the signature (size-capped, never spooled)
and refuse it unless a trusted key has its key id, then the manifest (likewise), verify the
signature against the trusted keys, then the payload's size, then each segment's hash
as it streams, then decrypt, decompress and check the plaintext; files reach the output
directory only after all of that. One bad bundle does not stop the others: each outcome is
reported, and the caller decides the exit code.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airgap.client.extract import extract_files
from airgap.client.ftp import FtpTransport, Refused
from airgap.client.incremental import missing_layers
from airgap.client.ledger import Held, Ledger
from airgap.client.progress import UNSEEN, Meter, counted, counted_reads
from airgap.client.rollback import Newest, refusal
from airgap.client.spool import SpooledTransport
from airgap.client.transport import (
    MANIFEST_SUFFIX,
    PARTIAL_SUFFIX,
    SIGNATURE_SUFFIX,
    DirectoryTransport,
    Transport,
    published_ids,
    put_small,
)
from airgap.shared import age, minisign
from airgap.shared.bundle import check_names, decode, open_manifest, verified_segments
from airgap.shared.errors import (
    AirgapError,
    ManifestError,
    MissingLayersError,
    NoIdentityMatchError,
    PayloadSizeError,
    ReplayError,
    SegmentHashError,
    SignatureError,
    StorageError,
    TransferError,
    UsageError,
    VerificationError,
)
from airgap.shared.ids import bundle_id_of, is_bundle_id
from airgap.shared.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_UNVERIFIED_MANIFEST,
    Manifest,
    OmittedLayer,
    is_digest,
)
from airgap.shared.refs import tag_of

if TYPE_CHECKING:
    from airgap.client.engine import Engine

MAX_SIGNATURE_BYTES = 4096


@dataclass(frozen=True)
class Outcome:
    bundle_id: str
    manifest: Manifest | None = None
    imported: tuple[str, ...] = ()  # the files written, or the image refs loaded
    error: AirgapError | None = None


def _bare(exc: AirgapError) -> AirgapError:
    """``exc``, to be kept to the end of the run: without its traceback and the exceptions it
    came from, whose frames (and a JSON error's document) hold what the failed step read, a
    manifest of up to 32 MiB. A source of many failing bundles must not add up."""
    exc.__traceback__ = exc.__cause__ = exc.__context__ = None
    return exc


@dataclass(frozen=True)
class Destination:
    """Where verified content goes: files into a directory, images into an engine."""

    out_dir: Path | None = None
    engine: Callable[[], Engine] | None = None  # called only for an image bundle
    consume: bool = False  # delete the bundle from the source once imported
    keep: Path | None = None  # keep a copy of each verified bundle here
    quiet: bool = True  # no progress bars

    def receive(self, plaintext: Iterator[bytes], manifest: Manifest) -> tuple[str, ...]:
        if manifest.images:
            if self.engine is None:
                raise UsageError("this bundle holds images: it needs a Docker engine")
            from airgap.client.images import load_images

            return tuple(load_images(plaintext, manifest, self.engine()))
        if self.out_dir is None:
            raise UsageError("this bundle holds files", hint="pass --output-dir DIR")
        return tuple(str(p) for p in extract_files(plaintext, manifest, self.out_dir))


def read_small(transport: Transport, name: str, limit: int, missing: type[AirgapError]) -> bytes:
    data = _read_capped(transport, name, limit, missing)
    if data is None:
        raise missing(f"{name} is larger than airgap ever writes one")
    return data


def _read_capped(
    transport: Transport, name: str, limit: int, missing: type[AirgapError]
) -> bytes | None:
    """``name``'s bytes, or None when it holds more than ``limit`` (by its size, or by what
    the source sent). Never through a spool: they are not verified yet."""
    size = transport.size(name)
    if size is None:
        raise _absent(transport, name, missing(f"{name} is missing"))
    if size > limit:
        return None
    if isinstance(transport, SpooledTransport):
        data = transport.read_unspooled(name, limit=limit + 1)
    else:
        with transport.reader(name) as handle:
            data = handle.read(limit + 1)
    return data if len(data) <= limit else None


def open_bundle(
    transport: Transport, bundle_id: str, trusted: Sequence[minisign.PublicKey]
) -> tuple[Manifest, bytes]:
    """The signature first: one by a key not trusted, or signed for another bundle, is refused
    before the manifest is read."""
    signature = read_small(
        transport, bundle_id + SIGNATURE_SUFFIX, MAX_SIGNATURE_BYTES, SignatureError
    )
    check_names(bundle_id, signature, trusted)
    data = read_small(transport, bundle_id + MANIFEST_SUFFIX, MAX_MANIFEST_BYTES, ManifestError)
    manifest = open_manifest(data, signature, trusted)
    if manifest.id != bundle_id:
        raise ManifestError(f"manifest: names bundle {manifest.id}, not {bundle_id}")
    return manifest, data


def _check_size(transport: Transport, manifest: Manifest) -> None:
    size = transport.size(manifest.payload.name)
    if size != manifest.payload.size:
        found = "missing" if size is None else f"{size} bytes"
        error = PayloadSizeError(f"payload: {found}, the manifest says {manifest.payload.size}")
        raise error if size is not None else _absent(transport, manifest.payload.name, error)


def _absent(transport: Transport, name: str, error: AirgapError) -> AirgapError:
    """A bundle's file that is not there. With the bundle's signature gone too (a receiver's
    --consume deletes it first), another receiver took the bundle since it was listed: the
    source no longer offers it, which is no failed check. A bundle still listed fails."""
    bundle_id = bundle_id_of(name)
    try:
        listed = published_ids(transport.list())
    except AirgapError:
        return error
    if bundle_id in listed:
        return error
    return TransferError(
        f"gone from {transport.describe()} since it was listed",
        hint="another receiver may have fetched it with --consume; airgap ls lists what is "
        "published now",
    )


def plaintext_of(
    transport: Transport,
    manifest: Manifest,
    identities: Sequence[age.Identity],
    *,
    meter: Meter = UNSEEN,
) -> Generator[bytes, None, None]:
    """The verified plaintext; ``meter`` counts the payload's bytes as they are read."""
    _check_size(transport, manifest)
    with _verified_kept(transport, manifest), _payload(transport, manifest) as handle:
        segments = verified_segments(counted_reads(handle.readinto, meter), manifest.payload)
        yield from decode(segments, manifest, identities)


def payload_only(transport: Transport, manifest: Manifest, *, meter: Meter = UNSEEN) -> None:
    """Size and every segment hash, without a key to decrypt."""
    _check_size(transport, manifest)
    with _verified_kept(transport, manifest), _payload(transport, manifest) as handle:
        for _ in verified_segments(counted_reads(handle.readinto, meter), manifest.payload):
            pass


def _payload(transport: Transport, manifest: Manifest) -> io.BufferedIOBase:
    """The payload's reader; a spooled one reads no more than the signed size."""
    if isinstance(transport, SpooledTransport):
        return transport.reader(manifest.payload.name, size=manifest.payload.size)
    return transport.reader(manifest.payload.name)


@contextmanager
def _verified_kept(transport: Transport, manifest: Manifest) -> Iterator[None]:
    """A segment that fails its hash leaves in the spool only the segments verified before it:
    the next run downloads that one again (the drop box's copy may have been put right since),
    and none of those. A payload the server refuses mid-download, its bundle no longer listed
    (another receiver's ``--consume``), is gone, not failed: its spooled part goes too, as it
    can never be finished from this source (found in review: a bare 550, and the part kept)."""
    try:
        yield
    except SegmentHashError as exc:
        if isinstance(transport, SpooledTransport):
            keep = exc.segment * manifest.payload.segment_size
            transport.forget(manifest.payload.name, keep=keep)
        raise
    except Refused as exc:
        error = _absent(transport, manifest.payload.name, exc)
        if error is exc:
            raise
        if isinstance(transport, SpooledTransport):
            transport.forget(manifest.payload.name)
        raise error from exc


def _listed(transport: Transport) -> list[str]:
    """The source's names. A sender's account on the appliance lists its own area, where
    nothing is ever published: said, rather than taken for a drop box with nothing new."""
    names = transport.list()
    remote = transport.remote if isinstance(transport, SpooledTransport) else transport
    if isinstance(remote, FtpTransport) and remote.role == "sender":
        raise UsageError(
            f"{remote.describe()} is a sender's account: it sees no published bundle",
            hint="use a receiver's account (airgap serve printed one at its first start)",
        )
    return names


def fetch_bundles(
    transport: Transport,
    into: Destination,
    *,
    identities: Sequence[age.Identity],
    trusted: Sequence[minisign.PublicKey],
    ledger: Ledger,
    only: Sequence[str] = (),
) -> list[Outcome]:
    """Verify and import every published bundle not in the ledger (or those in ``only``)."""
    with ledger.locked():
        return _fetch_new(transport, into, identities, trusted, ledger, only)


def _fetch_new(
    transport: Transport,
    into: Destination,
    identities: Sequence[age.Identity],
    trusted: Sequence[minisign.PublicKey],
    ledger: Ledger,
    only: Sequence[str],
) -> list[Outcome]:
    names = _listed(transport)
    published = published_ids(names)
    run = _Run(transport, into, identities, trusted, ledger, published)
    gone = run.finish_cut(names)
    published = [b for b in published if b not in gone]
    chosen = _selected(transport, published, only, trusted, frozenset(run.done), identities)
    for bundle_id in chosen:
        if bundle_id in run.done and bundle_id not in run.tried:
            if only:
                error = ReplayError(
                    "imported here before; refusing it again",
                    hint="to import it once more, open it by hand (README: Opening a bundle "
                    "by hand) or fetch with another --state-dir",
                )
                run.outcomes.append(Outcome(bundle_id, error=error))
            continue
        run.fetch(bundle_id)
    run.outcomes += [Outcome(bundle_id, error=error) for bundle_id, error in run.parked.items()]
    return run.outcomes


class _Run:
    """One ``airgap fetch``: each bundle is tried once, and a thin bundle's carriers first."""

    def __init__(
        self,
        transport: Transport,
        into: Destination,
        identities: Sequence[age.Identity],
        trusted: Sequence[minisign.PublicKey],
        ledger: Ledger,
        published: Sequence[str],
    ) -> None:
        self.transport, self.into, self.ledger = transport, into, ledger
        self.identities, self.trusted = identities, trusted
        self.published = set(published)
        self.done, newest = ledger.read()
        self.newest = Newest(newest)
        self.ours = list(newest)  # the refs imported here: an engine may not list them all
        self.tried: set[str] = set()
        self.outcomes: list[Outcome] = []
        self.parked: dict[str, AirgapError] = {}  # refused as rollbacks, unless carriers yet
        self.held: dict[str, str | None] = {}  # tags a carrier's load must not move
        self.moved: dict[str, str | None] = {}  # where a carrier's load put the held tags
        self.carriers: list[str] = []  # loaded for their layers, moving held tags
        self.holding = ""  # the outermost bundle while the ledger's held file is written
        self.stuck = False  # tags not put back: the held file waits for the next run

    def finish_cut(self, names: Sequence[str]) -> set[str]:
        """What a run cut off (killed) after an import left undone: the spooled payloads of
        bundles imported (or no longer listed), the deletes of a ``--consume`` from this
        source, and tags a carrier's load moved (the carrier loads again if its record is
        missing, then the tags go back). Returns the bundles deleted."""
        if isinstance(self.transport, SpooledTransport):
            with suppress(StorageError):  # housekeeping: the next run tries again
                self.transport.keep_only(set(published_ids(list(names))) - self.done)
        deleted = set()
        for bundle_id in sorted(self.ledger.unconsumed(self.transport.describe())):
            left = [n for n in names if bundle_id_of(n) == bundle_id]
            failed = _consumed(self.transport, left, before=True) if left else None
            if failed is not None:
                self.outcomes.append(Outcome(bundle_id, error=failed))
            elif left:
                deleted.add(bundle_id)
            self._over(bundle_id)
        self.published -= deleted
        held = self.ledger.held()
        if held is not None:
            self.held, self.moved = dict(held.tags), dict(held.moved)
            self.carriers, self.holding = list(held.carriers), held.bundle
            try:  # before a carrier loads again and moves them once more
                self._let_be_moved_since()
            except AirgapError as exc:
                self._stuck(held.bundle, exc)
                return deleted
            for carrier in held.carriers:
                if carrier in self.published and carrier not in self.done:
                    self.fetch(carrier, (held.bundle,))
            self._put_back(held.bundle)
        return deleted

    def _over(self, bundle_id: str) -> None:
        """Note that the deletes of ``bundle_id`` were tried: done, or failed and told once
        (as a --consume that fails is), never asked again on every run. Only a run cut off
        before this leaves them to the next."""
        with suppress(StorageError):  # not noted: the next run finds them done, or tries once
            self.ledger.consumed(bundle_id)

    def fetch(self, bundle_id: str, waiting: tuple[str, ...] = ()) -> None:
        if bundle_id in self.tried:
            return
        self.tried.add(bundle_id)
        try:
            self._fetch(bundle_id, waiting)
        except AirgapError as exc:
            self.outcomes.append(Outcome(bundle_id, error=_bare(exc)))
        finally:
            if not waiting:  # after the outermost load: its image holds the carriers' layers
                self._put_back(bundle_id)

    def _fetch(self, bundle_id: str, waiting: tuple[str, ...]) -> None:
        transport, into = self.transport, self.into
        manifest, data = open_bundle(transport, bundle_id, self.trusted)
        try:
            addressed(manifest, self.identities)
        except NoIdentityMatchError:
            # What `airgap verify --server` spooled of another receiver's bundle: no use here.
            if isinstance(transport, SpooledTransport):
                with suppress(StorageError):
                    transport.forget(manifest.payload.name)
            raise
        newer = self._moving_back(manifest, self.newest.newer(manifest))
        if newer and not waiting:
            # Refused, unless a newer thin bundle of this run needs its layers after all.
            self.tried.discard(bundle_id)
            self.parked[bundle_id] = refusal(newer)
            return
        self.parked.pop(bundle_id, None)
        self._layers_for(manifest, (*waiting, bundle_id))
        # A carrier: loaded, but those tags go back where they were.
        self._hold(manifest, newer, waiting[0] if waiting else bundle_id)
        imported = tuple(ref for ref in self._receive(manifest) if ref not in newer)
        self._moved(newer)
        tags = imported if manifest.images else ()  # a files bundle's are file names
        self._release(tags)  # where this load put them is where they belong
        # Before the record: a run cut off while keeping imports the bundle again and keeps it
        # then (from the spool); a failed copy is no reason to delete the source.
        failed = _kept(transport, manifest, data, self.trusted, into.keep)
        consume = into.consume and failed is None
        self.ledger.record(
            bundle_id,
            manifest_sha256=hashlib.sha256(data).hexdigest(),
            where=transport.describe(),
            refs=tags,
            consume=consume,  # the next run finishes the deletes, should this one be cut off
        )
        self.done.add(bundle_id)
        self.newest.imported(tags, bundle_id)
        self.ours += tags
        try:  # after the record: what was imported stays imported, whatever fails here
            if consume:
                failed = _consumed(transport, bundle_names(manifest))
                self._over(bundle_id)
        finally:
            if isinstance(transport, SpooledTransport):
                transport.forget(manifest.payload.name)
        self.outcomes.append(Outcome(bundle_id, manifest, imported, error=failed))

    def _moving_back(self, manifest: Manifest, newer: dict[str, str]) -> dict[str, str]:
        """Of the refs a newer bundle was imported with, those loading this one would move
        back. One that points at this bundle's very image already stays where it is (the same
        image sent to two drop boxes, fetched from the newer first)."""
        if not newer or self.into.engine is None:
            return newer
        from airgap.client.images import is_image

        engine = self.into.engine()
        images = {ref: image for image in manifest.images for ref in image.refs}
        return {
            ref: newest
            for ref, newest in newer.items()
            if not is_image(engine, ref, engine.image_id(ref), images[ref])
        }

    def _hold(self, manifest: Manifest, refs: Collection[str], outermost: str) -> None:
        """Remember where ``refs`` point now, to put them back after the outermost load, and
        where the load will put them (the image's config digest, which every engine agrees
        on, until the load says its id); on disk first, for the next run should this one be
        cut off."""
        if refs and self.into.engine is not None:  # a files bundle needs no engine
            engine = self.into.engine()
            for ref in refs:
                self.held.setdefault(ref, engine.image_id(ref))
            for image in manifest.images:
                self.moved.update({r: image.config or image.id for r in image.refs if r in refs})
            self.carriers.append(manifest.id)
            self.holding = self.holding or outermost
            self._note()

    def _moved(self, refs: Collection[str]) -> None:
        """Where the load just made put the held ``refs``: from there they go back."""
        if refs and self.holding and self.into.engine is not None:
            engine = self.into.engine()
            self.moved.update({ref: engine.image_id(ref) for ref in refs if ref in self.held})
            self._note()

    def _note(self) -> None:
        held = Held(self.holding, dict(self.held), tuple(self.carriers), dict(self.moved))
        self.ledger.hold(held)

    def _release(self, refs: Iterable[str]) -> None:
        """Held tags that a later load of this run moved where they belong stay there."""
        moved = {tag_of(ref) for ref in refs}
        released = [r for r in self.held if tag_of(r) in moved]
        for ref in released:
            del self.held[ref]
            self.moved.pop(ref, None)
        if released and self.holding:
            self._note()  # before the record: a cut run's next one must not move them back

    def _let_be_moved_since(self) -> None:
        """Tags moved since the carrier's load put them (by their user) are no longer held."""
        if self.moved and self.into.engine is not None:
            engine = self.into.engine()
            for ref, to in list(self.moved.items()):
                now = engine.image_id(ref)
                if now == self.held.get(ref, to):  # back already (a load that failed put it)
                    moved_since = True
                else:  # a config digest, noted before the load, is asked of the image itself
                    moved_since = now != to and (now is None or engine.config_digest(ref) != to)
                if moved_since:
                    del self.moved[ref]
                    self.held.pop(ref, None)

    def _stuck(self, bundle_id: str, exc: AirgapError) -> None:
        """Tags not put back: said, and the held file kept for the next run."""
        self.stuck = True
        exc.message = f"tags moved by its carriers not put back: {exc.message}"
        self.outcomes.append(Outcome(bundle_id, error=_bare(exc)))

    def _put_back(self, bundle_id: str) -> None:
        """Held tags back where they were, each only from where its carrier's load put it (a
        tag moved since by its user stays); then the held file goes. Should that fail, the
        file stays, with every tag this run holds, for the next run."""
        if self.stuck:
            return
        if self.held and self.into.engine is not None:
            try:
                self._let_be_moved_since()
                self.into.engine().retag(self.held)
            except AirgapError as exc:
                self._stuck(bundle_id, exc)
                return
        self.held, self.moved = {}, {}
        if self.holding:
            with suppress(StorageError):  # put back already: a stale file moves nothing
                self.ledger.unhold()
            self.holding, self.carriers = "", []

    def _receive(self, manifest: Manifest) -> tuple[str, ...]:
        quiet = self.into.quiet
        what = "loading" if manifest.images else "unpacking"
        with (
            Meter("downloading", quiet=quiet, total=manifest.payload.size) as payload,
            Meter(what, quiet=quiet, total=manifest.plaintext_size, line=1) as plain,
            # closing(): a refused bundle stops its pipeline threads at once
            closing(plaintext_of(self.transport, manifest, self.identities, meter=payload)) as it,
        ):
            return self.into.receive(counted(it, plain), manifest)

    def _layers_for(self, manifest: Manifest, waiting: tuple[str, ...]) -> None:
        """Before a thin bundle is loaded: every layer it leaves out must be in the engine,
        after fetching the bundles that carry missing ones when they are here to fetch."""
        if not manifest.omitted or self.into.engine is None:
            return
        engine = self.into.engine()
        missing = self._missing_layers(manifest, engine)
        carriers = list(dict.fromkeys(o.bundle for o in missing if o.bundle))
        pending = [c for c in carriers if c in self.published and c not in self.done]
        for carrier in pending:
            if carrier not in waiting:
                self.fetch(carrier, waiting)
        if pending:
            missing = self._missing_layers(manifest, engine)
        if missing:
            raise _missing(manifest, missing, self.published, self.done)

    def _missing_layers(self, manifest: Manifest, engine: Engine) -> list[OmittedLayer]:
        """The layers ``manifest`` leaves out that the engine lacks, by its image list, and
        only where that leaves some missing, by the images imported here, one inspect each
        (a containerd store does not list every image it holds)."""
        missing = missing_layers(manifest, engine.chain_ids())
        return missing_layers(manifest, engine.chain_ids(also=self.ours)) if missing else missing


def _state(bundle_id: str, published: set[str], done: set[str]) -> str:
    if bundle_id in done:
        return "imported before, but its layers are gone since"
    return "on this source" if bundle_id in published else "not on this source"


def _missing(
    manifest: Manifest, missing: Sequence[OmittedLayer], published: set[str], done: set[str]
) -> MissingLayersError:
    carriers = list(dict.fromkeys(o.bundle for o in missing if o.bundle))
    told = sum(1 for o in missing if o.bundle is None)
    where = [f"{c} ({_state(c, published, done)})" for c in carriers]
    parts = [f"carried by {', '.join(where)}"] if where else []
    if told:
        parts.append(f"{told} from images the sender was told are here (--base)")
    # A bundle imported here before is refused if fetched again: its images come back by hand.
    again = any(c in done for c in carriers)
    first = (
        "load those images again (README: Opening a bundle by hand)"
        if again
        else ("fetch those bundles first (or load those images)")
    )
    return MissingLayersError(
        f"needs {len(missing)} layer{'' if len(missing) == 1 else 's'} this engine does not "
        f"hold, so nothing was loaded: {'; '.join(parts)}",
        hint=f"{first}, or have the sender send again with --full",
    )


def bundle_names(manifest: Manifest) -> list[str]:
    """The signature first: without it the others are no longer a published bundle."""
    bundle_id = manifest.id
    return [bundle_id + SIGNATURE_SUFFIX, bundle_id + MANIFEST_SUFFIX, manifest.payload.name]


def addressed(manifest: Manifest, identities: Sequence[age.Identity]) -> None:
    """Refuse, before its payload is downloaded, a bundle whose signed manifest names no
    recipient of ours; when that cannot be told (a passphrase either side), the header will."""
    encryption = manifest.encryption
    if encryption.scheme == "none" or encryption.passphrase or not identities:
        return
    if not all(isinstance(i, age.X25519Identity) for i in identities):
        return
    ours = {i.recipient.encode() for i in identities if isinstance(i, age.X25519Identity)}
    if not ours & {r.lower() for r in encryption.recipients}:
        raise NoIdentityMatchError(
            "no identity of ours opens it: the signed manifest names "
            f"{len(encryption.recipients)} other recipient(s); nothing was downloaded",
            hint="it is for another receiver; fetch it there, or with its identity (-i)",
        )


def _kept(
    transport: Transport,
    manifest: Manifest,
    data: bytes,
    trusted: Sequence[minisign.PublicKey],
    keep: Path | None,
) -> AirgapError | None:
    """--keep for a bundle imported: what failed, said as such."""
    if keep is None:
        return None
    try:
        _keep(transport, manifest, data, trusted, keep)
    except AirgapError as exc:
        exc.message = f"imported, but not kept in {keep}: {exc.message}"
        by_hand = (
            f"the bundle stays on the source: copy its {len(bundle_names(manifest))} files to "
            f"{keep} by hand (airgap verify --from checks the copy)"
        )
        exc.hint = f"{exc.hint}; {by_hand}" if exc.hint else by_hand
        return _bare(exc)
    return None


def _consumed(
    transport: Transport, names: Sequence[str], *, before: bool = False
) -> AirgapError | None:
    """--consume for a bundle imported (``before``: by an earlier run, cut off): what failed,
    said as such."""
    try:
        _delete(transport, names)
    except AirgapError as exc:
        when = "imported before" if before else "imported"
        exc.message = f"{when}, but not deleted from the source (--consume): {exc.message}"
        return _bare(exc)
    return None


def _delete(transport: Transport, names: Sequence[str]) -> None:
    """The signature first: without it the others are no longer a published bundle."""
    for name in sorted(names, key=lambda n: not n.endswith(SIGNATURE_SUFFIX)):
        transport.delete(name)


def _keep(
    transport: Transport,
    manifest: Manifest,
    verified: bytes,
    trusted: Sequence[minisign.PublicKey],
    directory: Path,
) -> None:
    """Copy the verified bundle into ``directory``, the signature last, each file renamed into
    place once whole. The copy is what was verified, whatever the source does meanwhile (a
    stick may answer a second read otherwise): the manifest is the bytes verified, the
    signature is verified over them again, and the payload's size and sha256 are the signed
    ones, or nothing of it is kept."""
    signature = read_small(
        transport, manifest.id + SIGNATURE_SUFFIX, MAX_SIGNATURE_BYTES, SignatureError
    )
    open_manifest(verified, signature, trusted)
    target = DirectoryTransport(directory)
    name, limit = manifest.payload.name, manifest.payload.size
    changed = VerificationError(f"{name}: the source no longer holds the verified payload")
    digest, size = hashlib.sha256(), 0
    try:
        try:
            # The signed size: a spool holding the verified payload is what is copied, whatever
            # a second SIZE answers (found in review: a smaller one dropped the spool).
            payload = _payload(transport, manifest)
            with payload as source, target.writer(name + PARTIAL_SUFFIX) as out:
                # Never more than the signed size and one byte to tell that there is more: a
                # source that goes on and on would otherwise fill the disk before the check.
                while chunk := source.read(min(1 << 20, limit + 1 - size)):
                    size += len(chunk)
                    if size > limit:
                        break
                    digest.update(chunk)
                    out.write(chunk)
        except AirgapError:
            if size <= limit:
                raise
            # Past the signed size: what the server says of a download cut short is moot.
        if size != limit or digest.hexdigest() != manifest.payload.sha256:
            raise changed
    except BaseException:  # a failed read, a full disk, a changed source: no partial copy
        with suppress(AirgapError):
            target.delete(name + PARTIAL_SUFFIX)
        raise
    target.rename(name + PARTIAL_SUFFIX, name)
    put_small(target, manifest.id + MANIFEST_SUFFIX, verified)
    put_small(target, manifest.id + SIGNATURE_SUFFIX, signature)


def verify_bundles(
    transport: Transport,
    *,
    identities: Sequence[age.Identity],
    trusted: Sequence[minisign.PublicKey],
    only: Sequence[str] = (),
    quiet: bool = True,
) -> list[Outcome]:
    """Every check a fetch makes, importing nothing; ``quiet``: no progress bar."""
    outcomes = []
    for bundle_id in _selected(transport, published_ids(_listed(transport)), only, trusted):
        try:
            manifest, _ = open_bundle(transport, bundle_id, trusted)
            size = manifest.payload.size
            with Meter("verifying", quiet=quiet, total=size) as meter:
                if identities or manifest.encryption.scheme == "none":
                    plaintext = plaintext_of(transport, manifest, identities, meter=meter)
                    with closing(plaintext):
                        for _ in plaintext:
                            pass
                else:
                    payload_only(transport, manifest, meter=meter)
            outcomes.append(Outcome(bundle_id, manifest))
        except AirgapError as exc:
            outcomes.append(Outcome(bundle_id, error=_bare(exc)))
    return outcomes


def _selected(
    transport: Transport,
    published: Sequence[str],
    only: Sequence[str],
    trusted: Sequence[minisign.PublicKey],
    imported: frozenset[str] = frozenset(),
    identities: Sequence[age.Identity] = (),
) -> list[str]:
    """The bundles named by id, or for an image ref the newest bundle that carries it (by its
    signed manifest; none if that one was ``imported`` already), of those for one of
    ``identities`` if any is; every published bundle when nothing is named."""
    if not only:
        return list(published)
    chosen: list[str] = []
    for wanted in only:
        if is_bundle_id(wanted):
            found = wanted if wanted in published else None
        else:
            found = _carrier(transport, reversed(published), wanted, trusted, identities)
        if found is None:
            raise UsageError(
                f"no published bundle {wanted} in {transport.describe()}",
                hint="airgap ls lists the published bundles and what they carry",
            )
        if found not in chosen and (is_bundle_id(wanted) or found not in imported):
            chosen.append(found)
    return chosen


def _carrier(
    transport: Transport,
    newest_first: Iterable[str],
    wanted: str,
    trusted: Sequence[minisign.PublicKey],
    identities: Sequence[age.Identity],
) -> str | None:
    """The newest bundle carrying image ``wanted`` for one of ``identities``, else the newest
    carrying it (whose fetch then says whom it is for)."""
    newest = None
    for bundle_id in newest_first:
        manifest = _candidate(transport, bundle_id, trusted)
        if manifest is None or not _carries(manifest, wanted):
            continue
        if _for_us(manifest, identities):
            return bundle_id
        newest = newest or bundle_id
    return newest


def _carries(manifest: Manifest, wanted: str) -> bool:
    """Whether ``manifest`` carries the image ``wanted`` names: by a tag of it, or by the
    config digest that ``airgap ls`` shows for an image sent without one (or by its id)."""
    if is_digest(wanted):
        return any(wanted in (image.config, image.id) for image in manifest.images)
    tag = tag_of(wanted)
    return tag in {tag_of(ref) for image in manifest.images for ref in image.refs}


def _candidate(
    transport: Transport, bundle_id: str, trusted: Sequence[minisign.PublicKey]
) -> Manifest | None:
    """The signed manifest, whose tags (``app``, ``app:latest`` and ``docker.io/library/app``
    are one) say whether the bundle carries an image asked for."""
    try:
        manifest, _ = open_bundle(transport, bundle_id, trusted)
    except (VerificationError, TransferError):
        return None  # not a candidate (or gone since listed); fetching it by id says why
    return manifest


def _for_us(manifest: Manifest, identities: Sequence[age.Identity]) -> bool:
    try:
        addressed(manifest, identities)
    except NoIdentityMatchError:
        return False
    return True


@dataclass(frozen=True)
class Listing:
    bundle_id: str
    state: str  # "verified", "imported", "incomplete", "unverified", "too-large", "invalid"
    manifest: Manifest | None = None
    detail: str = ""


def list_bundles(
    transport: Transport, *, trusted: Sequence[minisign.PublicKey], imported: set[str]
) -> list[Listing]:
    """Every published bundle with what its manifest says; signatures are checked when keys
    are given (without them, nothing read from the manifest is vouched for, and a large one
    is not read at all)."""
    found = []
    for bundle_id in published_ids(_listed(transport)):
        try:
            if trusted:
                manifest, _ = open_bundle(transport, bundle_id, trusted)
                state, detail = (
                    ("imported", "")
                    if bundle_id in imported
                    else _payload_state(transport, manifest)
                )
                found.append(Listing(bundle_id, state, manifest, detail))
            else:
                found.append(_unverified(transport, bundle_id))
        except AirgapError as exc:
            found.append(Listing(bundle_id, "invalid", detail=exc.message))
    return found


def _payload_state(transport: Transport, manifest: Manifest) -> tuple[str, str]:
    """``verified`` (its signature) if the payload is there at its signed size, else
    ``incomplete``: a copy cut short would only fail at the fetch."""
    size = transport.size(manifest.payload.name)
    if size == manifest.payload.size:
        return "verified", ""
    found = "missing" if size is None else f"{size} bytes"
    return "incomplete", f"payload: {found}, the manifest says {manifest.payload.size}"


def _unverified(transport: Transport, bundle_id: str) -> Listing:
    name = bundle_id + MANIFEST_SUFFIX
    data = _read_capped(transport, name, MAX_UNVERIFIED_MANIFEST, ManifestError)
    if data is None:
        detail = (
            f"manifest over {MAX_UNVERIFIED_MANIFEST >> 20} MiB, not read unverified: "
            "pass --trust to check and list it"
        )
        return Listing(bundle_id, "too-large", detail=detail)
    return Listing(bundle_id, "unverified", Manifest.parse(data))
