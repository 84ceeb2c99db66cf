"""Fetch through a real directory: every flip, truncation and extension is refused and
writes nothing; hostile archives are refused; exit codes are the documented ones."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airgap.client import transport as media
from airgap.client.fetch import Destination, Outcome, fetch_bundles, open_bundle, plaintext_of
from airgap.client.ftp import Refused
from airgap.client.ledger import Ledger
from airgap.client.send import send_files
from airgap.client.spool import Backoff, SpooledTransport
from airgap.client.transport import DirectoryTransport, published_ids
from airgap.shared import age, minisign
from airgap.shared.bundle import EncodeOptions, Encoder, sign_manifest
from airgap.shared.errors import (
    AirgapError,
    ManifestError,
    NoIdentityMatchError,
    PayloadSizeError,
    SegmentHashError,
    SignatureError,
    StorageError,
    TransferError,
    UnsafeArchiveError,
    UntrustedSignerError,
    UsageError,
    VerificationError,
)
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import MIN_SEGMENT, FileEntry
from tests.conftest import run_airgap

IDENTITY = age.X25519Identity.generate()
SIGNER = minisign.SecretKey.generate()
OPTIONS = EncodeOptions([IDENTITY.recipient], level=1, segment_size=MIN_SEGMENT)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle of three payload segments (incompressible content), made by send_files."""
    work = tmp_path_factory.mktemp("bundle")
    source = work / "source.bin"
    source.write_bytes(os.urandom(2 * MIN_SEGMENT + 1000))
    send_files([source], DirectoryTransport(work / "drop"), options=OPTIONS, key=SIGNER)
    return work / "drop"


def _fetch(
    drop: Path, out: Path, state: Path, transport: DirectoryTransport | None = None
) -> AirgapError | None:
    outcomes = fetch_bundles(
        transport or DirectoryTransport(drop),
        Destination(out),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=Ledger(state / "ledger.jsonl"),
    )
    assert len(outcomes) == 1
    return outcomes[0].error


def _through(
    transport: SpooledTransport,
    tmp_path: Path,
    *,
    consume: bool = False,
    identity: age.X25519Identity = IDENTITY,
) -> list[Outcome]:
    """fetch_bundles through ``transport`` into tmp_path/out, with a ledger of its own."""
    return fetch_bundles(
        transport,
        Destination(tmp_path / "out", consume=consume),
        identities=[identity],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "state" / "ledger.jsonl"),
    )


def _tampered(bundle_dir: Path, suffix: str, change: str, position: int) -> Path:
    work = Path(tempfile.mkdtemp())
    drop = work / "drop"
    shutil.copytree(bundle_dir, drop)
    target = next(p for p in drop.iterdir() if p.name.endswith(suffix))
    data = bytearray(target.read_bytes())
    position %= len(data)
    if change == "flip":
        data[position] ^= 0x01
    elif change == "truncate":
        del data[position:]
    else:
        data += b"\n" if position % 2 else b"\0" * (position % 7 + 1)
    target.write_bytes(bytes(data))
    return work


def _check_refused(work: Path, expected: tuple[type[Exception], ...]) -> None:
    try:
        error = _fetch(work / "drop", work / "out", work / "state")
        assert isinstance(error, expected), repr(error)
        assert not (work / "out").exists() or list((work / "out").iterdir()) == []
        assert Ledger(work / "state" / "ledger.jsonl").ids() == set()
    finally:
        shutil.rmtree(work)


def test_untouched_bundle_is_fetched(bundle_dir: Path, tmp_path: Path) -> None:
    assert _fetch(bundle_dir, tmp_path / "out", tmp_path / "state") is None
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["source.bin"]
    # fetched once: a second run does nothing, and writes nothing
    assert (
        fetch_bundles(
            DirectoryTransport(bundle_dir),
            Destination(tmp_path / "out"),
            identities=[IDENTITY],
            trusted=[SIGNER.public_key],
            ledger=Ledger(tmp_path / "state" / "ledger.jsonl"),
        )
        == []
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0), st.sampled_from(["flip", "truncate", "extend"]))
def test_payload_tampering_is_refused(bundle_dir: Path, position: int, change: str) -> None:
    work = _tampered(bundle_dir, ".tar.zst.age", change, position)
    expected = (SegmentHashError,) if change == "flip" else (PayloadSizeError,)
    _check_refused(work, expected)


@pytest.mark.parametrize("change", ["flip", "truncate", "extend"])
def test_every_manifest_byte_is_covered(bundle_dir: Path, change: str) -> None:
    size = next(bundle_dir.glob("*.manifest.json")).stat().st_size
    positions = range(size) if change == "flip" else range(0, size, 97)
    for position in positions:
        work = _tampered(bundle_dir, ".manifest.json", change, position)
        _check_refused(work, (SignatureError,))


@pytest.mark.parametrize("change", ["flip", "truncate", "extend"])
def test_every_signature_byte_outside_the_untrusted_comment_is_covered(
    bundle_dir: Path, change: str
) -> None:
    signature = next(bundle_dir.glob("*.minisig")).read_bytes()
    # minisign's untrusted comment text is, by design, not signed: flipping it changes nothing.
    comment_end = signature.index(b"\n")
    prefix = len(b"untrusted comment: ")
    for position in range(len(signature)):
        if change == "flip" and prefix <= position < comment_end:
            continue
        if change == "truncate" and position == len(signature) - 1:
            continue  # dropping only the final newline leaves the same signature
        work = _tampered(bundle_dir, ".minisig", change, position)
        _check_refused(work, (SignatureError, UntrustedSignerError))


