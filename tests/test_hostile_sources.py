"""What a hostile source, a trusted signer's slip or a neighbour in a shared output directory
may try on fetch, each caught by a check no other test held (found by mutating each check)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap.client.fetch import Destination, Outcome, fetch_bundles
from airgap.client.ledger import Ledger
from airgap.client.send import send_files
from airgap.client.transport import (
    MANIFEST_SUFFIX,
    SIGNATURE_SUFFIX,
    DirectoryTransport,
    published_ids,
)
from airgap.shared import minisign
from airgap.shared.bundle import open_manifest, sign_manifest
from airgap.shared.errors import (
    PayloadSizeError,
    SignatureError,
    StorageError,
    UnsafeArchiveError,
)
from airgap.shared.ids import new_bundle_id
from airgap.shared.manifest import FileEntry
from tests.test_bundle import SIGNER, _bundle
from tests.test_fetch import SIGNER as FETCH_SIGNER


def test_a_manifest_naming_another_signer_is_refused() -> None:
    """Signed by a trusted key, but its ``signer`` field names another key id."""
    manifest, _, _, _ = _bundle(b"x")
    other = minisign.SecretKey.generate().public_key.key_id_hex
    assert other != SIGNER.public_key.key_id_hex
    data, signature = sign_manifest(dataclasses.replace(manifest, signer=other), SIGNER)
    with pytest.raises(SignatureError, match="another signer"):
        open_manifest(data, signature.encode(), [SIGNER.public_key])


def test_a_legacy_signature_of_a_manifest_is_refused() -> None:
    """A legacy ("Ed", not prehashed) signature by the trusted key, valid as minisign sees it."""
    manifest, _, data, _ = _bundle(b"x")
    private = Ed25519PrivateKey.from_private_bytes(SIGNER.seed)
    raw = private.sign(data)
    comment = manifest.trusted_comment()
    legacy = minisign.Signature(
        key_id=SIGNER.key_id,
        algorithm=minisign.SIG_ALG,
        signature=raw,
        trusted_comment=comment,
        global_signature=private.sign(raw + comment.encode()),
        untrusted_comment="legacy",
    ).encode()
    minisign.verify([SIGNER.public_key], data, legacy)  # a good signature as such
    with pytest.raises(SignatureError, match="prehashed"):
        open_manifest(data, legacy.encode(), [SIGNER.public_key])


def test_a_bundle_published_under_another_id_is_refused(tmp_path: Path) -> None:
    """A drop box that offers a genuine signed bundle under another (newer) id, a replay of an
    imported bundle under a name never imported: its signed comment names its own id."""
    from tests.test_fetch import IDENTITY, OPTIONS

    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(1000))
    drop = tmp_path / "drop"
    send_files([source], DirectoryTransport(drop), options=OPTIONS, key=FETCH_SIGNER)
    (original,) = published_ids([p.name for p in drop.iterdir()])
    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")

    def fetch(out: str) -> list[Outcome]:
        return fetch_bundles(
            DirectoryTransport(drop),
            Destination(tmp_path / out),
            identities=[IDENTITY],
            trusted=[FETCH_SIGNER.public_key],
            ledger=ledger,
        )

    assert [o.error for o in fetch("first")] == [None]
    renamed = new_bundle_id()
    for suffix in (MANIFEST_SUFFIX, SIGNATURE_SUFFIX):
        (drop / (original + suffix)).rename(drop / (renamed + suffix))
    (outcome,) = fetch("second")
    assert isinstance(outcome.error, SignatureError), outcome
    assert outcome.error.message == "signature: signed for another bundle"
    assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())
    assert ledger.ids() == {original}


def test_a_member_of_another_size_than_listed_is_refused(tmp_path: Path) -> None:
    """A signed archive whose member is longer than the manifest lists it: nothing written."""
    from tests.test_fetch import _fetch, _hostile_bundle, _member

    listed = [FileEntry("x", 3, hashlib.sha256(b"AAA").hexdigest())]
    _hostile_bundle(tmp_path / "drop", [_member("x", size=4)], listed)
    error = _fetch(tmp_path / "drop", tmp_path / "out", tmp_path / "state")
    assert isinstance(error, UnsafeArchiveError) and "size" in error.message, error
    assert list((tmp_path / "out").iterdir()) == []


def _one_file_bundle(tmp_path: Path) -> tuple[Path, bytes]:
    from tests.test_fetch import OPTIONS

    content = os.urandom(1000)
    (tmp_path / "source.bin").write_bytes(content)
    drop = tmp_path / "drop"
    send_files(
        [tmp_path / "source.bin"], DirectoryTransport(drop), options=OPTIONS, key=FETCH_SIGNER
    )
    return drop, content


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user takes root")
def test_a_file_of_another_user_with_the_signed_bytes_still_clashes(tmp_path: Path) -> None:
    """A shared output directory (1777): another user plants the member's very bytes under its
    name. Taken as placed by us, the import would leave that user's file, which it may still
    write, as what we imported."""
    from tests.test_fetch import _fetch

    drop, content = _one_file_bundle(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    planted = out / "source.bin"
    planted.write_bytes(content)
    os.chown(planted, 65534, 65534)
    error = _fetch(drop, out, tmp_path / "state")
    assert error is not None and "already has source.bin" in error.message
    assert os.lstat(planted).st_uid == 65534


def test_an_archive_lacking_a_listed_member_is_refused(tmp_path: Path) -> None:
    from tests.test_fetch import _fetch, _hostile_bundle, _member

    aaa = hashlib.sha256(b"AAA").hexdigest()
    _hostile_bundle(
        tmp_path / "drop", [_member("x")], [FileEntry("x", 3, aaa), FileEntry("y", 3, aaa)]
    )
    error = _fetch(tmp_path / "drop", tmp_path / "out", tmp_path / "state")
    assert isinstance(error, UnsafeArchiveError) and "lacks y" in error.message, error
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_placed_before_and_swapped_while_unpacking_fails_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member an earlier (cut) run placed is left as it is; replaced by someone else while
    this run unpacks (a shared output directory), the import must not count as done."""
    from airgap.client import extract
    from tests.test_fetch import _fetch

    drop, _ = _one_file_bundle(tmp_path)
    out = tmp_path / "out"
    assert _fetch(drop, out, tmp_path / "first") is None  # placed; the next ledger is new
    unpack = extract._unpack

    def swapping(*args: object, **kwargs: object) -> None:
        unpack(*args, **kwargs)  # type: ignore[arg-type]
        (out / "source.bin").unlink()
        (out / "source.bin").write_bytes(b"someone else's")

    monkeypatch.setattr(extract, "_unpack", swapping)
    error = _fetch(drop, out, tmp_path / "second")
    assert error is not None and "changed while fetching" in error.message, error
    assert Ledger(tmp_path / "second" / "ledger.jsonl").ids() == set()


