"""One ``airgap send``, from a :class:`~airgap.client.unfinished.Recipe` to a published bundle.

A send to a drop box is recorded in its spool before it starts (recipe and payload key), so it
can be continued after any interruption: :func:`start` picks a new bundle id or, when an
unfinished send of the same recipe is in the spool, continues that one; :func:`run` encodes
(again, comparing the spool's bytes, when continuing) and uploads; a send whose payload was
wholly encoded before the interruption only needs its upload finished (:func:`finish`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from airgap.client.engine import Engine
from airgap.client.ftp import WrongPlace
from airgap.client.images import learn_layer_files, left_out_size, send_images
from airgap.client.pace import LEVELS, Pace
from airgap.client.places import (
    Place,
    check_space,
    drop_gone,
    forget_spool,
    open_place,
    send_spool,
)
from airgap.client.progress import Meter
from airgap.client.refusals import take_refusals
from airgap.client.saved import LayerFile
from airgap.client.send import (
    Meters,
    Resuming,
    file_members,
    resume_send,
    send_files,
    spooled_manifest,
)
from airgap.client.sendledger import FarSide, SendLedger, audience, audience_of
from airgap.client.spool import ContinueMismatch, SpooledTransport, cache_dir
from airgap.client.transport import MANIFEST_SUFFIX, PARTIAL_SUFFIX, Transport
from airgap.client.unfinished import (
    Recipe,
    alike,
    began_encoding,
    begin,
    encoded_bytes,
    find,
    is_stand_in,
    key_of,
    recipe_of,
)
from airgap.shared import age, minisign
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import (
    AirgapError,
    CertificateMismatch,
    Interrupted,
    StorageError,
    TransferError,
    UsageError,
)
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import Manifest, payload_name
from airgap.shared.stages import DEFAULT_ZSTD_LEVEL


@dataclass(frozen=True)
class Start:
    bundle_id: str
    key: age.PayloadKey | None
    continuing: bool  # an interrupted send of this recipe: encode again, compare, go on


def start(recipe: Recipe, recipients: Sequence[age.Recipient], place: Place) -> Start:
    """A new send, or the unfinished one of the same recipe to the same drop box."""
    if place.server is None:
        return Start(new_bundle_id(), None, continuing=False)
    found = find(cache_dir() / "send", recipe)
    if found is not None:
        key = key_of(send_spool(found))
        check_passphrase(found, key, recipients)
        return Start(found, key, continuing=True)
    bundle_id = new_bundle_id()
    key = age.PayloadKey.new(recipients) if recipients else None
    begin(send_spool(bundle_id), recipe, key)
    return Start(bundle_id, key, continuing=False)


def start_current(
    recipe: Recipe,
    recipients: Sequence[age.Recipient],
    place: Place,
    *,
    tell: Callable[[str], None],
) -> Start:
    """:func:`start`, unless the unfinished send it finds was wholly encoded from content that
    has changed since: that one is dropped and a new one started. One whose content is gone
    is kept, and refused: it holds the only copy, and a new send could not start."""
    begun = start(recipe, recipients, place)
    if not begun.continuing and place.server is not None:
        _tell_alike(recipe, begun.bundle_id, tell)
    if not (begun.continuing and encoded(begun.bundle_id)):
        return begun
    change = changed(begun.bundle_id, recipe)
    if change is None:
        return begun
    if change.gone:
        raise UsageError(
            f"{change.why}; the interrupted send of bundle {begun.bundle_id} holds it as it was "
            "when that send began",
            hint=f"finish that send with airgap send --resume {begun.bundle_id} "
            f"{place.flags()}, or give it up with airgap spool drop {begun.bundle_id}",
        )
    tell(f"airgap: not continuing bundle {begun.bundle_id}: {change.why}")
    tell("airgap: sending a new bundle instead")
    drop_encoded(begun.bundle_id, place)
    return start(recipe, recipients, place)


def _tell_alike(recipe: Recipe, bundle_id: str, tell: Callable[[str], None]) -> None:
    """A new send of what an unfinished one sends too, to the same place: that one stays in the
    spool (and its partial on the server), which a silent new bundle would let go unnoticed."""
    for other in alike(cache_dir() / "send", recipe, besides=bundle_id):
        tell(
            f"airgap: note: bundle {other}, an unfinished send of the same content to this drop "
            "box (with other options, or being sent by another airgap now), stays in the spool "
            f"(airgap spool drop {other} gives it up)"
        )


def check_passphrase(
    bundle_id: str, key: age.PayloadKey | None, recipients: Sequence[age.Recipient]
) -> None:
    """Continuing a passphrase send with another passphrase would publish it under the first."""
    given = [r for r in recipients if isinstance(r, age.ScryptRecipient) and not is_stand_in(r)]
    if key is not None and any(not _opens(r, key) for r in given):
        raise UsageError(
            f"bundle {bundle_id}, an interrupted send of the same content, was encrypted to "
            "another passphrase",
            hint="give that passphrase to continue it, or give it up with airgap spool drop "
            + bundle_id,
        )


def _opens(recipient: age.ScryptRecipient, key: age.PayloadKey) -> bool:
    try:
        return recipient.opens(key)
    except AirgapError:
        return False


def encoded(bundle_id: str) -> bool:
    """Whether the interrupted send ``bundle_id`` had its whole payload encoded."""
    return (send_spool(bundle_id) / (bundle_id + MANIFEST_SUFFIX)).exists()


def unfinished(bundle_id: str) -> Recipe | None:
    return recipe_of(send_spool(bundle_id))


@dataclass(frozen=True)
class Change:
    why: str
    gone: bool  # nothing to send in its place: the interrupted send is all there is


def changed(bundle_id: str, recipe: Recipe) -> Change | None:
    """What ``recipe`` names now that the wholly encoded, interrupted send ``bundle_id`` does
    not hold (an image rebuilt, retagged or removed, a file edited or gone), or None if it still
    holds it all. Continuing such a send would publish the content as it was when the send
    began."""
    manifest = _spooled_manifest(bundle_id)
    if recipe.images:
        held = {ref: image.id for image in manifest.images for ref in image.refs}
        ids = {image.id for image in manifest.images}  # what an id or a digest named
        changes: list[Change] = []
        engine = Engine.from_env()
        try:
            for ref in recipe.images:
                now = engine.image_id(ref)
                if now is None:
                    changes.append(Change(f"{ref} is now no image", gone=True))
                elif held[ref] != now if ref in held else now not in ids:
                    changes.append(Change(f"{ref} is now {now}", gone=False))
        finally:
            engine.close()
        return _weightiest(changes)
    entries = {entry.name: entry for entry in manifest.files}
    changes = []
    for name in recipe.files:
        path, entry = Path(name), entries.get(Path(name).name)
        try:
            with path.open("rb") as handle:
                same = (
                    entry is not None
                    and os.fstat(handle.fileno()).st_size == entry.size
                    and hashlib.file_digest(handle, "sha256").hexdigest() == entry.sha256
                )
        except OSError as exc:
            changes.append(Change(f"{path}: {exc.strerror or exc}", gone=True))
            continue
        if not same:
            changes.append(Change(f"{path} has changed", gone=False))
    return _weightiest(changes)


def _weightiest(changes: Sequence[Change]) -> Change | None:
    """One item gone outweighs any number changed: the interrupted send then holds the only
    copy of it, and a new send could not start."""
    return next((c for c in changes if c.gone), changes[0] if changes else None)


def _spooled_manifest(bundle_id: str) -> Manifest:
    return spooled_manifest(send_spool(bundle_id), bundle_id)


def drop_encoded(bundle_id: str, place: Place) -> None:
    """Give up a wholly encoded, interrupted send: its spool goes, and its partial upload.
    Once whole, the payload stays until the appliance expires it (a sender may delete only
    partials there): without a signature, it is never published."""
    manifest = _spooled_manifest(bundle_id)
    transport = open_place(place, "--to", spool=send_spool(bundle_id))
    try:
        _abandon(transport, bundle_id, manifest.payload.name)
    finally:
        transport.close()


@dataclass(frozen=True)
class Sender:
    place: Place
    recipients: Sequence[age.Recipient]
    signing: minisign.SecretKey
    ledgers: Path
    quiet: bool = False
    tell: Callable[[str], None] = lambda news: None  # what a person should know (CLI: stderr)
    space_check: bool = True  # refuse to start where the uncompressed size does not fit


def run(recipe: Recipe, begun: Start, by: Sender) -> tuple[Manifest, Transport]:
    """Encode and upload (or write into the directory); the bundle is published on return.
    A new send that fails before its first encoded byte (no password, an unknown image), or
    that the drop box refuses for its account or path, leaves no spool (see :func:`_kept`)."""
    try:
        return _run(recipe, begun, by)
    except BaseException as exc:
        spool = send_spool(begun.bundle_id)
        if by.place.server and not _kept(exc, begun, spool):
            forget_spool(spool)
            if isinstance(exc, AirgapError) and begun.bundle_id in (exc.hint or ""):
                exc.hint = "nothing was encoded yet: run the same command again"
        raise


def _run(recipe: Recipe, begun: Start, by: Sender) -> tuple[Manifest, Transport]:
    key = by.signing
    drop_gone(send_spool(begun.bundle_id).parent)  # what a kill left of an ended send's spool
    spool = send_spool(begun.bundle_id) if by.place.server else None
    transport = open_place(by.place, "--to", spool=spool)
    resuming = Resuming(begun.bundle_id, spool, continuing=begun.continuing) if spool else None
    room = spool or by.place.directory or Path()
    try:
        pace = None
        if recipe.level is None and spool is not None and isinstance(transport, SpooledTransport):
            uploading = transport  # how far its upload has gone tells the pace the link's speed
            pace = Pace(lambda: uploading.reached, spool / LEVELS, replay=begun.continuing)
        options = EncodeOptions(
            by.recipients,
            level=recipe.level or DEFAULT_ZSTD_LEVEL,
            pace=pace,
            threads=os.cpu_count() or 1,
            key=begun.key,
        )
        if spool is not None:
            _refused_before(transport, by.ledgers, by.place, by.tell)
        if recipe.images:
            ledger = SendLedger(by.ledgers, by.place.describe(), audience(by.recipients))
            engine = Engine.from_env()
            try:
                far = FarSide() if recipe.full else ledger.far_side()
                if recipe.bases:
                    far = far.knowing(engine.describe(recipe.bases))
                    far = learn_layer_files(engine, recipe.bases, far)
                described = engine.describe(recipe.images)
                size = engine.size(described)
                if by.space_check:
                    carried = max(0, size - left_out_size(described, far))
                    check_space(room, carried, held=_held(spool))
                with _meters(by, spool, size) as meters:
                    sent = send_images(
                        recipe.images,
                        transport,
                        engine=engine,
                        options=options,
                        key=key,
                        far=far,
                        resuming=resuming,
                        meters=meters,
                    )
                if spool is not None:  # published: at once, a rerun must not upload it again
                    forget_spool(spool)
            finally:
                engine.close()
            manifest = sent.manifest
            _record(ledger, manifest, files=sent.files, tell=by.tell)
            if sent.unindexed:
                ids = [image.id for image in sent.unindexed]
                which = f"image {ids[0]}" if len(ids) == 1 else f"some of images {', '.join(ids)}"
                by.tell(
                    f"airgap: warning: Docker's save left {which} out of the archive's "
                    "index.json (Docker 26.1 does so at random beside a tagged image): an engine "
                    f"with the containerd image store will refuse bundle {manifest.id}. Send "
                    "the untagged image again, on its own or tagged"
                )
        else:
            paths = [Path(p) for p in recipe.files]
            try:
                size = sum(member.size for member in file_members(paths))  # each checked, named
            except UsageError as exc:
                if begun.continuing and exc.hint is None:  # its start is kept in the spool
                    exc.hint = (
                        f"the interrupted send of bundle {begun.bundle_id} began with it: put it "
                        f"back and run the same command again, or give that send up with airgap "
                        f"spool drop {begun.bundle_id}"
                    )
                raise
            if by.space_check:
                check_space(room, size, held=_held(spool))
            with _meters(by, spool, size) as meters:
                manifest = send_files(
                    paths, transport, options=options, key=key, resuming=resuming, meters=meters
                )
            if spool is not None:  # published: at once, a rerun must not upload it again
                forget_spool(spool)
    except ContinueMismatch:
        payload = payload_name(begun.bundle_id, encrypted=bool(by.recipients))
        _abandon(transport, begun.bundle_id, payload)
        raise
    except TransferError as exc:
        if spool is not None and _kept(exc, begun, spool):
            _hint_continue(exc, bundle_id=begun.bundle_id, place=by.place)
        elif spool is not None and exc.transient:  # a refusal that stands keeps its own hint
            exc.hint = "nothing was encoded yet: run the same command again"
        raise
    except KeyboardInterrupt as exc:
        if spool is None:
            raise
        raise Interrupted("interrupted", hint=_continue_hint(begun.bundle_id, by.place)) from exc
    finally:
        transport.close()
    return manifest, transport


def _kept(exc: BaseException, begun: Start, spool: Path) -> bool:
    """Whether a failed send's spool stays: a continued send's always; a new one's once it has
    encoded a byte, unless the drop box refused the account or the path itself. No send to that
    URL can use what it encoded, and a send elsewhere is a new bundle: left, it would only be
    continued into the same refusal by every rerun."""
    return begun.continuing or (began_encoding(spool) and not isinstance(exc, WrongPlace))


def _held(spool: Path | None) -> int:
    return encoded_bytes(spool) if spool is not None else 0


@contextlib.contextmanager
def _meters(by: Sender, spool: Path | None, size: int) -> Iterator[Meters]:
    """Bars for the plaintext (``size``: about what it will be) and, to a drop box, the upload."""
    with Meter("encoding", quiet=by.quiet, total=size or None) as encoded:
        if spool is None:
            yield Meters(encoded)
            return
        with Meter("uploading", quiet=by.quiet, line=1) as uploaded:
            yield Meters(encoded, uploaded)


def _refused_before(
    transport: Transport, ledgers: Path, place: Place, tell: Callable[[str], None]
) -> None:
    remote = transport.remote if isinstance(transport, SpooledTransport) else transport
    for notice in take_refusals(remote, ledgers, place.describe()):
        tell(
            f"airgap: warning: the drop box refused bundle {notice.bundle_id}, sent earlier, so "
            "it never reached the receivers (its operator has the reason); send what it held "
            + (
                "again (no later send from here leaves its layers out)"
                if notice.ours
                else "again. No ledger here holds it (a bundle of files, one to a "
                "passphrase, or one another machine sent with this account): if it held "
                "images another machine sent, that machine's ledger still counts their layers "
                "as delivered (send them from there with --full)"
            )
        )


def _hint_continue(exc: TransferError, *, bundle_id: str, place: Place) -> None:
    """How to go on after ``exc``. A refusal that stands (a wrong password, a ban, another
    certificate than the pinned one) keeps its own hint, and the way back names no pin that
    was just refused: running the same command again would only meet it again, or earn a ban."""
    if exc.transient:
        exc.hint = _continue_hint(bundle_id, place)
        return
    if isinstance(exc, WrongPlace):  # the same URL meets the same refusal
        exc.hint = f"{exc.hint}; airgap spool drop {bundle_id} gives this send up"
        return
    pinned = not isinstance(exc, CertificateMismatch)
    later = "once that is put right, " + _resume_hint(bundle_id, place, pinned=pinned)
    exc.hint = f"{exc.hint}; {later}" if exc.hint else later


def _continue_hint(bundle_id: str, place: Place) -> str:
    return "run the same command again, or " + _resume_hint(bundle_id, place)


def _resume_hint(bundle_id: str, place: Place, *, pinned: bool = True) -> str:
    return (
        f"airgap send --resume {bundle_id} {place.flags(pinned=pinned)} (with --sign-key if it "
        f"was still encoding); airgap spool drop {bundle_id} gives it up"
    )


def _record(
    ledger: SendLedger,
    manifest: Manifest,
    *,
    files: Mapping[str, LayerFile],
    tell: Callable[[str], None],
) -> None:
    """Note a published bundle in the ledger. Failing that is no reason to fail the send: the
    bundle is on the drop box already, and a run told otherwise would upload it again."""
    try:
        ledger.record(manifest, files)
    except StorageError as exc:
        tell(
            f"airgap: warning: bundle {manifest.id} is published, but the ledger of what the "
            f"far side holds was not updated ({exc.message}); later sends there will not leave "
            "its layers out"
        )


def finish(
    bundle_id: str,
    place: Place,
    ledgers: Path,
    *,
    quiet: bool = True,
    tell: Callable[[str], None] = lambda news: None,
) -> tuple[Manifest, Transport]:
    """Upload what an interrupted send encoded wholly: payload, manifest, signature."""
    transport = open_place(place, "--to", spool=send_spool(bundle_id))
    if not isinstance(transport, SpooledTransport):
        raise StorageError("--resume finishes a send to a drop box")
    try:
        _refused_before(transport, ledgers, place, tell)
        with Meter("uploading", quiet=quiet) as meter:
            manifest = resume_send(bundle_id, transport, meter=meter)
        forget_spool(send_spool(bundle_id))  # published: at once, a rerun must not upload it
    except ContinueMismatch:
        _abandon(transport, bundle_id, _spooled_manifest(bundle_id).payload.name)
        raise
    except TransferError as exc:
        _hint_continue(exc, bundle_id=bundle_id, place=place)
        raise
    except KeyboardInterrupt as exc:
        raise Interrupted("interrupted", hint=_continue_hint(bundle_id, place)) from exc
    finally:
        transport.close()
    if manifest.images:
        who = audience_of(manifest.encryption)
        _record(SendLedger(ledgers, place.describe(), who), manifest, files={}, tell=tell)
    return manifest, transport


def _abandon(transport: Transport, bundle_id: str, payload: str) -> None:
    """Give up an unfinished send: its partial upload of ``payload`` goes (asked once: none
    there is fine too, and a partial without a signature never publishes), then its spool."""
    remote = transport.remote if isinstance(transport, SpooledTransport) else transport
    with contextlib.suppress(TransferError):
        remote.delete(payload + PARTIAL_SUFFIX)
    forget_spool(send_spool(bundle_id))