def _hostile_bundle(drop: Path, members: list[tarfile.TarInfo], listed: list[FileEntry]) -> None:
    """A correctly signed bundle whose tar is hostile: the signer is trusted, the tar is not."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"A" * info.size) if info.isreg() else None)
    encoder = Encoder(OPTIONS)
    payload = encoder.update(raw.getvalue()) + encoder.finish()
    bundle_id = new_bundle_id()
    manifest = encoder.manifest(bundle_id, signer=SIGNER.public_key, files=listed)
    drop.mkdir(parents=True, exist_ok=True)
    (drop / manifest.payload.name).write_bytes(payload)
    data, signature = sign_manifest(manifest, SIGNER)
    (drop / f"{bundle_id}.manifest.json").write_bytes(data)
    (drop / f"{bundle_id}.manifest.json.minisig").write_text(signature)


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 3, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("../evil")], "plain file name"),
        ([_member("/etc/evil")], "plain file name"),
        ([_member("a/../../evil")], "plain file name"),
        ([_member("sub/x")], "plain file name"),
        ([_member("link", tarfile.SYMTYPE, link="/etc/passwd")], "link"),
        ([_member("link", tarfile.SYMTYPE, link="../../outside")], "link"),
        ([_member("hard", tarfile.LNKTYPE, link="/etc/passwd")], "link"),
        ([_member("dev", tarfile.CHRTYPE)], "not a regular file"),
        ([_member("fifo", tarfile.FIFOTYPE)], "not a regular file"),
        ([_member("unlisted")], "not listed"),
        ([_member("x"), _member("x")], "twice"),
    ],
)
def test_hostile_archives_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    aaa = hashlib.sha256(b"AAA").hexdigest()
    # The manifest lists only plain names (it refuses others itself, see below).
    listed = [
        FileEntry(m.name, 3, aaa) for m in members if m.name != "unlisted" and "/" not in m.name
    ]
    unique = list({e.name: e for e in listed}.values())
    _hostile_bundle(tmp_path / "drop", members, unique)
    error = _fetch(tmp_path / "drop", tmp_path / "out" / "inner", tmp_path / "state")
    assert isinstance(error, UnsafeArchiveError) and message in error.message
    assert list((tmp_path / "out" / "inner").iterdir()) == []
    assert not [p for p in tmp_path.rglob("*") if p.name in ("evil", "x") and "drop" not in p.parts]
    assert not Path("/etc/evil").exists()


def test_manifest_file_names_must_be_plain(tmp_path: Path) -> None:
    _hostile_bundle(tmp_path / "drop", [_member("x")], [FileEntry("../x", 3, "0" * 64)])
    error = _fetch(tmp_path / "drop", tmp_path / "out", tmp_path / "state")
    assert isinstance(error, ManifestError) and "plain file name" in error.message


def test_existing_files_are_never_replaced(bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "source.bin").write_text("mine")
    error = _fetch(bundle_dir, out, tmp_path / "state")
    assert error is not None and "already has source.bin" in error.message
    assert (out / "source.bin").read_text() == "mine"


def test_files_a_cut_run_placed_are_taken_as_they_are(bundle_dir: Path, tmp_path: Path) -> None:
    """A run killed after placing its files but before its ledger write: the rerun finds its
    own files, with the signed bytes, and ends the import; a link or other bytes still clash."""
    out = tmp_path / "out"
    assert _fetch(bundle_dir, out, tmp_path / "first") is None
    placed = (out / "source.bin").stat()
    assert _fetch(bundle_dir, out, tmp_path / "ledger-lost") is None
    assert (out / "source.bin").stat().st_ino == placed.st_ino
    (out / "source.bin").rename(tmp_path / "aside.bin")
    (out / "source.bin").symlink_to(tmp_path / "aside.bin")
    error = _fetch(bundle_dir, out, tmp_path / "third")
    assert error is not None and "already has source.bin" in error.message
    (out / "source.bin").unlink()
    os.link(tmp_path / "aside.bin", out / "source.bin")  # our bytes, but a second name
    error = _fetch(bundle_dir, out, tmp_path / "linked")
    assert error is not None and "already has source.bin" in error.message
    (out / "source.bin").unlink()
    other = bytearray((tmp_path / "aside.bin").read_bytes())
    other[-1] ^= 1  # the same size, other bytes
    (out / "source.bin").write_bytes(other)
    error = _fetch(bundle_dir, out, tmp_path / "fourth")
    assert error is not None and "already has source.bin" in error.message
    assert (out / "source.bin").read_bytes() == other


class _TakenMeanwhile(DirectoryTransport):
    """Another receiver's --consume (signature first) just before ``trigger`` is sized;
    with ``all_of_it`` False, only the payload goes and the bundle stays listed."""

    def __init__(self, root: Path, trigger: str, *, all_of_it: bool = True) -> None:
        super().__init__(root)
        self.trigger, self.all_of_it = trigger, all_of_it

    def size(self, name: str) -> int | None:
        if name.endswith(self.trigger) and self.trigger:
            self.trigger = ""
            names = sorted(self.list(), key=lambda n: not n.endswith(".minisig"))
            for gone in names if self.all_of_it else [n for n in names if n.endswith(".age")]:
                self.delete(gone)
        return super().size(name)


@pytest.mark.parametrize("trigger", [".minisig", ".json", ".age"])
def test_a_bundle_another_receiver_took_since_the_listing_is_gone_not_tampered(
    bundle_dir: Path, tmp_path: Path, trigger: str
) -> None:
    shutil.copytree(bundle_dir, tmp_path / "drop")
    transport = _TakenMeanwhile(tmp_path / "drop", trigger)
    error = _fetch(tmp_path / "drop", tmp_path / "out", tmp_path / "state", transport)
    assert isinstance(error, TransferError)
    assert "since it was listed" in error.message and error.exit_code == 4
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_payload_gone_from_a_bundle_still_listed_fails_its_check(
    bundle_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(bundle_dir, tmp_path / "drop")
    transport = _TakenMeanwhile(tmp_path / "drop", ".age", all_of_it=False)
    error = _fetch(tmp_path / "drop", tmp_path / "out", tmp_path / "state", transport)
    assert isinstance(error, PayloadSizeError) and "missing" in error.message


class _RefusedMidDownload(DirectoryTransport):
    """The payload's download refused (550) after its first read, as an FTP server does to
    a reconnecting download once another receiver's --consume took the bundle (all of it,
    or with ``all_of_it`` False, only the payload: the bundle stays listed)."""

    def __init__(self, root: Path, *, all_of_it: bool = True) -> None:
        super().__init__(root)
        self.all_of_it, self.reads = all_of_it, 0

    def reader(self, name: str, *, offset: int = 0) -> Any:
        if name.endswith(".age"):
            self.reads += 1
            if self.reads > 1:
                for gone in sorted(self.list(), key=lambda n: not n.endswith(".minisig")):
                    if self.all_of_it or gone == name:
                        self.delete(gone)
                raise Refused(f"downloading {name}: refused by the server (550 No such file)")
            return io.BufferedReader(_OneRead(super().reader(name, offset=offset)))
        return super().reader(name, offset=offset)


class _OneRead(io.RawIOBase):
    """A reader that ends (a cut connection) after its first read."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.done = inner, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.done:
            raise TransferError("connection reset")
        self.done = True
        got: int = self.inner.readinto(buffer)
        return got

    def close(self) -> None:
        self.inner.close()
        super().close()


