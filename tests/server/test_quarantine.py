"""A refused bundle leaves nothing behind in the sender's area: its payload is quarantined too."""

from __future__ import annotations

from pathlib import Path

import pytest

from airgap.shared.keys import KeySet
from tests.server.conftest import Server, begin_stor, wait_for
from tests.server.test_publish_and_clients import make_bundle, payload_of, upload_bundle

pytestmark = pytest.mark.timeout(60)


def untrusted_server(serve, tmp_path: Path) -> Server:
    other = tmp_path / "other.pub"
    other.write_text(KeySet.generate().signing.public_key.encode())
    return serve("--tls", "off", "--trusted-signer", str(other))


def quarantined(server: Server) -> Path | None:
    held = list((server.root / "quarantine").iterdir())
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
    assert list((server.root / "pub/incoming/sender").iterdir()) == []
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
    assert list((server.root / "pub/incoming/sender").iterdir()) == []
