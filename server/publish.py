"""Publishing: a bundle in an incoming area reaches ``pub/outgoing`` only once it is whole.

Whole means: the signature and the manifest have arrived, the manifest parses (and, with trusted
signers configured, a trusted key signed it, naming this very bundle and payload), and the
payload has exactly the manifest's size and sha256. Until the payload reaches that size the
bundle is *pending* (the upload may be resumed); anything else wrong sends all its files to
``quarantine/SENDER/ID-STAMP/`` with ``reason.txt``, never to receivers. A refused manifest or
signature takes the payload along under both names a payload can have, as it cannot be trusted
to name it.

:meth:`Publisher.check` hashes whole payloads through the server's
:class:`~airgap.server.hashing.HashCache` (an upload hashed as it landed is not read again; a
payload written since is): it runs on a worker thread, never on the FTP IO loop. It holds the
bundle's files in :class:`BusyFiles` from before the hash until after the move, so no upload
can open one for writing in between, and one already open (it holds its file) makes the bundle
pending until it ends. The files are synced to disk before they move, and the signature moves
last, so a reader of ``pub/outgoing`` never sees a signature without its payload; a publish cut
off between its moves is taken back and done again at the next start (:meth:`Publisher.scan`).
What a receiver's ``--consume`` cut short leaves there (files without their signature, which
it deletes first) is deleted (:meth:`Publisher.clear_leftovers`).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from airgap.server import secretfile
from airgap.server.audit import AuditLog
from airgap.server.hashing import HashCache
from airgap.server.layout import Layout
from airgap.server.limits import BusyFiles
from airgap.server.policy import REFUSED_SUFFIX
from airgap.shared import minisign
from airgap.shared.bundle import open_manifest
from airgap.shared.errors import VerificationError
from airgap.shared.ids import bundle_id_of, is_bundle_id
from airgap.shared.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_UNVERIFIED_MANIFEST,
    Manifest,
    payload_name,
)

logger = logging.getLogger("airgap.server")

MANIFEST_SUFFIX = ".manifest.json"
SIGNATURE_SUFFIX = ".manifest.json.minisig"
MAX_SIGNATURE_BYTES = 16 * 1024


@dataclass(frozen=True)
class Outcome:
    bundle_id: str
    status: str  # "published", "pending", "quarantined"; "failed" (an error: tried again)
    reason: str = ""


class _Quarantine(Exception):
    def __init__(self, reason: str, *, delivered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered  # a copy of what was published already: no notice


class Publisher:
    def __init__(
        self,
        layout: Layout,
        *,
        trusted: Sequence[minisign.PublicKey],
        busy: BusyFiles,
        audit: AuditLog,
        hashes: HashCache,
    ) -> None:
        self.layout = layout
        self.trusted = tuple(trusted)
        self.busy = busy
        self.audit = audit
        self.hashes = hashes
        # Held from the look into pub/outgoing to the last move into it: two areas' checks of
        # one bundle id would otherwise both find it free, and the second move replace the first.
        self._publishing = threading.Lock()
        self._leftovers: set[tuple[str, int]] = set()  # seen by the last look: (name, inode)

    def areas(self) -> list[Path]:
        """``pub/incoming`` (anonymous uploads) and every sender's area under it."""
        found = [self.layout.incoming]
        for entry in os.scandir(self.layout.incoming):
            if entry.is_dir(follow_symlinks=False):
                found.append(Path(entry.path))
        return found

    def scan(self) -> list[Outcome]:
        """Check every bundle whose signature is present (after a restart, say), once the
        publishes a stop cut off are taken back."""
        self._take_back()
        self.clear_leftovers(at_start=True)
        return [outcome for _, outcome in self.check_signed()]

    def check_signed(self) -> list[tuple[Path, Outcome]]:
        """Check every bundle of an area whose signature is there, each with its area. The
        check at an upload's end may have failed (a full disk while it moved the bundle, say):
        the bundle waits in its area for this one, run at start and by the periodic upkeep.
        A check that fails again is logged and reported ``failed``: its bundle stays."""
        checked = []
        for area in self.areas():
            try:
                with os.scandir(area) as entries:
                    names = sorted(e.name for e in entries)
            except FileNotFoundError:  # an area removed meanwhile
                continue
            for name in names:
                if name.endswith(SIGNATURE_SUFFIX) and (bid := bundle_id_of(name)):
                    checked.append((area, self.check_logged(area, bid)))
        return checked

    def check_logged(self, area: Path, bundle_id: str) -> Outcome:
        """:meth:`check`; an ``OSError`` (a full disk as the bundle moved, say) is logged and
        is outcome ``failed``: the bundle stays in its area, signed, for :meth:`check_signed`
        to try again."""
        try:
            return self.check(area, bundle_id)
        except OSError as exc:
            logger.error("bundle check %s failed: %s; tried again later", bundle_id, exc)
            return Outcome(bundle_id, "failed", str(exc))

    def _take_back(self) -> None:
        """A publish cut off between its moves (the process killed) left the payload, and
        maybe the manifest, in ``pub/outgoing`` without the signature, which moves last: no
        receiver lists them. Its intent record names the area they came from; they go back
        there, to be checked again. Nothing else in ``pub/outgoing`` moves (a receiver's
        --consume cut short leaves a bundle without its signature too: not ours to send back,
        :meth:`clear_leftovers` deletes it)."""
        for intent in sorted(self.layout.state.glob(_INTENT + "*")):
            bundle_id = intent.name.removeprefix(_INTENT)
            area = (self.layout.root / intent.read_text(encoding="utf-8").strip()).resolve()
            incoming = self.layout.incoming.resolve()
            ours = area == incoming or area.parent == incoming  # an area, nothing else
            if is_bundle_id(bundle_id) and ours and area.is_dir():
                self._move_back(bundle_id, area)
            intent.unlink()

    def clear_leftovers(self, *, at_start: bool = False) -> list[str]:
        """Delete what a receiver's ``--consume`` cut off between its deletes left in
        ``pub/outgoing``: a bundle's files without its signature, which goes first, so no
        receiver lists them again and they would hold the disk for good. A publish under way
        holds the lock, and one a failure cut off has its intent record: neither is touched.
        At start they go at once; later only files the previous look found already, so that a
        consume under way does its own deletes. Returns the names deleted."""
        outgoing = self.layout.outgoing
        found: set[tuple[str, int]] = set()
        deleted = []
        with self._publishing:
            entries = list(os.scandir(outgoing))
            signed = {bundle_id_of(e.name) for e in entries if e.name.endswith(SIGNATURE_SUFFIX)}
            for entry in entries:
                bundle_id = bundle_id_of(entry.name)
                if bundle_id is None or bundle_id in signed:
                    continue
                if (self.layout.state / (_INTENT + bundle_id)).exists():
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                key = (entry.name, info.st_ino)
                if not at_start and key not in self._leftovers:
                    found.add(key)
                    continue
                Path(entry.path).unlink(missing_ok=True)
                deleted.append(entry.name)
                self.audit.record("leftover", file=entry.name, bytes=info.st_size)
            self._leftovers = found
        if deleted:
            _fsync(outgoing)
            logger.warning("deleted from pub/outgoing, their bundle consumed: %s", deleted)
        return deleted

    def _move_back(self, bundle_id: str, area: Path) -> None:
        outgoing = self.layout.outgoing
        names = [payload_name(bundle_id, encrypted=e) for e in (True, False)]
        moved = []
        with self._publishing:
            if (outgoing / (bundle_id + SIGNATURE_SUFFIX)).exists():
                return  # the publish was whole: only its record was left
            for name in [*names, bundle_id + MANIFEST_SUFFIX]:
                if (outgoing / name).exists() and not (area / name).exists():
                    (outgoing / name).rename(area / name)
                    moved.append(name)
        if moved:
            _fsync(area)
            _fsync(outgoing)
            logger.warning("publish of %s was cut off; %s back in %s", bundle_id, moved, area)
            self.audit.record("publish-cut", bundle=bundle_id, area=area.name, back=" ".join(moved))

    def check(self, area: Path, bundle_id: str) -> Outcome:
        manifest_path = area / (bundle_id + MANIFEST_SUFFIX)
        signature_path = area / (bundle_id + SIGNATURE_SUFFIX)
        if not signature_path.exists() or not manifest_path.exists():
            return Outcome(bundle_id, "pending", "manifest or signature not there yet")
        claimed = [manifest_path, signature_path]
        if not self.busy.claim(claimed):
            return Outcome(bundle_id, "pending", "being written")
        try:
            return self._check_claimed(area, bundle_id, manifest_path, signature_path)
        finally:
            self.busy.release(claimed)

    def _check_claimed(
        self, area: Path, bundle_id: str, manifest_path: Path, signature_path: Path
    ) -> Outcome:
        files = [manifest_path, signature_path]
        try:
            manifest = self._manifest(bundle_id, manifest_path, signature_path)
        except _Quarantine as exc:
            return self._refuse(bundle_id, area, files, exc.reason)
        payload = area / manifest.payload.name
        # Held until the payload has moved: released after the hash, a resume could open it
        # in between and go on writing to the published (or quarantined) file.
        if not self.busy.claim([payload]):
            return Outcome(bundle_id, "pending", "payload being written")
        try:
            return self._check_payload(bundle_id, area, [payload, *files], manifest)
        finally:
            self.busy.release([payload])

    def _refuse(self, bundle_id: str, area: Path, files: list[Path], reason: str) -> Outcome:
        """Quarantine a refused manifest with whatever payload its bundle has.

        The manifest cannot be trusted to name the payload, so both names a payload can have
        go. One still open for writing makes the whole bundle pending, never split: its
        upload's end checks the bundle again, whereas a payload left behind here would stay
        in the sender's area (and quota) for good, with no signature to ever check it again.
        """
        payloads = [area / payload_name(bundle_id, encrypted=e) for e in (True, False)]
        if not self.busy.claim(payloads):
            return Outcome(bundle_id, "pending", "payload being written")
        try:
            return self._quarantine(bundle_id, area, [*payloads, *files], reason)
        finally:
            self.busy.release(payloads)

    def _check_payload(
        self, bundle_id: str, area: Path, files: list[Path], manifest: Manifest
    ) -> Outcome:
        """Publish or quarantine ``files`` (payload, manifest, signature), all claimed."""
        try:
            outcome = self._payload(bundle_id, files[0], manifest)
            if outcome is not None:
                return outcome
            if not self._publish(bundle_id, files):
                return Outcome(bundle_id, "published", "the same bundle again: its copy deleted")
        except _Quarantine as exc:
            return self._quarantine(bundle_id, area, files, exc.reason, tell=not exc.delivered)
        return Outcome(bundle_id, "published")

    def _manifest(self, bundle_id: str, manifest_path: Path, signature_path: Path) -> Manifest:
        if self.trusted:  # the signature is checked before the manifest is parsed
            data = _read_small(manifest_path, MAX_MANIFEST_BYTES)
        else:  # any sender's JSON, parsed as it is: no more of it than a real manifest
            limit = MAX_UNVERIFIED_MANIFEST
            unvouched = f"larger than {limit >> 20} MiB, with no --trusted-signer to vouch for it"
            data = _read_small(manifest_path, limit, why=unvouched)
        signature = _read_small(signature_path, MAX_SIGNATURE_BYTES)
        try:
            if self.trusted:
                manifest = open_manifest(data, signature, self.trusted)
            else:
                manifest = Manifest.parse(data)
        except VerificationError as exc:
            raise _Quarantine(exc.message) from exc
        if manifest.id != bundle_id:
            raise _Quarantine("manifest: id does not match the file names")
        return manifest

    def _payload(self, bundle_id: str, payload: Path, manifest: Manifest) -> Outcome | None:
        """None if the payload is whole and right; an outcome to report otherwise."""
        try:
            before = os.lstat(payload)
        except FileNotFoundError:
            return Outcome(bundle_id, "pending", "payload not there yet")
        if before.st_size < manifest.payload.size:
            return Outcome(bundle_id, "pending", "payload shorter than the manifest says")
        if before.st_size > manifest.payload.size:
            raise _Quarantine("payload: longer than the manifest says")
        digest, _, _ = self.hashes.digest(payload)
        if digest != manifest.payload.sha256:
            raise _Quarantine("payload: sha256 does not match the manifest")
        return None

    def _publish(self, bundle_id: str, files: list[Path]) -> bool:
        """Move ``files`` (payload, manifest, signature) to ``pub/outgoing``; False if the
        very same bundle is published there already: the sender was cut off after its
        signature landed, before it could forget its spool, and uploaded it all again. That
        copy is deleted rather than quarantined (it would hold the sender's quota and one of
        its quarantine places); another bundle of that id is quarantined."""
        outgoing = self.layout.outgoing
        for path in files:  # on disk before a receiver may see them (and a sender forget)
            _fsync(path)
        area = files[0].parent
        intent = self.layout.state / (_INTENT + bundle_id)  # the way back, should a stop cut in
        with self._publishing:
            if any((outgoing / f.name).exists() for f in files):
                if not _same_files(files, outgoing):
                    raise _Quarantine("a bundle with this id was published before", delivered=True)
                for path in files:
                    path.unlink(missing_ok=True)
                _fsync(area)
                self.audit.record("duplicate", bundle=bundle_id, area=area.name)
                return False
            secretfile.replace(intent, str(area.relative_to(self.layout.root)))
            _fsync(intent.parent)
            for path in files:  # payload, manifest, signature: the signature last
                path.rename(outgoing / path.name)
        _fsync(outgoing)
        _fsync(area)
        intent.unlink()
        self.audit.record("publish", bundle=bundle_id, area=str(files[0].parent.name))
        return True

    def _quarantine(
        self, bundle_id: str, area: Path, files: list[Path], reason: str, *, tell: bool = True
    ) -> Outcome:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{bundle_id}-{stamp}-{os.urandom(3).hex()}"
        # Assembled in state/ (same file system, private), then moved in whole with its reason.
        staging = self.layout.state / f"quarantine-{name}"
        staging.mkdir(mode=0o700)
        (staging / "reason.txt").write_text(f"{reason}\n", encoding="utf-8")
        for path in files:
            if path.exists():
                path.rename(staging / path.name)
        held = self.layout.quarantine_of(area)
        try:
            held.mkdir(mode=0o700, exist_ok=True)
            staging.rename(held / name)
        except OSError as exc:  # out of the area all the same; the operator must look
            logger.error("bundle %s: kept in %s, not %s: %s", bundle_id, staging, held, exc)
        self.audit.record("quarantine", bundle=bundle_id, area=area.name, reason=reason)
        if tell and area != self.layout.incoming:
            _tell_sender(area, bundle_id)
        return Outcome(bundle_id, "quarantined", reason)


