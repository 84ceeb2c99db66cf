"""``airgap send --file``: plain files into a signed (and usually encrypted) bundle on a transport.

The payload goes up as ``ID.….part`` and is renamed when complete; the manifest follows, and the
signature last, because its arrival is what publishes the bundle. A failed send removes what
it placed (its partial payload; once that is renamed, the payload and the manifest too), so
nothing half-written is ever offered to a receiver, nor left on a medium.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from airgap.client.private import sync_dir, write_whole
from airgap.client.progress import UNSEEN, Meter, counted
from airgap.client.spool import ContinueMismatch, SpooledTransport, VouchedWriter
from airgap.client.transport import (
    MANIFEST_SUFFIX,
    PARTIAL_SUFFIX,
    SIGNATURE_SUFFIX,
    Transport,
    Writable,
    put_small,
)
from airgap.shared import minisign
from airgap.shared.archive import Member, check_name, tar_stream
from airgap.shared.bundle import EncodeOptions, encode, sign_manifest
from airgap.shared.errors import ManifestError, StorageError, UsageError
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import FileEntry, ImageEntry, Manifest, OmittedLayer, payload_name

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Meters:
    """The progress bars of a send: plaintext encoded, payload uploaded."""

    encoded: Meter = UNSEEN
    uploaded: Meter = UNSEEN


UNWATCHED = Meters()


def file_members(paths: Sequence[Path]) -> list[Member]:
    """Regular files only, each under its own base name, checked before anything is sent."""
    if not paths:
        raise UsageError("nothing to send", hint="name at least one --file PATH")
    members, names = [], set()
    for path in paths:
        try:
            info = path.stat()
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path} is not a regular file", hint="tar a directory first")
        check_name(path.name)
        if path.name in names:
            raise UsageError(f"two files are named {path.name!r}; names must differ")
        names.add(path.name)
        members.append(
            Member(path.name, info.st_size, int(info.st_mtime), _read(path), info.st_mode)
        )
    return members


def _read(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                yield chunk
    except OSError as exc:
        raise StorageError(f"reading {path}: {exc.strerror or exc}") from exc


def send_files(
    paths: Sequence[Path],
    transport: Transport,
    *,
    options: EncodeOptions,
    key: minisign.SecretKey,
    resuming: Resuming | None = None,
    meters: Meters = UNWATCHED,
) -> Manifest:
    members = file_members(paths)
    entries: list[FileEntry] = []
    plaintext = tar_stream(members, entries)
    return send_stream(
        plaintext,
        transport,
        options=options,
        key=key,
        files=entries,
        resuming=resuming,
        meters=meters,
    )


@dataclass(frozen=True)
class Resuming:
    """A remote send that keeps, in its spool, what ``airgap send --resume`` needs."""

    bundle_id: str
    spool: Path
    continuing: bool = False  # the spool holds the start of this very payload already

    def keep(self, manifest: Manifest, data: bytes, signature: str) -> None:
        """The signed manifest, durable in the spool: the signature first, then the manifest,
        whose presence says the payload is whole (a crash between them leaves no manifest)."""
        try:
            write_whole(self.spool / (manifest.id + SIGNATURE_SUFFIX), signature.encode())
            write_whole(self.spool / (manifest.id + MANIFEST_SUFFIX), data)
            sync_dir(self.spool)
        except OSError as exc:
            raise StorageError(f"spool {self.spool}: {exc.strerror or exc}") from exc


def spooled_manifest(spool: Path, bundle_id: str) -> Manifest:
    """The manifest an interrupted send kept, or a clear error if it is damaged (a disk that
    failed, a hand that edited it): the spool can then only be given up."""
    try:
        return Manifest.parse((spool / (bundle_id + MANIFEST_SUFFIX)).read_bytes())
    except (OSError, ManifestError) as exc:
        raise StorageError(
            f"the spool of bundle {bundle_id} holds no readable manifest",
            hint=f"airgap spool drop {bundle_id}, then send again (a new bundle)",
        ) from exc


def resume_send(bundle_id: str, transport: SpooledTransport, *, meter: Meter = UNSEEN) -> Manifest:
    """Finish an interrupted send from its spool: the payload from the server's size of its
    partial file, then the manifest, and the signature last."""
    spool = transport.spool
    data_path = spool / (bundle_id + MANIFEST_SUFFIX)
    if not data_path.exists():
        raise StorageError(
            f"bundle {bundle_id} was interrupted before it was encoded: nothing to resume",
            hint="send the images or files again (a new bundle)",
        )
    manifest = spooled_manifest(spool, bundle_id)
    signature = spool / (bundle_id + SIGNATURE_SUFFIX)
    payload = spool / manifest.payload.name
    if not payload.exists():
        payload = spool / (manifest.payload.name + PARTIAL_SUFFIX)
    if not payload.exists() or payload.stat().st_size != manifest.payload.size:
        raise StorageError(f"the spool of bundle {bundle_id} lacks its payload")
    if not signature.is_file() or not signature.stat().st_size:
        raise StorageError(
            f"the spool of bundle {bundle_id} lacks its signature",
            hint=f"airgap spool drop {bundle_id}, then send again (a new bundle)",
        )
    transport.upload_file(manifest.payload.name, payload, keyed=True, meter=meter)
    transport.upload_file(bundle_id + MANIFEST_SUFFIX, data_path)
    transport.upload_file(bundle_id + SIGNATURE_SUFFIX, signature)
    return manifest


def send_stream(
    plaintext: Iterable[bytes],
    transport: Transport,
    *,
    options: EncodeOptions,
    key: minisign.SecretKey,
    files: Sequence[FileEntry] = (),
    images: Sequence[ImageEntry] = (),
    omitted: Sequence[OmittedLayer] = (),
    resuming: Resuming | None = None,
    meters: Meters = UNWATCHED,
) -> Manifest:
    """One bundle of ``plaintext``.

    ``files``, ``images`` and ``omitted`` are read only after the stream is drained, so a
    producer may fill them in as it goes. A failed send removes its partial payload, unless
    ``resuming``: then the manifest and signature are kept in the spool as soon as the payload
    is encoded (before its upload has finished), and the partial stays."""
    bundle_id = resuming.bundle_id if resuming else new_bundle_id()
    encoder, payload = encode(counted(plaintext, meters.encoded), options)
    partial = payload_name(bundle_id, encrypted=bool(options.recipients)) + PARTIAL_SUFFIX
    placed = [partial]  # what a failed send deletes, unless resuming
    try:
        with _writer(transport, partial, resuming, meters.uploaded) as out:
            for chunk in payload:
                out.write(chunk)
            manifest = encoder.manifest(
                bundle_id, signer=key.public_key, files=files, images=images
            )
            if isinstance(out, VouchedWriter):
                out.vouch(manifest.payload.sha256)
            manifest = replace(manifest, omitted=tuple(omitted))
            data, signature = sign_manifest(manifest, key)
            if resuming is not None:
                out.flush()  # the whole payload in the spool before the manifest says it is
                if (resuming.spool / partial).stat().st_size != manifest.payload.size:
                    raise ContinueMismatch("the payload encoded again is shorter than before")
                resuming.keep(manifest, data, signature)
        transport.rename(partial, manifest.payload.name)
        placed.append(manifest.payload.name)
        for name, content in (
            (bundle_id + MANIFEST_SUFFIX, data),
            (bundle_id + SIGNATURE_SUFFIX, signature.encode()),
        ):
            placed.append(name + PARTIAL_SUFFIX)
            put_small(transport, name, content)
            placed[-1] = name
    except BaseException:
        if resuming is None and not _published(transport, bundle_id + SIGNATURE_SUFFIX):
            for name in reversed(placed):  # nothing to continue from: what this send placed goes
                with contextlib.suppress(Exception):
                    transport.delete(name)
        raise
    return manifest


def _published(transport: Transport, signature: str) -> bool:
    """Whether the signature is in place (an interrupt just after its rename): the bundle is
    whole and published then, and none of it may go."""
    try:
        return transport.size(signature) is not None
    except Exception:
        return False


def _writer(transport: Transport, name: str, resuming: Resuming | None, meter: Meter) -> Writable:
    if isinstance(transport, SpooledTransport):
        continuing = resuming is not None and resuming.continuing
        return transport.vouched_writer(name, continuing=continuing, meter=meter)
    return transport.writer(name)