@pytest.mark.parametrize("all_of_it", [True, False])
def test_a_payload_refused_mid_download_is_gone_when_its_bundle_is(
    bundle_dir: Path, tmp_path: Path, all_of_it: bool
) -> None:
    """Found in review: a receiver whose download was cut, then refused (another receiver's
    --consume took the bundle meanwhile), got a bare 550 with no hint, and its spool kept
    the part for good."""
    shutil.copytree(bundle_dir, tmp_path / "drop")
    source = _RefusedMidDownload(tmp_path / "drop", all_of_it=all_of_it)
    once = Backoff(attempts=2, first=0.01)
    transport = SpooledTransport(source, tmp_path / "spool", big=1, backoff=once)
    (outcome,) = _through(transport, tmp_path)
    assert isinstance(outcome.error, TransferError) and outcome.error.exit_code == 4
    assert source.reads == 2  # the part was spooled, then refused
    if all_of_it:
        assert "since it was listed" in outcome.error.message
        assert list((tmp_path / "spool").iterdir()) == []
    else:  # still listed: the refusal stands as it is, and the part stays for a rerun
        assert "550" in outcome.error.message
        assert list((tmp_path / "spool").iterdir()) != []


def test_a_spooled_part_of_a_bundle_no_longer_listed_is_dropped(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Found in review: a fetch killed mid-download, the bundle then consumed by another
    receiver: every later run said nothing to do, and the part stayed in the spool."""
    spool = tmp_path / "spool"
    spool.mkdir()
    gone = new_bundle_id()
    (spool / f"{gone}.tar.zst.age").write_bytes(b"x" * 1000)
    (spool / "unrelated").write_bytes(b"y")  # not a bundle's: not ours to judge
    transport = SpooledTransport(DirectoryTransport(bundle_dir), spool, big=1)
    (outcome,) = _through(transport, tmp_path)
    assert outcome.error is None
    assert sorted(p.name for p in spool.iterdir()) == ["unrelated"]


def test_cli_exit_codes(bundle_dir: Path, tmp_path: Path, keydir: Path) -> None:
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)  # a secret key others may read is refused
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    common = [
        "--from",
        drop,
        "-i",
        tmp_path / "id.txt",
        "--output-dir",
        tmp_path / "out",
        "--state-dir",
        tmp_path / "state",
    ]
    untrusted = run_airgap(["fetch", *common, "--trust", keydir / "signing.pub"])
    assert untrusted.returncode == 3 and "not trusted" in untrusted.stderr
    no_trust = run_airgap(["fetch", *common])
    assert no_trust.returncode == 2 and "airgap: hint:" in no_trust.stderr
    payload = next(drop.glob("*.age"))
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0x80  # in the last segment
    payload.write_bytes(bytes(data))
    tampered = run_airgap(["fetch", *common, "--trust", tmp_path / "trusted.pub"])
    assert tampered.returncode == 3
    assert "segment 2 does not match its signed sha256" in tampered.stderr
    assert "Traceback" not in tampered.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    missing = run_airgap(["fetch", *common, "--trust", tmp_path / "trusted.pub", "01NOPE"])
    assert missing.returncode == 2
    usage = run_airgap(["send", "--bogus"])
    assert usage.returncode == 2


def test_a_fifo_on_the_media_does_not_hang(bundle_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    manifest = next(drop.glob("*.manifest.json"))
    manifest.unlink()
    os.mkfifo(manifest)
    error = _fetch(drop, tmp_path / "out", tmp_path / "state")
    assert isinstance(error, ManifestError) and "missing" in error.message


def test_media_list_only_names_of_bundle_files_and_not_too_many(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Media holding many other files: those that cannot be a bundle's are passed over as the
    directory is scanned; names of bundle files past MAX_LISTING bytes are refused, as a drop
    box's listing is (the cap is lowered here: 16 MiB of names are ~400,000 files)."""
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    for i in range(20_000):
        (drop / f"photo-{i:05d}.jpg").touch()
    assert DirectoryTransport(drop).list() == sorted(p.name for p in bundle_dir.iterdir())
    for _ in range(200):
        (drop / f"{new_bundle_id()}.refused").touch()
    monkeypatch.setattr(media, "MAX_LISTING", 4096)
    with pytest.raises(TransferError, match="of names of bundle files"):
        DirectoryTransport(drop).list()


def test_refused_bundles_leave_no_thread_behind(bundle_dir: Path, tmp_path: Path) -> None:
    before = threading.active_count()
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    payload = next(drop.glob("*.age"))
    data = bytearray(payload.read_bytes())
    data[MIN_SEGMENT + 10] ^= 1  # segment 1: segment 0 is already streaming when it fails
    payload.write_bytes(bytes(data))
    error = _fetch(drop, tmp_path / "out", tmp_path / "state")
    assert isinstance(error, SegmentHashError)
    assert threading.active_count() == before


def test_a_highly_compressible_payload_decodes_in_bounded_pieces(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    with zeros.open("wb") as handle:
        handle.truncate(256 << 20)  # 256 MiB that compress to a few KiB
    send_files([zeros], DirectoryTransport(tmp_path / "drop"), options=OPTIONS, key=SIGNER)
    transport = DirectoryTransport(tmp_path / "drop")
    (bundle_id,) = published_ids(transport.list())
    manifest, _ = open_bundle(transport, bundle_id, [SIGNER.public_key])
    assert manifest.payload.size < 1 << 20
    largest = 0
    with closing(plaintext_of(transport, manifest, [IDENTITY])) as plaintext:
        for piece in plaintext:
            largest = max(largest, len(piece))
    assert largest <= 1 << 20


def test_a_manifest_tampered_once_is_not_kept_for_the_next_run(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Through a spool that takes every file of a byte or more (a drop box's spool takes
    those of 1 MiB or more, as a large manifest is): a manifest changed in transit is refused,
    and once the source holds the signed one again it is accepted. Only payloads are spooled;
    a manifest or signature never is, so none can poison a later run."""
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    transport = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1)
    (bundle_id,) = published_ids(transport.list())
    manifest_file = drop / f"{bundle_id}.manifest.json"
    signed = manifest_file.read_bytes()
    manifest_file.write_bytes(signed[:-2] + b" \n")  # the same size, as a flipped byte is
    with pytest.raises(SignatureError):
        open_bundle(transport, bundle_id, [SIGNER.public_key])
    manifest_file.write_bytes(signed)
    manifest, data = open_bundle(transport, bundle_id, [SIGNER.public_key])
    assert (manifest.id, data) == (bundle_id, signed)
    assert list((tmp_path / "spool").iterdir()) == []


def test_every_file_and_the_folder_are_durable_before_the_ledger_says_imported(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the ledger line must not lose what it records: the unpacked file's bytes
    and its name are fsynced before the import is recorded (a rerun would skip the bundle)."""
    events: list[tuple[str, int]] = []
    real_fsync, real_record = os.fsync, Ledger.record

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def record(self: Ledger, *args: object, **kwargs: object) -> None:
        events.append(("record", 0))
        real_record(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Ledger, "record", record)
    assert _fetch(bundle_dir, tmp_path / "out", tmp_path / "state") is None
    synced_before = {ino for kind, ino in events[: events.index(("record", 0))] if kind == "fsync"}
    assert (tmp_path / "out" / "source.bin").stat().st_ino in synced_before
    assert (tmp_path / "out").stat().st_ino in synced_before


def test_keep_copies_the_bundle_as_verified(bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)  # a secret key others may read is refused
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    (tmp_path / "kept").mkdir()
    keys = ["-i", tmp_path / "id.txt", "--trust", tmp_path / "trusted.pub"]
    into = ["--output-dir", tmp_path / "out", "--state-dir", tmp_path / "state"]
    fetched = run_airgap(["fetch", "--from", bundle_dir, *keys, "--keep", tmp_path / "kept", *into])
    assert fetched.returncode == 0, fetched.stderr
    kept = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}
    assert kept == {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    verified = run_airgap(["verify", "--from", tmp_path / "kept", *keys])
    assert verified.returncode == 0, verified.stderr
    # Kept where it came from, with --consume: the "copy" was deleted with the source (review).
    into = ["--output-dir", tmp_path / "again", "--state-dir", tmp_path / "fresh", "--consume"]
    onto = run_airgap(["fetch", "--from", bundle_dir, *keys, "--keep", f"{bundle_dir}/.", *into])
    assert onto.returncode == 2 and "is the folder fetched from" in onto.stderr, onto.stderr
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(kept)


class _SecondReadDiffers(DirectoryTransport):
    """Media that answer a second read of the payload otherwise (a unit-test stand-in)."""

    reads = 0

    def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        if not name.endswith(".age"):
            return super().reader(name, offset=offset)
        self.reads += 1
        with super().reader(name, offset=offset) as source:
            data = bytearray(source.read())
        if self.reads > 1:
            data[-1] ^= 1
        return io.BytesIO(bytes(data))


def test_keep_refuses_a_source_that_changed_since_it_was_verified(
    bundle_dir: Path, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    (outcome,) = fetch_bundles(
        _SecondReadDiffers(bundle_dir),
        Destination(tmp_path / "out", keep=tmp_path / "kept"),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=ledger,
    )
    assert isinstance(outcome.error, VerificationError)
    assert outcome.imported == (str(tmp_path / "out" / "source.bin"),)  # --json says so
    assert "imported, but not kept in" in outcome.error.message
    assert "no longer holds the verified payload" in outcome.error.message
    assert outcome.error.hint is not None and "copy its 3 files to" in outcome.error.hint
    assert not (tmp_path / "kept").exists() or list((tmp_path / "kept").iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["source.bin"]
    assert len(ledger.ids()) == 1  # imported: a second fetch does not unpack it again


class _Endless(io.RawIOBase):
    """The payload, then zeros: 32 MiB here, without end on a hostile server."""

    def __init__(self, data: bytes) -> None:
        self.data, self.served = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self.data) + (32 << 20) - self.served)
        head = self.data[self.served : self.served + count]
        view[: len(head)] = head
        view[len(head) : count] = bytes(count - len(head))
        self.served += count
        return count


class _CutShort(io.BufferedReader):
    """A download that, closed before its end, says what an FTP server then says."""

    def close(self) -> None:
        whole = self.raw.served >= len(self.raw.data) + (32 << 20)
        super().close()
        if not whole:
            raise TransferError("downloading x: 426 Transfer aborted.")


class _SecondReadGoesOn(DirectoryTransport):
    """Media whose second read of the payload goes on past its end (and, closed before its
    end, complain of a transfer cut short, as the FTP transport's reader does)."""

    reads = 0
    endless: _Endless | None = None

    def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
        if not name.endswith(".age"):
            return super().reader(name, offset=offset)
        self.reads += 1
        if self.reads == 1:
            return super().reader(name, offset=offset)
        with super().reader(name, offset=offset) as source:
            self.endless = _Endless(source.read())
        return _CutShort(self.endless)


def test_keep_reads_no_further_than_the_signed_size(bundle_dir: Path, tmp_path: Path) -> None:
    """Found in review: the copy read on until the source ended, and only then compared sizes,
    so a server that never ends its payload filled the disk under --keep."""
    source = _SecondReadGoesOn(bundle_dir)
    (outcome,) = fetch_bundles(
        source,
        Destination(tmp_path / "out", keep=tmp_path / "kept"),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "ledger.jsonl"),
    )
    assert isinstance(outcome.error, VerificationError)
    assert "no longer holds the verified payload" in outcome.error.message
    assert source.endless is not None
    payload = len(source.endless.data)
    assert payload < source.endless.served <= payload + 1 + io.DEFAULT_BUFFER_SIZE
    assert not (tmp_path / "kept").exists() or list((tmp_path / "kept").iterdir()) == []


def test_the_ledger_knows_the_newest_bundle_of_each_ref(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "imported.jsonl")
    ledger.record("01AAAAAAAAAAAAAAAAAAAAAAAB", manifest_sha256="0", where="d", refs=["app:1"])
    ledger.record("01AAAAAAAAAAAAAAAAAAAAAAAC", manifest_sha256="0", where="d", refs=["app:1", "b"])
    ledger.record("01AAAAAAAAAAAAAAAAAAAAAAAA", manifest_sha256="0", where="d", refs=["b", "c"])
    with ledger.path.open("a") as handle:  # a record from before refs were kept, and a torn one
        handle.write('{"id": "01AAAAAAAAAAAAAAAAAAAAAAAZ", "where": "d"}\n{"id": "01B')
    assert ledger.read()[1] == {
        "app:1": "01AAAAAAAAAAAAAAAAAAAAAAAC",
        "b": "01AAAAAAAAAAAAAAAAAAAAAAAC",
        "c": "01AAAAAAAAAAAAAAAAAAAAAAAA",
    }
    assert len(ledger.ids()) == 4


def test_a_files_bundle_needs_no_docker_engine(bundle_dir: Path, tmp_path: Path) -> None:
    """Found in review: every bundle asked the engine where its held tags were, so a receiver
    of files alone, without an engine, could fetch nothing (exit 5)."""
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    args = ["fetch", "--from", bundle_dir, "-i", tmp_path / "id.txt"]
    args += ["--trust", tmp_path / "trusted.pub", "--output-dir", tmp_path / "out"]
    args += ["--state-dir", tmp_path / "state"]
    fetched = run_airgap(args, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert fetched.returncode == 0, fetched.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["source.bin"]


def test_a_bundle_for_other_recipients_is_refused_before_its_payload_is_read(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Its signed manifest names who can open it: a receiver not among them downloads no
    segment (each run used to spool 16 MiB of it, and keep it)."""
    transport = SpooledTransport(DirectoryTransport(bundle_dir), tmp_path / "spool", big=1)
    outcomes = _through(transport, tmp_path, identity=age.X25519Identity.generate())
    (outcome,) = outcomes
    assert isinstance(outcome.error, NoIdentityMatchError)
    assert "nothing was downloaded" in outcome.error.message
    assert transport.received == 0 and list((tmp_path / "spool").iterdir()) == []
    # What `airgap verify --server` spooled of it (found in review: kept for good) goes.
    payload = next(bundle_dir.glob("*.age"))
    (tmp_path / "spool" / payload.name).write_bytes(payload.read_bytes())
    again = SpooledTransport(DirectoryTransport(bundle_dir), tmp_path / "spool", big=1)
    (outcome,) = fetch_bundles(
        again,
        Destination(tmp_path / "out"),
        identities=[age.X25519Identity.generate()],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "state2" / "ledger.jsonl"),
    )
    assert isinstance(outcome.error, NoIdentityMatchError)
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_consume_that_fails_leaves_the_import_whole_and_no_spooled_payload(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the bundle was reported fetched and then failed, and its payload stayed
    in the spool for good (the ledger keeps it from being fetched again)."""
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)

    def refused(self: DirectoryTransport, name: str) -> None:
        raise TransferError(f"550 {name}: permission denied")

    monkeypatch.setattr(DirectoryTransport, "delete", refused)
    once = Backoff(attempts=1)
    transport = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1, backoff=once)
    outcomes = _through(transport, tmp_path, consume=True)
    (outcome,) = outcomes
    assert outcome.imported == (str(tmp_path / "out" / "source.bin"),)
    assert isinstance(outcome.error, TransferError)
    assert outcome.error.message.startswith("imported, but not deleted from the source")
    assert list((tmp_path / "spool").iterdir()) == []
    assert len(list(drop.iterdir())) == 3  # nothing deleted
    again = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1, backoff=once)
    assert _through(again, tmp_path) == []  # told once: not asked again on every run


def test_a_payload_grown_after_its_size_was_checked_is_read_to_the_signed_size(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Found in review: the spooled reader asked SIZE again and spooled what that said; a
    larger second answer made the run fail, and the next take the longer spool for a stale
    one and download every verified byte again. The signed size is what is read."""
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    payload = next(drop.glob("*.age"))

    class Growing(DirectoryTransport):
        def size(self, name: str) -> int | None:
            found = super().size(name)
            if name == payload.name:
                with payload.open("ab") as grown:  # once SIZE was answered
                    grown.write(b"x" * 1000)
            return found

    transport = SpooledTransport(Growing(drop), tmp_path / "spool", big=1)
    outcomes = _through(transport, tmp_path)
    assert [o.error for o in outcomes] == [None]
    assert (tmp_path / "out" / "source.bin").read_bytes() == (
        bundle_dir.parent / "source.bin"
    ).read_bytes()


def test_a_small_payload_cut_mid_read_is_read_again(bundle_dir: Path, tmp_path: Path) -> None:
    """Found in review: a payload under 1 MiB is not spooled, and only the opening of its
    download was tried again: a connection that broke mid-read ended the fetch (exit 4)."""
    payload = next(bundle_dir.glob("*.age")).name
    cuts: list[str] = []

    class Cut(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            cuts.append(payload)
            raise TransferError("426 Connection closed; transfer aborted")

    class Flaky(DirectoryTransport):
        def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
            if name == payload and not cuts:
                return io.BufferedReader(Cut())
            return super().reader(name, offset=offset)

    once = Backoff(attempts=2, first=0.01)
    transport = SpooledTransport(Flaky(bundle_dir), tmp_path / "spool", backoff=once)
    outcomes = _through(transport, tmp_path)
    assert [o.error for o in outcomes] == [None] and cuts == [payload]


def test_a_small_payload_that_ends_short_is_read_again(bundle_dir: Path, tmp_path: Path) -> None:
    """Found in review: a payload under 1 MiB whose download ended early (a server closing
    the data connection with 226) was taken as it came, and failed its check (exit 3)."""
    payload = next(bundle_dir.glob("*.age")).name
    short: list[str] = []

    class Short(DirectoryTransport):
        def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
            if name == payload and not short:
                short.append(name)
                return io.BufferedReader(io.BytesIO((bundle_dir / name).read_bytes()[:500]))
            return super().reader(name, offset=offset)

    once = Backoff(attempts=2, first=0.01)
    transport = SpooledTransport(Short(bundle_dir), tmp_path / "spool", backoff=once)
    outcomes = _through(transport, tmp_path)
    assert [o.error for o in outcomes] == [None] and short == [payload]


def test_keep_copies_the_spooled_payload_whatever_a_second_size_says(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Found in review: --keep asked the payload's SIZE again; a smaller answer dropped the
    verified spool, and the copy failed."""
    payload = next(bundle_dir.glob("*.age")).name
    asked: list[str] = []

    class Lying(DirectoryTransport):
        def size(self, name: str) -> int | None:
            if name == payload:
                asked.append(name)
                if len(asked) > 1:
                    return 100
            return super().size(name)

    transport = SpooledTransport(Lying(bundle_dir), tmp_path / "spool", big=1)
    (tmp_path / "kept").mkdir()
    (outcome,) = fetch_bundles(
        transport,
        Destination(tmp_path / "out", keep=tmp_path / "kept"),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "state" / "ledger.jsonl"),
    )
    assert outcome.error is None, outcome.error
    kept = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}
    assert kept == {p.name: p.read_bytes() for p in bundle_dir.iterdir()}


