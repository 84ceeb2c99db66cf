"""Bundles through the drop box, and the Debian clients lftp and curl against a real server."""

from __future__ import annotations

import ftplib
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from airgap.client.send import send_files
from airgap.client.transport import DirectoryTransport
from airgap.server.audit import AuditLog
from airgap.server.hashing import HashCache
from airgap.server.layout import resolved
from airgap.server.limits import BusyFiles
from airgap.server.publish import Publisher
from airgap.shared.bundle import EncodeOptions
from airgap.shared.keys import KeySet
from tests.server.conftest import (
    Server,
    begin_stor,
    quarantined,
    retr,
    stor,
    stor_refused,
    wait_for,
)

LFTP = shutil.which("lftp")
CURL = shutil.which("curl")


def make_bundle(tmp_path: Path, keys: KeySet) -> tuple[str, dict[str, bytes]]:
    source = tmp_path / "source.txt"
    source.write_bytes(b"payload " * 5000)
    out = tmp_path / "bundle"
    manifest = send_files(
        [source], DirectoryTransport(out), options=EncodeOptions([]), key=keys.signing
    )
    return manifest.id, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def payload_of(files: dict[str, bytes]) -> str:
    """The payload's name among a bundle's files."""
    return next(n for n in files if n.endswith(".zst"))


def upload_bundle(server: Server, files: dict[str, bytes], *, payload: bytes | None = None) -> None:
    client = server.ftp("sender")
    ordered = sorted(files, key=lambda n: (n.endswith(".minisig"), n.endswith(".json")))
    for name in ordered:  # payload, manifest, then the signature: what publishes
        data = payload if payload is not None and name.endswith(".zst") else files[name]
        stor(client, name + ".part", data)
        client.rename(name + ".part", name)
    client.quit()


def test_good_bundle_is_published_and_downloaded(serve, tmp_path, keyset, keydir):
    server = serve("--tls", "off", "--trusted-signer", str(keydir / "signing.pub"))
    key_id = (keydir / "signing.pub").read_text().split()[-2]  # "... public key ID\nRW..."
    assert f"airgap: publishing bundles signed by {key_id}" in server.stderr
    assert "no --trusted-signer" not in server.stderr
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    outgoing = server.root / "pub/outgoing"
    assert wait_for(lambda: (outgoing / f"{bundle_id}.manifest.json.minisig").exists())
    receiver = server.ftp("receiver")
    assert sorted(receiver.nlst()) == sorted(files)
    for name, data in files.items():
        assert retr(receiver, name) == data
    payload = payload_of(files)
    assert retr(receiver, payload, rest=100) == files[payload][100:]
    assert not any((server.root / "pub/incoming/sender").iterdir())
    receiver.delete(payload)
    assert '"event": "publish"' in server.audit()
    downloads = [line for line in server.audit().splitlines() if '"event": "download"' in line]
    assert downloads and all(payload in line or ".manifest" in line for line in downloads)
    assert "Traceback" not in server.stderr


