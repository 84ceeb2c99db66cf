"""A refused bundle leaves nothing behind in the sender's area: its payload is quarantined too."""

from __future__ import annotations

import ftplib
import os
from pathlib import Path

import pytest

from airgap.shared.keys import KeySet
from tests.server.conftest import Server, begin_stor, stor, stor_refused, wait_for
from tests.server.conftest import quarantined as held_back
from tests.server.test_publish_and_clients import make_bundle, payload_of, upload_bundle

pytestmark = pytest.mark.timeout(60)


QUARANTINE_OF_TWO = "import airgap.server.storage as storage\nstorage.MAX_QUARANTINED = 2\n"


def untrusted_server(serve, tmp_path: Path, prelude: str = "") -> Server:
    other = tmp_path / "other.pub"
    other.write_text(KeySet.generate().signing.public_key.encode())
    return serve("--tls", "off", "--trusted-signer", str(other), prelude=prelude)


def quarantined(server: Server) -> Path | None:
    held = held_back(server)
    return held[0] if len(held) == 1 else None


def test_untrusted_bundle_takes_its_payload_to_quarantine(serve, tmp_path, keyset):
    server = untrusted_server(serve, tmp_path)
    bundle_id, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files)
    assert wait_for(lambda: quarantined(server) is not None)
    held = quarantined(server)
    assert held is not None and held.name.startswith(bundle_id)
    assert sorted(p.name for p in held.iterdir()) == sorted([*files, "reason.txt"])
    for name, data in files.items():
        assert (held / name).read_bytes() == data
    # Only the notice for the sender stays: it may list and delete it, never read it.
    notice = f"{bundle_id}.refused"
    assert wait_for(lambda: (server.root / "pub/incoming/sender" / notice).exists())
    assert [p.name for p in (server.root / "pub/incoming/sender").iterdir()] == [notice]
    client = server.ftp("sender")
    assert client.nlst() == [notice]
    with pytest.raises(ftplib.error_perm, match="550"):
        client.retrbinary(f"RETR {notice}", lambda data: None)
    client.delete(notice)
    assert client.nlst() == []
    assert not any((server.root / "pub/outgoing").iterdir())


def test_refused_bundle_waits_for_an_open_payload_upload(serve, tmp_path, keyset):
    """Quarantined without its payload, the payload would be stranded: the bundle waits."""
    server = untrusted_server(serve, tmp_path)
    bundle_id, files = make_bundle(tmp_path, keyset)
    payload = payload_of(files)
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    conn = begin_stor(client, payload)
    half = files[payload][: len(files[payload]) // 2]
    conn.sendall(half)
    target = server.root / "pub/incoming/sender" / payload
    assert wait_for(lambda: target.exists() and target.stat().st_size == len(half))
    upload_bundle(server, {name: files[name] for name in files if name != payload})
    assert wait_for(lambda: f"bundle {bundle_id}: pending" in server.stderr)
    assert not any((server.root / "quarantine").iterdir())
    conn.close()
    assert client.voidresp().startswith("226")
    assert wait_for(lambda: quarantined(server) is not None)
    held = quarantined(server)
    assert held is not None
    assert (held / payload).read_bytes() == half
    left = [p.name for p in (server.root / "pub/incoming/sender").iterdir()]
    assert left == [f"{bundle_id}.refused"]  # the notice only


def test_bundles_in_quarantine_count_against_their_senders_quota(serve, tmp_path, keyset):
    """Found in review: a refused bundle left the sender's area, and with it the quota, so a
    sender (or a thief of its password, without the signing key) could fill the disk one
    refused bundle at a time."""
    other = tmp_path / "other.pub"
    other.write_text(KeySet.generate().signing.public_key.encode())
    server = serve("--tls", "off", "--trusted-signer", str(other), "--quota-bytes", "200000")
    _, files = make_bundle(tmp_path, keyset)
    upload_bundle(server, files, payload=os.urandom(150_000))
    assert wait_for(lambda: quarantined(server) is not None)
    assert quarantined(server).parent == server.root / "quarantine" / "sender"
    client = server.ftp("sender")
    client.voidcmd("TYPE I")
    assert stor_refused(client, "next.part", os.urandom(100_000)).startswith("552")
    assert stor(client, "small.part", b"x" * 10_000).startswith("226")  # what is left is room


def test_an_area_with_too_many_bundles_in_quarantine_takes_no_upload(serve, tmp_path, keyset):
    server = untrusted_server(serve, tmp_path, prelude=QUARANTINE_OF_TWO)
    for number in (1, 2):
        (tmp_path / str(number)).mkdir()
        _, files = make_bundle(tmp_path / str(number), keyset)
        upload_bundle(server, files)
        assert wait_for(lambda count=number: len(held_back(server)) == count)
    client = server.ftp("sender")
    reply = stor_refused(client, "third.part", b"x")
    assert reply.startswith("552") and "2 of this area's bundles are in quarantine" in reply
    assert server.ftp("receiver").nlst() == []  # the other accounts go on


def test_without_a_trusted_signer_a_manifest_over_2_mib_is_not_parsed(serve, tmp_path, keyset):
    """Found in review: any sender's 32 MiB of JSON was parsed (a gigabyte, seconds of a
    worker, the loop stalled for each); nothing vouches for it without --trusted-signer."""
    server = serve("--tls", "off")
    bundle_id, files = make_bundle(tmp_path, keyset)
    manifest = f"{bundle_id}.manifest.json"
    files[manifest] = b"[" + b"{}," * (1 << 20) + b"{}]"
    upload_bundle(server, files)
    assert wait_for(lambda: quarantined(server) is not None)
    held = quarantined(server)
    assert held is not None
    reason = (held / "reason.txt").read_text()
    assert reason == f"{manifest}: larger than 2 MiB, with no --trusted-signer to vouch for it\n"