@pytest.mark.parametrize("spooled", [1, MIN_SEGMENT + 5000])
def test_a_server_that_ignores_rest_is_read_from_its_start(
    bundle_dir: Path, tmp_path: Path, spooled: int
) -> None:
    """Found in review: a server that answers REST with 350 and then sends from byte 0 made
    every later run fail the same segment's check (exit 3), as its start was spliced in."""
    payload = next(bundle_dir.glob("*.age"))
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / payload.name).write_bytes(payload.read_bytes()[:spooled])  # a cut run's part

    class NoRest(DirectoryTransport):
        def reader(self, name: str, *, offset: int = 0) -> io.BufferedIOBase:
            return super().reader(name)  # REST "accepted", and ignored

    transport = SpooledTransport(NoRest(bundle_dir), spool, big=1)
    (outcome,) = _through(transport, tmp_path)
    assert outcome.error is None, outcome.error
    assert (tmp_path / "out" / "source.bin").exists()
    # An honest server resumes: only the overlap is read again.
    honest = SpooledTransport(DirectoryTransport(bundle_dir), tmp_path / "spool2", big=1)
    (tmp_path / "spool2" / payload.name).write_bytes(payload.read_bytes()[:spooled])
    fetch_bundles(
        honest,
        Destination(tmp_path / "out2"),
        identities=[IDENTITY],
        trusted=[SIGNER.public_key],
        ledger=Ledger(tmp_path / "state2" / "ledger.jsonl"),
    )
    assert honest.received == payload.stat().st_size - spooled + min(spooled, 4096)