def _same_files(files: list[Path], outgoing: Path) -> bool:
    """Whether ``pub/outgoing`` holds this very bundle: the same manifest and signature,
    byte for byte (the manifest binds the payload's size and sha256, which the payload here
    was checked against), and a payload of that size."""
    payload, *small = files
    try:
        if os.lstat(outgoing / payload.name).st_size != os.lstat(payload).st_size:
            return False
        for path in small:
            ours = _read_small(path, MAX_MANIFEST_BYTES)
            if ours != _read_small(outgoing / path.name, MAX_MANIFEST_BYTES):
                return False
    except (OSError, _Quarantine):
        return False
    return True


def _tell_sender(area: Path, bundle_id: str) -> None:
    """Leave ``ID.refused`` (empty) in the sender's area: its client's next send sees it in a
    listing, warns, stops counting the bundle's layers as delivered and deletes it. The
    reason stays with the operator, in the quarantine."""
    try:
        fd = os.open(
            area / (bundle_id + REFUSED_SUFFIX), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644
        )
        os.close(fd)
    except OSError as exc:  # the bundle is quarantined all the same; the sender is not told
        logger.warning("bundle %s: could not tell its sender: %s", bundle_id, exc.strerror)


def _read_small(path: Path, limit: int, *, why: str = "larger than any airgap writes") -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _Quarantine(f"{path.name}: {why}")
    return data


#: state/publishing-ID: a publish under way, naming the area its files come from.
_INTENT = "publishing-"


def _fsync(path: Path) -> None:
    """``path``'s bytes on disk, a file's or a folder's (its entries)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