def test_wrong_payload_hash_goes_to_quarantine(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    _, files = make_bundle(tmp_path, keyset)
    payload = files[payload_of(files)]
    upload_bundle(server, files, payload=bytes([payload[0] ^ 1]) + payload[1:])
    assert wait_for(lambda: quarantined(server))
    (held,) = quarantined(server)
    assert "sha256" in (held / "reason.txt").read_text()
    assert not any((server.root / "pub/outgoing").iterdir())
    assert server.ftp("receiver").nlst() == []


def test_untrusted_signature_goes_to_quarantine(serve, tmp_path, keyset):
    other = tmp_path / "other.pub"
    other.write_text(KeySet.generate().signing.public_key.encode())
    server = serve("--tls", "off", "--trusted-signer", str(other))
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    assert wait_for(lambda: quarantined(server))
    (held,) = quarantined(server)
    assert held.name.startswith(bundle_id)
    assert (
        "signature" in (held / "reason.txt").read_text()
        or "trust" in (held / "reason.txt").read_text()
    )
    assert not any((server.root / "pub/outgoing").iterdir())


def test_upload_cut_midway_is_never_published_and_resumes(serve, tmp_path, keyset):
    server = serve("--tls", "off")
    _, files = make_bundle(tmp_path, keyset)
    payload_name = payload_of(files)
    payload = files[payload_name]
    client = server.ftp("sender")
    for name in files:  # manifest and signature first: only the payload's size is missing
        if name != payload_name:
            stor(client, name, files[name])
    client.voidcmd("TYPE I")
    conn = begin_stor(client, payload_name)
    conn.sendall(payload[: len(payload) // 2])
    conn.close()  # the socket closes cleanly: pyftpdlib would call that complete
    client.voidresp()
    time.sleep(1.0)
    assert not any((server.root / "pub/outgoing").iterdir())
    assert not any((server.root / "quarantine").iterdir())
    have = client.size(payload_name)
    assert have == len(payload) // 2
    stor(client, payload_name, payload[have:], rest=have)
    assert wait_for(lambda: (server.root / "pub/outgoing" / payload_name).exists())
    assert (server.root / "pub/outgoing" / payload_name).read_bytes() == payload


def test_quota_gives_552_and_the_partial_stays(serve):
    server = serve("--tls", "off", "--quota-bytes", "100000")
    client = server.ftp("sender")
    assert stor_refused(client, "big.bin", b"x" * 300000).startswith("552")
    kept = (server.root / "pub/incoming/sender/big.bin").stat().st_size
    assert 0 < kept <= 100000
    assert client.voidcmd("NOOP").startswith("200")
    assert stor_refused(client, "more.bin", b"y" * 100000).startswith("552")
    (server.root / "pub/incoming/sender/more.bin").unlink()
    stor(client, "big.bin", b"x" * (100000 - kept), rest=kept)  # resumable once there is room
    assert (server.root / "pub/incoming/sender/big.bin").stat().st_size == 100000


@pytest.mark.skipif(LFTP is None, reason="lftp is not installed")
def test_lftp_book_walkthrough_in_read_write_mode(serve, tmp_path):
    server = serve("--tls", "off", "--anonymous", "read-write")
    assert "WARNING" in server.stderr
    work = tmp_path / "work"
    work.mkdir()
    (work / "registry.2.tar").write_bytes(b"image bytes " * 1000)
    host = f"-p {server.port} 127.0.0.1"
    run = lambda script: subprocess.run(  # noqa: E731
        ["lftp", "-e", f"set ftp:ssl-allow no; {script}", *host.split()],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    put = run("cd pub/incoming; put registry.2.tar; exit")
    assert put.returncode == 0, put.stderr
    listing = run("cd pub/incoming; ls; exit")
    assert "registry.2.tar" in listing.stdout
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    got = subprocess.run(
        [
            "lftp",
            "-e",
            "set ftp:ssl-allow no; cd pub/incoming; get registry.2.tar; exit",
            *host.split(),
        ],
        cwd=fetched,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert (fetched / "registry.2.tar").read_bytes() == (work / "registry.2.tar").read_bytes()


@pytest.mark.skipif(LFTP is None, reason="lftp is not installed")
def test_lftp_reput_resumes_a_sender_upload(serve, tmp_path):
    server = serve("--tls", "off")
    data = bytes(range(256)) * 4000
    (tmp_path / "big.bin").write_bytes(data)
    (server.root / "pub/incoming/sender").mkdir(exist_ok=True)
    (server.root / "pub/incoming/sender/big.bin").write_bytes(data[:300000])
    script = "set ftp:ssl-allow no; reput big.bin; exit"
    result = subprocess.run(
        [
            "lftp",
            "-u",
            f"sender,{server.password('sender')}",
            "-p",
            str(server.port),
            "-e",
            script,
            "127.0.0.1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (server.root / "pub/incoming/sender/big.bin").read_bytes() == data


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_appe_resume_over_required_tls_with_the_pinned_key(serve, tmp_path):
    server = serve("--tls", "required")
    pin = next(line.split()[-1] for line in server.lines if "pinnedpubkey" in line)
    data = b"curl resume " * 20000
    (tmp_path / "c.bin").write_bytes(data)
    (server.root / "pub/incoming/sender").mkdir(exist_ok=True)
    (server.root / "pub/incoming/sender/c.bin").write_bytes(data[:50000])
    cacert = server.root / "state/tls/cert.pem"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--ssl-reqd",
            "--cacert",
            str(cacert),
            "--pinnedpubkey",
            pin,
            "-T",
            "c.bin",
            "-C",
            "-",
            "--netrc-file",
            str(_netrc(tmp_path, server)),
            f"ftp://127.0.0.1:{server.port}/",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = (server.root / "pub/incoming/sender/c.bin").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    plain = ftplib.FTP()
    server.clients.append(plain)
    plain.connect("127.0.0.1", server.port, timeout=20)
    with pytest.raises(ftplib.error_perm, match="550"):  # USER before AUTH TLS
        plain.login("sender", server.password("sender"))


def _netrc(tmp_path: Path, server: Server) -> Path:
    # The password goes in a 0600 file, never in curl's argv.
    path = tmp_path / "netrc"
    path.write_text(f"machine 127.0.0.1 login sender password {server.password('sender')}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("ahead", [("payload",), ("payload", "manifest")])
def test_a_publish_cut_between_its_moves_is_done_again_at_the_next_start(
    serve, tmp_path, keyset, keydir, ahead
):
    """Found in review: killed between its moves, a publish left the payload (and maybe the
    manifest) in pub/outgoing and the signature in the area: that bundle stayed pending for
    good, and nothing ever took the files in pub/outgoing away."""
    trusted = ("--tls", "off", "--trusted-signer", str(keydir / "signing.pub"))
    server = serve(*trusted)
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    outgoing, area = server.root / "pub/outgoing", server.root / "pub/incoming/sender"
    assert wait_for(lambda: (outgoing / f"{bundle_id}.manifest.json.minisig").exists())
    assert server.stop() == 0
    kinds = {"payload": payload_of(files), "manifest": f"{bundle_id}.manifest.json"}
    for name in files:  # as a kill between two moves leaves them
        if name not in {kinds[k] for k in ahead}:
            (outgoing / name).rename(area / name)
    (server.root / "state" / f"publishing-{bundle_id}").write_text("pub/incoming/sender")
    again = serve(*trusted, root=server.root)
    assert wait_for(lambda: (outgoing / f"{bundle_id}.manifest.json.minisig").exists())
    assert sorted(p.name for p in outgoing.iterdir()) == sorted(files)
    assert not any(area.iterdir())
    for name, data in files.items():
        assert (outgoing / name).read_bytes() == data
    assert '"event": "publish-cut"' in again.audit()
    assert not list((server.root / "state").glob("publishing-*"))


def _publisher(root: Path, keys: KeySet) -> Publisher:
    """The appliance's publisher over ``root``, as a start makes it (the server stopped)."""
    return Publisher(
        resolved(root),
        trusted=[keys.signing.public_key],
        busy=BusyFiles(),
        audit=AuditLog(root / "state/audit.jsonl"),
        hashes=HashCache(),
    )


def test_only_a_publish_on_record_is_taken_back(serve, tmp_path, keyset, keydir):
    """Review: a bundle left without its signature in pub/outgoing by something else (a
    receiver's --consume cut short) went to whichever area then held a signature of its id."""
    trusted = ("--tls", "off", "--trusted-signer", str(keydir / "signing.pub"))
    server = serve(*trusted)
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    outgoing, area = server.root / "pub/outgoing", server.root / "pub/incoming/sender"
    signature = f"{bundle_id}.manifest.json.minisig"
    assert wait_for(lambda: (outgoing / signature).exists())
    assert server.stop() == 0
    (outgoing / signature).rename(area / signature)  # no record of a publish under way
    publisher = _publisher(server.root, keyset)
    outcome = publisher.scan()  # what a start does first, here and whole
    assert [o.status for o in outcome] == ["pending"]
    assert list(outgoing.iterdir()) == []  # a cut consume's leftovers, deleted (not moved)
    assert [p.name for p in area.iterdir()] == [signature]


def test_what_a_cut_consume_leaves_in_outgoing_goes(serve, tmp_path, keyset, keydir):
    """A receiver's --consume cut between its deletes (the signature goes first) left the
    manifest and the payload in pub/outgoing for good, listed to no one: the sweep deletes
    them on its second look, a start at once; a bundle still signed stays, and so do the
    files of a publish on record."""
    server = serve("--tls", "off", "--partial-expiry", "5")  # a look every second
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, files = make_bundle(tmp_path / "a", keyset)
    second, others = make_bundle(tmp_path / "b", keyset)
    upload_bundle(server, files)
    upload_bundle(server, others)
    outgoing = server.root / "pub/outgoing"
    for bundle_id in (first, second):
        assert wait_for(lambda b=bundle_id: (outgoing / f"{b}.manifest.json.minisig").exists())
    server.ftp("receiver").delete(f"{first}.manifest.json.minisig")  # and then cut off
    # one look deletes them one by one: wait for the last, not the first
    assert wait_for(lambda: not any((outgoing / name).exists() for name in files), timeout=15)
    assert sorted(p.name for p in outgoing.iterdir()) == sorted(others)

    def gone() -> list[str]:  # each file's record follows its delete
        lines = server.audit().splitlines()
        records = [json.loads(line) for line in lines]
        return sorted(r["file"] for r in records if r["event"] == "leftover")

    expected = sorted(set(files) - {f"{first}.manifest.json.minisig"})
    assert wait_for(lambda: gone() == expected), gone()
    assert server.stop() == 0
    (outgoing / f"{second}.manifest.json.minisig").unlink()  # cut while the appliance was down
    kept = outgoing / "01HZZZZZZZZZZZZZZZZZZZZZZZ.manifest.json"  # a publish on record
    kept.write_text("{}")
    intent = server.root / "state" / "publishing-01HZZZZZZZZZZZZZZZZZZZZZZZ"
    intent.write_text("pub/outgoing")  # names no area: it is not moved back, only dropped
    publisher = _publisher(server.root, keyset)
    publisher._take_back = lambda: None  # type: ignore[method-assign]  # keep the record
    publisher.scan()
    assert [p.name for p in outgoing.iterdir()] == [kept.name]


def test_the_same_bundle_sent_again_is_dropped_and_another_of_its_id_quarantined(
    serve, tmp_path, keyset
):
    """Found by killing sends: a sender killed after its signature landed, before it forgot
    its spool, uploads the whole bundle again; the appliance quarantined that copy (a
    payload's size against the sender's quota, one of its 100 quarantine places)."""
    server = serve("--tls", "off")
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    outgoing = server.root / "pub/outgoing"
    signature = f"{bundle_id}.manifest.json.minisig"
    assert wait_for(lambda: (outgoing / signature).exists())
    upload_bundle(server, files)  # the same bytes again
    records = lambda: [json.loads(line) for line in server.audit().splitlines()]  # noqa: E731
    assert wait_for(lambda: any(r["event"] == "duplicate" for r in records()))
    assert not any((server.root / "pub/incoming/sender").iterdir())
    assert quarantined(server) == []
    other = dict(files)
    other[signature] = files[signature].replace(b"trusted comment:", b"trusted comment: x")
    upload_bundle(server, other)  # another signature file: not this bundle
    assert wait_for(lambda: quarantined(server))
    (held,) = quarantined(server)
    assert "published before" in (held / "reason.txt").read_text()
    assert sorted(p.name for p in outgoing.iterdir()) == sorted(files)
    assert (outgoing / signature).read_bytes() == files[signature]