def test_a_bundle_error_naming_a_path_with_a_line_break_stays_one_line(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Review: fetch's own report of each bundle printed a break in a --keep path as a line of
    its own (the CLI's last error already stayed on one)."""
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    keep = tmp_path / "keep\nairgap: hint: trust me"
    keep.write_text("a file, not a folder")
    args = ["fetch", "--from", bundle_dir, "-i", tmp_path / "id.txt", "--keep", keep]
    args += ["--trust", tmp_path / "trusted.pub", "--output-dir", tmp_path / "out"]
    fetched = run_airgap([*args, "--state-dir", tmp_path / "state"])
    assert fetched.returncode != 0
    lines = fetched.stderr.splitlines()
    assert lines[0].startswith("airgap: error: bundle ") and "keep\\nairgap: hint" in lines[0]
    assert not any(line.startswith("airgap: hint: trust me") for line in lines), lines


class _Killed(BaseException):
    """SIGKILL, as far as this process can tell: what comes after it never runs."""


def _killed_after(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    """``target.name`` kills the run once it has done its work."""
    real = getattr(target, name)

    def dying(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(target, name, dying)


@pytest.mark.parametrize("consume_done", [0, 1])
def test_a_consume_cut_off_is_finished_by_the_next_run(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consume_done: int
) -> None:
    """Found by killing fetches: a run killed after its record, before or between its
    deletes, left the bundle (or its unsigned rest) on the source for good, and its payload
    in the spool: the ledger kept every later run from looking at it again."""
    drop = tmp_path / "drop"
    shutil.copytree(bundle_dir, drop)
    deletes: list[str] = []
    real_delete = DirectoryTransport.delete

    def delete(self: DirectoryTransport, name: str) -> None:
        if len(deletes) == consume_done:
            raise _Killed
        deletes.append(name)
        real_delete(self, name)

    with monkeypatch.context() as killing:
        killing.setattr(DirectoryTransport, "delete", delete)
        transport = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1)
        with pytest.raises(_Killed):
            _through(transport, tmp_path, consume=True)
    assert deletes == [n.name for n in bundle_dir.glob("*.minisig")][:consume_done]
    transport = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1)
    assert _through(transport, tmp_path) == []  # imported already; its deletes finished
    assert list(drop.iterdir()) == []
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_keep_cut_off_is_made_by_the_next_run(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by killing fetches: a run killed while copying to --keep recorded the bundle
    first, so the copy was never made (a .part left) and no run said so. The record now
    follows the copy: the next run imports the bundle again, from the spool, and keeps it."""
    keep = tmp_path / "keep"
    spool = tmp_path / "spool"
    real_put = media.put_small

    def cut(transport: Any, name: str, data: bytes) -> None:
        if name.endswith(".minisig"):
            raise _Killed  # the payload kept, the signature not yet
        real_put(transport, name, data)

    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")

    def run() -> list[Outcome]:
        return fetch_bundles(
            SpooledTransport(DirectoryTransport(bundle_dir), spool, big=1),
            Destination(tmp_path / "out", keep=keep),
            identities=[IDENTITY],
            trusted=[SIGNER.public_key],
            ledger=ledger,
        )

    with monkeypatch.context() as killing:
        killing.setattr("airgap.client.fetch.put_small", cut)
        with pytest.raises(_Killed):
            run()
    assert ledger.ids() == set() and not list(keep.glob("*.minisig"))
    (outcome,) = run()
    assert outcome.error is None
    assert sorted(p.name for p in keep.iterdir()) == sorted(p.name for p in bundle_dir.iterdir())
    for kept in keep.iterdir():
        assert kept.read_bytes() == (bundle_dir / kept.name).read_bytes()
    assert list(spool.iterdir()) == [] and run() == []


def test_a_spool_left_by_a_run_killed_after_its_record_is_dropped(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def spooled() -> SpooledTransport:
        return SpooledTransport(DirectoryTransport(bundle_dir), tmp_path / "spool", big=1)

    with monkeypatch.context() as killing:
        _killed_after(killing, Ledger, "record")
        with pytest.raises(_Killed):
            _through(spooled(), tmp_path)
    assert list((tmp_path / "spool").iterdir())
    assert _through(spooled(), tmp_path) == []
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_consume_is_finished_on_its_own_source_only(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the ledger noted --consume without the source, so a later fetch from a --keep
    archive of the same bundle deleted the archive's copy."""
    drop, archive = tmp_path / "drop", tmp_path / "archive"
    shutil.copytree(bundle_dir, drop)
    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")

    def run(source: Path, *, keep: Path | None = None, consume: bool = False) -> list[Outcome]:
        return fetch_bundles(
            DirectoryTransport(source),
            Destination(tmp_path / "out", keep=keep, consume=consume),
            identities=[IDENTITY],
            trusted=[SIGNER.public_key],
            ledger=ledger,
        )

    with monkeypatch.context() as killing:
        killing.setattr(DirectoryTransport, "delete", lambda self, name: _raise(_Killed()))
        with pytest.raises(_Killed):
            run(drop, keep=archive, consume=True)
    assert run(archive) == []
    assert len(list(archive.iterdir())) == 3  # a copy, not the source consumed
    assert run(drop) == []
    assert list(drop.iterdir()) == []  # the cut consume, finished where it was asked
    shutil.copytree(archive, drop, dirs_exist_ok=True)  # the same bundle offered again
    assert run(drop) == [] and len(list(drop.iterdir())) == 3  # finished once, not for ever


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_bundle_gone_since_the_listing_is_no_candidate_for_a_ref(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Review: fetching by image ref failed whole when any bundle went since the listing."""
    shutil.copytree(bundle_dir, tmp_path / "drop")
    with pytest.raises(UsageError, match="no published bundle app:1"):
        fetch_bundles(
            _TakenMeanwhile(tmp_path / "drop", ".minisig"),
            Destination(tmp_path / "out"),
            identities=[IDENTITY],
            trusted=[SIGNER.public_key],
            ledger=Ledger(tmp_path / "state" / "ledger.jsonl"),
            only=["app:1"],
        )


def test_several_bundles_go_on_past_a_failure_and_the_first_failure_sets_the_exit_code(
    tmp_path: Path,
) -> None:
    """As the README's exit codes say: each bundle is tried, in the order printed, and the code
    is the first failed one's (here 1, a file already there, before 3, a flipped byte)."""
    drop = tmp_path / "drop"
    names = ("taken.txt", "fine.txt", "flipped.txt")
    for name in names:  # bundle ids grow with time: this is the order of the listing
        (tmp_path / name).write_text(name)
        send_files([tmp_path / name], DirectoryTransport(drop), options=OPTIONS, key=SIGNER)
        time.sleep(0.01)  # a new millisecond: the next id sorts after this one
    flipped = max(drop.glob("*.tar.zst.age"))
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x01
    flipped.write_bytes(bytes(data))
    (tmp_path / "id.txt").write_text(IDENTITY.encode() + "\n")
    (tmp_path / "id.txt").chmod(0o600)
    (tmp_path / "trusted.pub").write_text(SIGNER.public_key.encode())
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.txt").write_text("mine")
    args: list[str | Path] = ["fetch", "--from", drop, "-i", tmp_path / "id.txt"]
    args += ["--trust", tmp_path / "trusted.pub", "--output-dir", out, "--state-dir", tmp_path]
    fetched = run_airgap(args)
    assert fetched.returncode == 1, fetched.stderr
    said = fetched.stderr
    assert said.index("already has taken.txt") < said.index("fetched ") < said.index("segment")
    assert (out / "fine.txt").read_text() == "fine.txt"
    assert (out / "taken.txt").read_text() == "mine" and not (out / "flipped.txt").exists()


def test_an_image_asked_for_comes_from_the_newest_bundle_for_us(tmp_path: Path) -> None:
    """Found in review: `fetch app:1` took the newest bundle carrying app:1 on a shared
    medium, one encrypted to another receiver, and failed, while an older one for us was
    there. (The bundles' content is never read: the choice is by signed manifest.)"""
    from airgap.client.fetch import _selected
    from airgap.client.send import send_stream
    from airgap.shared.manifest import ImageEntry

    key = minisign.SecretKey.generate()
    ours, theirs = age.X25519Identity.generate(), age.X25519Identity.generate()
    drop = DirectoryTransport(tmp_path / "drop")
    entry = ImageEntry("sha256:" + "ab" * 32, ("app:1",), ())
    made = []
    for who in (ours, theirs):  # ids sort by time: the later one is the newer
        time.sleep(0.01)
        options = EncodeOptions([who.recipient])
        made.append(send_stream([b"x"], drop, options=options, key=key, images=[entry]))
    published = published_ids(drop.list())
    assert published == [m.id for m in made]
    trusted = [key.public_key]
    assert _selected(drop, published, ["app:1"], trusted, identities=[ours]) == [made[0].id]
    assert _selected(drop, published, ["app:1"], trusted, identities=[theirs]) == [made[1].id]
    # For nobody here: the newest, whose fetch then says whom it is for.
    other = age.X25519Identity.generate()
    assert _selected(drop, published, ["app:1"], trusted, identities=[other]) == [made[1].id]


def test_an_untagged_image_is_asked_for_by_the_digest_ls_shows(tmp_path: Path) -> None:
    """Found in review: an image sent by id arrives untagged, and `airgap ls` shows it by its
    config digest, but `fetch sha256:...` took that digest for a tag and found no bundle."""
    from airgap.client.cli.transfer import _untagged
    from airgap.client.fetch import _selected
    from airgap.client.send import send_stream
    from airgap.shared.manifest import ImageEntry

    key = minisign.SecretKey.generate()
    drop = DirectoryTransport(tmp_path / "drop")
    config, other = "sha256:" + "c0" * 32, "sha256:" + "c1" * 32
    # A containerd store's id (a manifest digest) with the config every engine knows.
    untagged = ImageEntry("sha256:" + "1d" * 32, (), (), config=config)
    tagged = ImageEntry(other, ("app:1",), ())
    made = []
    for images in ([untagged], [untagged], [tagged]):
        time.sleep(0.01)  # ids sort by time: the later one is the newer
        made.append(send_stream([b"x"], drop, options=OPTIONS, key=key, images=images))
    published, trusted = published_ids(drop.list()), [key.public_key]
    assert _untagged(made[1]) == [config]  # what ls and fetch show
    assert _selected(drop, published, [config], trusted) == [made[1].id]  # the newest
    assert _selected(drop, published, [untagged.id], trusted) == [made[1].id]
    assert _selected(drop, published, [config], trusted, frozenset({made[1].id})) == []
    assert _selected(drop, published, [other], trusted) == [made[2].id]  # tagged, by digest
    assert _selected(drop, published, ["app:1"], trusted) == [made[2].id]
    with pytest.raises(UsageError, match="no published bundle sha256:"):
        _selected(drop, published, ["sha256:" + "0" * 64], trusted)


class _NoRoomForManifests(DirectoryTransport):
    """A medium that fills up as the manifest is written, after the payload's rename."""

    def writer(self, name: str, *, offset: int = 0) -> Any:
        if ".manifest.json" in name:
            raise StorageError(f"writing {name}: no space left on {self.root}")
        return super().writer(name, offset=offset)


def test_a_send_failing_after_its_payload_is_placed_leaves_nothing_on_the_medium(
    tmp_path: Path,
) -> None:
    """Found in review: a medium full as the manifest was written kept the whole renamed
    payload, with no manifest, for good: only the partial was deleted."""
    (tmp_path / "f.txt").write_text("content")
    drop = _NoRoomForManifests(tmp_path / "drop")
    with pytest.raises(StorageError, match="no space left"):
        send_files(
            [tmp_path / "f.txt"],
            drop,
            options=EncodeOptions([]),
            key=minisign.SecretKey.generate(),
        )
    assert list((tmp_path / "drop").iterdir()) == []