def test_a_payload_longer_than_signed_is_refused_through_a_spool(tmp_path: Path) -> None:
    """A spooled download reads no more than the signed size, so only the size asked first
    tells a payload with bytes appended."""
    from airgap.client.spool import SpooledTransport
    from tests.test_fetch import _through

    drop, _ = _one_file_bundle(tmp_path)
    payload = next(p for p in drop.iterdir() if p.name.endswith(".age"))
    payload.write_bytes(payload.read_bytes() + b"\0")
    transport = SpooledTransport(DirectoryTransport(drop), tmp_path / "spool", big=1)
    (outcome,) = _through(transport, tmp_path)
    assert isinstance(outcome.error, PayloadSizeError), outcome
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_untrusted_signer_is_refused_before_its_manifest_is_read(tmp_path: Path) -> None:
    """A hostile source may offer manifests of 32 MiB: one no trusted key signed is never read."""
    from airgap.client.fetch import open_bundle
    from airgap.shared.errors import UntrustedSignerError

    drop, _ = _one_file_bundle(tmp_path)
    (bundle_id,) = published_ids([p.name for p in drop.iterdir()])
    read: list[str] = []

    class Recording(DirectoryTransport):
        def reader(self, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            read.append(name)
            return super().reader(name, *args, **kwargs)  # type: ignore[arg-type]

    stranger = minisign.SecretKey.generate().public_key
    with pytest.raises(UntrustedSignerError):
        open_bundle(Recording(drop), bundle_id, [stranger])
    assert read == [bundle_id + SIGNATURE_SUFFIX]


def test_a_signature_copied_beside_another_name_is_refused_before_its_manifest_is_read(
    tmp_path: Path,
) -> None:
    """Key ids are public: without the check, a medium of many copies of one genuine
    signature, each beside a manifest of 32 MiB, would have each manifest read."""
    from airgap.client.fetch import open_bundle

    drop, _ = _one_file_bundle(tmp_path)
    (bundle_id,) = published_ids([p.name for p in drop.iterdir()])
    copy = new_bundle_id()
    (drop / (copy + SIGNATURE_SUFFIX)).write_bytes(
        (drop / (bundle_id + SIGNATURE_SUFFIX)).read_bytes()
    )
    with (drop / (copy + MANIFEST_SUFFIX)).open("wb") as manifest:
        manifest.truncate(32 << 20)
    read: list[str] = []

    class Recording(DirectoryTransport):
        def reader(self, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            read.append(name)
            return super().reader(name, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(SignatureError, match="signed for another bundle"):
        open_bundle(Recording(drop), copy, [FETCH_SIGNER.public_key])
    assert read == [copy + SIGNATURE_SUFFIX]
    assert open_bundle(Recording(drop), bundle_id, [FETCH_SIGNER.public_key])[0].id == bundle_id


def test_an_unknown_encryption_scheme_is_refused() -> None:
    """Parsed as age-v1 otherwise: the manifest's bytes and what airgap reads would differ."""
    import json

    from airgap.shared.errors import ManifestError as Refused
    from airgap.shared.manifest import Manifest

    _, _, data, _ = _bundle(b"x")
    obj = json.loads(data)
    assert obj["encryption"]["scheme"] == "age-v1"
    obj["encryption"]["scheme"] = "age-v2"
    changed = (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    with pytest.raises(Refused, match="age-v1 or none"):
        Manifest.parse(changed)


def test_a_hidden_copy_swapped_before_its_link_is_not_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across file systems the verified copy is linked from a random hidden name in the shared
    output directory: another user who swaps that name between the copy and the link must not
    get its own file placed as the member."""
    import shutil

    from airgap.client import extract
    from tests.conftest import small_disk
    from tests.test_fetch import _fetch

    drop, _ = _one_file_bundle(tmp_path)
    hidden: list[Path] = []
    new_hidden_file = extract._new_hidden_file
    copyfileobj = shutil.copyfileobj

    def recorded(directory: Path) -> tuple[int, Path]:
        fd, path = new_hidden_file(directory)
        hidden.append(path)
        return fd, path

    def swapping(*args: object, **kwargs: object) -> None:
        copyfileobj(*args, **kwargs)  # type: ignore[arg-type]
        if hidden:
            hidden[-1].unlink()
            hidden[-1].write_bytes(b"someone else's file")

    monkeypatch.setattr(extract, "_new_hidden_file", recorded)
    monkeypatch.setattr(shutil, "copyfileobj", swapping)
    with small_disk(tmp_path / "out", "8m") as out:
        out.chmod(0o1777)
        assert out.stat().st_dev != tmp_path.stat().st_dev  # the copy path, not a link
        error = _fetch(drop, out, tmp_path / "state")
        assert hidden, "the copy path was not taken"
        assert isinstance(error, StorageError) and "replaced while in use" in error.message
        assert not (out / "source.bin").exists()


def test_a_signature_longer_than_its_size_said_is_refused_unread(tmp_path: Path) -> None:
    """A source that answers SIZE small and then sends more: no more than the cap is taken."""
    from airgap.client.fetch import MAX_SIGNATURE_BYTES, open_bundle

    drop, _ = _one_file_bundle(tmp_path)
    (bundle_id,) = published_ids([p.name for p in drop.iterdir()])
    signature = drop / (bundle_id + SIGNATURE_SUFFIX)
    signature.write_bytes(signature.read_bytes() + b"\n" * MAX_SIGNATURE_BYTES)

    class Lying(DirectoryTransport):
        def size(self, name: str) -> int | None:
            return 10 if name.endswith(SIGNATURE_SUFFIX) else super().size(name)

    with pytest.raises(SignatureError, match="larger than airgap ever writes"):
        open_bundle(Lying(drop), bundle_id, [FETCH_SIGNER.public_key])


# VmHWM, not ru_maxrss: Linux hands a process the peak of the one it was spawned from (here
# the test run's, hundreds of MiB by the end of the suite) as its own at exec.
PEAK_RSS = """
import re, sys
from airgap.client.cli import main
sys.argv = ["airgap", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    with open("/proc/self/status") as status:
        peak = re.search(r"^VmHWM:\\s+(\\d+) kB", status.read(), re.M).group(1)
    print(done.code, peak, file=sys.stderr)
"""


def test_many_failing_bundles_do_not_add_up_in_memory(tmp_path: Path) -> None:
    """A stolen signing key's bundles, each a signed manifest of 24 MiB that is not JSON: a
    verify keeps each one's error to the end, and must not keep what the failed step read."""
    import subprocess
    import sys

    from airgap.client.keyfiles import load_signing_key
    from tests.conftest import run_airgap

    keys, drop = tmp_path / "keys", tmp_path / "drop"
    assert run_airgap(["keygen", "--out", keys]).returncode == 0
    key = load_signing_key(keys / "signing.key", lambda: b"")
    drop.mkdir()
    for _ in range(12):
        bundle_id = new_bundle_id()
        data = b'{"id": "' + b"x" * (24 << 20)  # a string never closed
        comment = f"airgap-bundle/1 id={bundle_id} payload-sha256={'0' * 64}"
        (drop / (bundle_id + MANIFEST_SUFFIX)).write_bytes(data)
        signature = minisign.sign(key, data, trusted_comment=comment)
        (drop / (bundle_id + SIGNATURE_SUFFIX)).write_text(signature)
    args = ["verify", "--from", drop, "--trust", keys / "signing.pub", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True
    )
    *told, last = done.stderr.strip().splitlines()
    code, peak_kib = map(int, last.split())
    assert code == 3, done.stderr
    assert sum("manifest" in line for line in told) >= 12, done.stderr
    # One failed manifest at a time peaks at 130 MiB here; kept, the twelve took 620 MiB.
    assert peak_kib < 300 << 10, (peak_kib, done.stderr)
